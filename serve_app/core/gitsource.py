"""Git-driven increments: a source remembers its last ingested commit and reads only what changed.

A sync of a source to a commit:

* no commit recorded: every document file at the commit is read; unchanged documents are skipped
  by the ingestor's content hashes. The same when the recorded commit is gone (history rewritten);
  documents of files only the lost commit had cannot be named then, and stay (logged);
* otherwise ``git diff --raw -M`` between the two commits: added and modified files are read and
  written (the ingestor re-embeds only chunks whose content changed), deleted files deleted,
  renamed files written under their new id with the vectors of the old document's chunks reused
  wherever the embedded text is the same (a move between folders embeds nothing), then the old id
  deleted. An id a file no longer produces (a modified front-matter ``doc_id``, a YAML file that
  stopped being an API spec) is deleted too; an id written in this sync is never deleted by it.

Blobs are read by object id from git's object store (``git cat-file --batch``), never from a
working tree, so a sync neither needs nor disturbs a checkout and reads exactly the committed
version; symlinks and submodules are not documents. The commit is recorded only when every
change was written or failed for a reason of its own (an unreadable or empty file): a sync stopped
by an embedder or Milvus outage is redone from the same commit next time, and since the ingestor
skips what is already stored, nothing is embedded twice. The git plumbing is ``gitrepo``'s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serve_app.core.gitrepo import Change, GitRepo
from serve_app.core.ingest import (
    TEXT_SUFFIXES,
    Ingestor,
    IngestReport,
    SourceDocument,
    document_from_bytes,
    is_document_name,
)
from serve_app.core.meta import MetaStore

log = logging.getLogger(__name__)

STATE_KIND = "git"  # meta-store kind of a source's sync state
READ_BATCH = 200  # files read, converted and written per step (a full sync of a large repo streams)


class SourceConflict(RuntimeError):
    """The source was synced with another doc-id prefix: its documents would be orphaned (409)."""


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
    pending: list[str] = field(default_factory=list)  # documents whose write failed (redone next time)

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
            "pending": self.pending[:100],
            "ingest": self.ingest.as_dict(),
        }


def _valid_name(path: str) -> str | None:
    """Why ``path`` cannot be a document id (None when it can)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "its path is not valid UTF-8"
    if "\n" in path or "\r" in path:
        return "its path holds a line break"
    return None


