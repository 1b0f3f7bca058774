"""Git-driven increments: a source remembers its last ingested commit and reads only what changed.

A sync of a source to a commit:

* no commit recorded (or the recorded one is gone after a history rewrite): every document file
  at the commit is read; unchanged documents are skipped by the ingestor's content hashes;
* otherwise ``git diff --name-status -M`` between the two commits: added and modified files are
  read and written (the ingestor re-embeds only chunks whose content changed), deleted files are
  deleted, renamed files are written under their new id with the vectors of the old document's
  chunks reused wherever the embedded text is the same (a move between folders embeds nothing),
  then the old id is deleted.

Files are read from git's object store at the commit (``git cat-file --batch``), never from a
working tree, so a sync neither needs nor disturbs a checkout and reads exactly the committed
version. The commit is recorded only after every document was written or failed for a reason of
its own (an unreadable file): a sync stopped by an embedder or Milvus outage is redone from the
same commit next time, and since the ingestor skips what is already stored, nothing is embedded
twice. The git CLI is called directly: the plumbing used here (rev-parse, ls-tree, diff, cat-file)
is stable and a library (GitPython, pygit2) would add weight without removing any of it.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serve_app.core.ingest import (
    Ingestor,
    IngestReport,
    SourceDocument,
    document_from_bytes,
    is_document_name,
)
from serve_app.core.meta import MetaStore

log = logging.getLogger(__name__)

GIT_TIMEOUT_S = 120
STATE_KIND = "git"  # meta-store kind of a source's sync state


class GitError(RuntimeError):
    """git failed (no repository there, a fetch that failed): the message carries git's reason."""


class UnknownRevision(GitError):
    """The repository has no commit of that name (a typo, a commit not fetched yet)."""


@dataclass(frozen=True, slots=True)
class Change:
    status: str  # A (added), M (modified), D (deleted), R (renamed; old_path set)
    path: str
    old_path: str | None = None