class GitSync:
    """Sync one named source (a repository) into the index through an ``Ingestor``.

    ``prefix`` is put before every doc id (front matter's too), so two sources with a
    ``README.md`` each do not collide; it is recorded with the source, and a sync with another
    prefix is refused (``SourceConflict``) instead of orphaning the documents written under the old.
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
        """The source's recorded state: ``commit``, ``prefix``, ``synced_at``, the last ``report``."""
        return meta.get(STATE_KIND, source)

    def state(self) -> dict[str, Any] | None:
        return self.recorded(self.meta, self.source)

    # ------------------------------------------------------------------------------ documents

    def _document(self, path: str, data: bytes | None) -> SourceDocument | None:
        """The document a file holds (None: not a document), its id under the prefix."""
        if (why := _valid_name(path)) is not None:
            safe = path.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
            safe = safe.replace("\n", "\\n").replace("\r", "\\r")
            return SourceDocument.unreadable(safe, f"not read: {why}", doc_id=f"{self.prefix}{safe}")
        if data is None:
            return None
        doc = document_from_bytes(path, data)
        if doc is not None and self.prefix:  # every id of the source lives under the prefix
            doc.doc_id = f"{self.prefix}{doc.doc_id}"
            doc.source = f"{self.prefix}{doc.source}" if doc.source == path else doc.source
        return doc

    def _old_id(self, path: str, oid: str, blobs: dict[str, bytes]) -> str:
        """The doc id a file had at the recorded commit: a text file's front matter may name it,
        any other file's id is its path (converting an old PDF just to learn that is not needed)."""
        if Path(path).suffix.lower() in TEXT_SUFFIXES and oid in blobs:
            doc = self._document(path, blobs[oid])
            if doc is not None:
                return doc.doc_id
        return f"{self.prefix}{path}"

    def _stream(self, changes: list[Change], out: dict[str, SourceDocument]) -> Iterator[SourceDocument]:
        """The documents of ``changes`` (not deletions), read and converted READ_BATCH at a time;
        each is also put in ``out`` by path."""
        writes = [c for c in changes if c.status != "D" and self.wanted(c.path)]
        for start in range(0, len(writes), READ_BATCH):
            batch = writes[start : start + READ_BATCH]
            blobs = self.repo.read([c.oid for c in batch if _valid_name(c.path) is None])
            for c in batch:
                doc = self._document(c.path, blobs.get(c.oid) if _valid_name(c.path) is None else b"")
                if doc is not None:
                    out[c.path] = doc
                    yield doc

    # ---------------------------------------------------------------------------------- sync

    def sync(self, commit: str | None = None, *, full: bool = False) -> SyncReport:
        target = self.repo.resolve(commit or "HEAD")
        state = self.state() or {}
        last: str | None = state.get("commit")
        if last is not None and state.get("prefix", "") != self.prefix:
            raise SourceConflict(
                f"source {self.source!r} was synced with doc-id prefix {state.get('prefix', '')!r}, not "
                f"{self.prefix!r}: delete its documents first, or sync it under another source name"
            )
        known = last is not None and self.repo.has(last)
        if (
            not full
            and known
            and last is not None
            and (last == target or self.repo.is_ancestor(target, last))
        ):
            # Already there, or past it: triggers arriving out of order never sync backwards.
            return SyncReport(self.source, last, last, "unchanged", recorded=True)
        if last is not None and not known:
            log.warning("source %s: commit %s is gone (history rewritten?); reading all", self.source, last)
        report = SyncReport(self.source, last, target, "increment" if known and not full else "full")
        if known and not full:
            assert last is not None
            changes = [c for c in self.repo.changes(last, target) if self._relevant(c)]
        else:
            changes = [Change("A", p, oid) for p, oid in self.repo.files(target).items() if self.wanted(p)]
            if known:  # --full after a sync: the recorded commit's ids of changed and deleted files count
                assert last is not None
                since = {c.path: c for c in self.repo.changes(last, target, renames=False)}
                changes = [
                    Change("M", c.path, c.oid, c.path, since[c.path].old_oid)
                    if c.path in since and since[c.path].status == "M"
                    else c
                    for c in changes
                ]
                changes += [c for c in since.values() if c.status == "D" and self.wanted(c.path)]
        # The ids the files had at the recorded commit (renamed, modified, deleted files).
        before = [c for c in changes if c.old_path is not None and self.wanted(c.old_path)]
        text_oids = [c.old_oid for c in before if Path(c.old_path or "").suffix.lower() in TEXT_SUFFIXES]
        old_blobs = self.repo.read(text_oids)
        old_ids = {c.path: self._old_id(c.old_path or "", c.old_oid, old_blobs) for c in before}
        # Renamed documents reuse the old one's vectors: the new ids are known before the ingest
        # (a text file's front matter, else the path; a new path that is no document never comes).
        renamed = [c for c in changes if c.status == "R" and c.path in old_ids and self.wanted(c.path)]
        new_blobs = self.repo.read(
            [
                c.oid
                for c in renamed
                if Path(c.path).suffix.lower() in TEXT_SUFFIXES and _valid_name(c.path) is None
            ]
        )
        moved_from = {self._old_id(c.path, c.oid, new_blobs): old_ids[c.path] for c in renamed}
        docs: dict[str, SourceDocument] = {}
        ingest = self.ingestor.ingest(
            self._stream(changes, docs), total=sum(c.status != "D" for c in changes), moved_from=moved_from
        )
        report.ingest = ingest
        written = {d.doc_id for d in docs.values()}
        transient = {f["doc_id"] for f in ingest.failed if not f.get("permanent")}
        # Ids no file produces any more: deleted files, the old side of renames and of modified
        # files whose id changed or that stopped being documents. A renamed document whose new
        # version failed to embed keeps its old id until the sync that writes it.
        gone: list[str] = []
        for c in changes:
            old = old_ids.get(c.path)
            new = docs.get(c.path) if c.status != "D" else None
            if old is None or old in written or (new is not None and new.doc_id in transient):
                continue
            if new is None or new.doc_id != old:
                gone.append(old)
        if not known and last is not None:
            # History rewritten: what the lost commit had and the target lacks cannot be named (a
            # prefix may be shared with other writers), so it stays; say so.
            log.warning(
                "source %s: recorded commit %s is gone; documents of files it had and %s lacks stay "
                "in the index (delete them by id)",
                self.source,
                last,
                target,
            )
        gone = list(dict.fromkeys(gone))
        report.added = sum(c.path in docs and c.status == "A" for c in changes)
        report.modified = sum(c.path in docs and c.status == "M" for c in changes)
        report.renamed = sum(c.path in docs for c in renamed)
        report.added += sum(c.status == "R" and c.path in docs and c.path not in old_ids for c in changes)
        report.deleted = sum(c.status == "D" for c in changes)
        if gone:
            deleted = self.ingestor.delete_documents(gone)
            ingest.deleted += deleted.deleted
            ingest.chunks_deleted += deleted.chunks_deleted
        report.pending = sorted(transient)
        if not transient:
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
                "prefix": self.prefix,
                "synced_at": int(time.time()),
                "run_id": report.ingest.run_id,
                "report": report.as_dict(),
            },
        )