class GitRepo:
    """The git plumbing a sync needs, over one repository (a checkout or a bare clone)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def _git(self, *args: str, stdin: bytes | None = None) -> bytes:
        try:
            done = subprocess.run(
                ["git", "-C", str(self.path), *args],
                input=stdin,
                capture_output=True,
                timeout=GIT_TIMEOUT_S,
            )
        except FileNotFoundError as exc:
            raise GitError("git is not installed") from exc
        except subprocess.TimeoutExpired as exc:
            raise GitError(f"git {args[0]} took longer than {GIT_TIMEOUT_S} s") from exc
        if done.returncode != 0:
            reason = done.stderr.decode("utf-8", errors="replace").strip().splitlines()
            why = reason[-1] if reason else f"exit status {done.returncode}"
            raise GitError(f"git {args[0]} failed in {self.path}: {why}")
        return done.stdout

    def is_repo(self) -> bool:
        try:
            self._git("rev-parse", "--git-dir")
        except GitError:
            return False
        return True

    def resolve(self, rev: str = "HEAD") -> str:
        """The full id of the commit ``rev`` names (a branch, a tag, an abbreviated id)."""
        if rev.startswith("-") or not rev.strip():
            raise UnknownRevision(f"not a revision: {rev!r}")
        try:
            return self._git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").decode().strip()
        except GitError:
            if not self.is_repo():
                raise GitError(f"{self.path} is not a git repository") from None
            raise UnknownRevision(f"no commit {rev!r} in the repository") from None

    def is_ancestor(self, older: str, newer: str) -> bool:
        """Whether ``older`` is reachable from ``newer`` (a trigger for a commit already synced past)."""
        try:
            self._git("merge-base", "--is-ancestor", older, newer)
        except GitError:
            return False
        return True

    def has(self, commit: str) -> bool:
        try:
            self.resolve(commit)
        except GitError:
            return False
        return True

    def fetch(self, remote: str) -> None:
        self._git("fetch", "--quiet", "--prune", remote)

    def files(self, commit: str) -> list[str]:
        out = self._git("ls-tree", "-r", "-z", "--name-only", commit)
        return [p for p in out.decode("utf-8", errors="surrogateescape").split("\0") if p]

    def changes(self, since: str, until: str) -> list[Change]:
        """What changed between two commits, renames detected (``-M``: 50 % similar content)."""
        out = self._git("diff", "--name-status", "-z", "-M", "--no-ext-diff", since, until)
        fields = out.decode("utf-8", errors="surrogateescape").split("\0")
        changes: list[Change] = []
        i = 0
        while i < len(fields) and fields[i]:
            status = fields[i][0]
            if status in "RC":  # R100 old new / C75 old new
                old, new = fields[i + 1], fields[i + 2]
                changes.append(Change("R", new, old) if status == "R" else Change("A", new))
                i += 3
                continue
            path = fields[i + 1]
            if status == "T":  # type change (file <-> symlink): a modification for us
                status = "M"
            changes.append(Change(status, path))
            i += 2
        return changes

    def read(self, commit: str, paths: Sequence[str]) -> dict[str, bytes]:
        """The contents of ``paths`` at ``commit`` in one ``cat-file --batch`` call (missing: left out)."""
        if not paths:
            return {}
        names = [p.encode("utf-8", errors="surrogateescape") for p in paths]
        request = b"".join(f"{commit}:".encode() + n + b"\n" for n in names)
        out = self._git("cat-file", "--batch", stdin=request)
        found: dict[str, bytes] = {}
        pos = 0
        for path in paths:
            end = out.index(b"\n", pos)
            header = out[pos:end].split()
            pos = end + 1
            if len(header) < 3 or header[-1] == b"missing":
                continue
            size = int(header[2])
            if header[1] == b"blob":
                found[path] = out[pos : pos + size]
            pos += size + 1  # the content and its trailing newline
        return found


@dataclass(slots=True)
class SyncReport:
    source: str
    from_commit: str | None
    to_commit: str
    mode: str  # full | increment | unchanged
    added: int = 0
    modified: int = 0
    deleted: int = 0
    renamed: int = 0
    ingest: IngestReport = field(default_factory=IngestReport)
    recorded: bool = False  # the commit was recorded (every change written or failed for good)

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "from_commit": self.from_commit,
            "to_commit": self.to_commit,
            "mode": self.mode,
            "files": {
                "added": self.added,
                "modified": self.modified,
                "deleted": self.deleted,
                "renamed": self.renamed,
            },
            "recorded": self.recorded,
            "ingest": self.ingest.as_dict(),
        }


class GitSync:
    """Sync one named source (a repository) into the index through an ``Ingestor``.

    ``prefix`` is put before every path to form doc ids, so two sources with a ``README.md`` each
    do not collide; the CLI's default is no prefix (ids are paths, as for a folder).
    """

    def __init__(
        self,
        ingestor: Ingestor,
        meta: MetaStore,
        repo: GitRepo,
        source: str,
        *,
        prefix: str = "",
        limit_to: Callable[[str], bool] | None = None,
    ) -> None:
        self.ingestor = ingestor
        self.meta = meta
        self.repo = repo
        self.source = source
        self.prefix = prefix
        self.wanted = limit_to or is_document_name

    @staticmethod
    def recorded(meta: MetaStore, source: str) -> dict[str, Any] | None:
        """The source's recorded state: ``commit``, ``synced_at``, the last sync's ``report``."""
        return meta.get(STATE_KIND, source)

    def state(self) -> dict[str, Any] | None:
        return self.recorded(self.meta, self.source)

    def _documents(self, commit: str, paths: Sequence[str]) -> dict[str, SourceDocument]:
        """path -> document at ``commit`` for the paths that are documents."""
        blobs = self.repo.read(commit, paths)
        docs: dict[str, SourceDocument] = {}
        for path in paths:
            if path not in blobs:
                continue
            doc = document_from_bytes(path, blobs[path])
            if doc is None:
                continue
            if self.prefix:  # every id of the source, front matter's too, lives under the prefix
                doc.doc_id = f"{self.prefix}{doc.doc_id}"
                doc.source = f"{self.prefix}{doc.source}" if doc.source == path else doc.source
            docs[path] = doc
        return docs

    def _doc_ids(self, commit: str, paths: Sequence[str]) -> dict[str, str]:
        """path -> the doc id the file had at ``commit`` (front matter may name another than its
        path), for the paths that were documents."""
        return {p: d.doc_id for p, d in self._documents(commit, paths).items()}

    def sync(self, commit: str | None = None, *, full: bool = False) -> SyncReport:
        target = self.repo.resolve(commit or "HEAD")
        state = self.state()
        last = state.get("commit") if state else None
        if not full and last is not None and (last == target or self.repo.is_ancestor(target, last)):
            # Already there, or past it: triggers arriving out of order never sync backwards.
            return SyncReport(self.source, last, last, "unchanged", recorded=True)
        if last is not None and not self.repo.has(last):
            log.warning("source %s: commit %s is gone (history rewritten?); reading all", self.source, last)
        increment = last is not None and not full and self.repo.has(last)
        report = SyncReport(self.source, last, target, "increment" if increment else "full")
        if increment:
            assert last is not None
            changes = [c for c in self.repo.changes(last, target) if self._relevant(c)]
        else:
            changes = [Change("A", p) for p in self.repo.files(target) if self.wanted(p)]
            if last is not None and self.repo.has(last):  # --full after a sync: deletions still count
                changes += [
                    c for c in self.repo.changes(last, target) if c.status == "D" and self.wanted(c.path)
                ]
        writes = [c for c in changes if c.status != "D"]
        docs = self._documents(target, [c.path for c in writes if self.wanted(c.path)])
        moved_from: dict[str, str] = {}
        renamed = [c for c in writes if c.status == "R" and c.old_path is not None]
        old_ids = self._doc_ids(last, [c.old_path for c in renamed if c.old_path]) if last else {}
        for c in renamed:
            if c.path in docs and c.old_path in old_ids and self.wanted(c.old_path or ""):
                moved_from[docs[c.path].doc_id] = old_ids[c.old_path or ""]
        removed = [c.path for c in changes if c.status == "D"]
        gone = list(self._doc_ids(last, removed).values()) if last and removed else []
        report.added = sum(
            c.path in docs
            and (c.status == "A" or (c.status == "R" and docs[c.path].doc_id not in moved_from))
            for c in changes
        )
        report.modified = sum(c.status == "M" and c.path in docs for c in changes)
        report.deleted = len(gone)
        report.renamed = len(moved_from)
        ordered = [docs[c.path] for c in writes if c.path in docs]
        ingest = self.ingestor.ingest(ordered, total=len(ordered), moved_from=moved_from)
        report.ingest = ingest
        failed = {f["doc_id"] for f in ingest.failed}
        unreadable = {d.doc_id for d in ordered if d.error is not None}
        # A renamed document's old id goes once the new one is written (kept if the write failed).
        gone += [old for new, old in moved_from.items() if new not in failed and old != new]
        # A file renamed to a name that is no document (notes.md -> notes.md.bak) leaves its old id.
        gone += [old_ids[c.old_path] for c in renamed if c.old_path in old_ids and c.path not in docs]
        if gone:
            deleted = self.ingestor.delete_documents(gone)
            ingest.deleted += deleted.deleted
            ingest.chunks_deleted += deleted.chunks_deleted
        if not failed - unreadable:
            self._record(target, report)
            report.recorded = True
        return report

    def _relevant(self, change: Change) -> bool:
        return self.wanted(change.path) or (change.old_path is not None and self.wanted(change.old_path))

    def _record(self, commit: str, report: SyncReport) -> None:
        self.meta.put(
            STATE_KIND,
            self.source,
            {
                "source": self.source,
                "commit": commit,
                "synced_at": int(time.time()),
                "run_id": report.ingest.run_id,
                "report": {k: v for k, v in report.as_dict().items() if k != "ingest"},
            },
        )
