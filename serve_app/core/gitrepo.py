"""Git plumbing over one repository (a checkout or a bare clone): commits, trees, diffs, blobs.

The git CLI is called directly: the plumbing used here (rev-parse, ls-tree, ls-files, diff,
cat-file) is stable, and a library (GitPython, pygit2) would add weight without removing any of
it. No ingest logic here: ``gitsource`` builds increments on it, ``ingest`` reads a checkout's
tracked files and its revision through it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

GIT_TIMEOUT_S = 120
REGULAR = ("100644", "100755")  # blob modes of files; symlinks (120000) and submodules are not documents
# git must never wait for a password or a host-key prompt nobody answers.
GIT_ENV = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_SSH_COMMAND": "ssh -o BatchMode=yes"}


class GitError(RuntimeError):
    """git failed (no repository there, a fetch that failed): the message carries git's reason."""


class UnknownRevision(GitError):
    """The repository has no commit of that name (a typo, a commit not fetched yet)."""


@dataclass(frozen=True, slots=True)
class Change:
    status: str  # A (added), M (modified), D (deleted), R (renamed; old_path set)
    path: str
    oid: str = ""  # the blob at the target commit (A, M, R)
    old_path: str | None = None  # R: the path before; M and D: the same path
    old_oid: str = ""  # the blob at the recorded commit (M, D, R)


class GitRepo:
    """The git plumbing the ingest paths need, over one repository (a checkout or a bare clone)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def _git(self, *args: str, stdin: bytes | None = None) -> bytes:
        try:
            done = subprocess.run(
                ["git", "-C", str(self.path), *args],
                input=stdin,
                capture_output=True,
                timeout=GIT_TIMEOUT_S,
                env=GIT_ENV,
            )
        except FileNotFoundError as exc:
            raise GitError("git is not installed") from exc
        except subprocess.TimeoutExpired as exc:
            raise GitError(f"git {args[0]} took longer than {GIT_TIMEOUT_S} s") from exc
        if done.returncode != 0:
            reason = done.stderr.decode("utf-8", errors="replace").strip().splitlines()
            why = reason[-1] if reason else f"exit status {done.returncode}"
            raise GitError(f"git {args[0]} failed: {why}")
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
                raise GitError(f"{self.path.name} is not a git repository (or not readable)") from None
            raise UnknownRevision(f"no commit {rev!r} in the repository") from None

    def has(self, commit: str) -> bool:
        try:
            self.resolve(commit)
        except GitError:
            return False
        return True

    def is_ancestor(self, older: str, newer: str) -> bool:
        """Whether ``older`` is reachable from ``newer`` (a trigger for a commit already synced past)."""
        try:
            self._git("merge-base", "--is-ancestor", older, newer)
        except GitError:
            return False
        return True

    def tracked_files(self) -> list[str]:
        """Paths of the files a working tree tracks (untracked and ignored files are not in it)."""
        out = self._git("ls-files", "-z")
        return [name for name in out.decode("utf-8", errors="replace").split("\0") if name]

    def fetch(self, remote: str) -> None:
        self._git("fetch", "--quiet", "--prune", remote)

    def files(self, commit: str) -> dict[str, str]:
        """path -> blob id of every regular file at ``commit``."""
        out = self._git("ls-tree", "-r", "-z", "--full-tree", commit)
        found: dict[str, str] = {}
        for entry in out.split(b"\0"):
            if not entry:
                continue
            meta, _, path = entry.partition(b"\t")
            mode, kind, oid = meta.decode().split()
            if kind == "blob" and mode in REGULAR:
                found[path.decode("utf-8", errors="surrogateescape")] = oid
        return found

    def changes(self, since: str, until: str, *, renames: bool = True) -> list[Change]:
        """What changed between two commits (renames detected at 50 % similar content), in terms of
        regular files: a file that became a symlink is deleted, a symlink that became a file added."""
        args = ["diff", "--raw", "-z", "--no-abbrev", "--no-ext-diff"]
        args += ["-M"] if renames else ["--no-renames"]
        fields = self._git(*args, since, until).split(b"\0")
        changes: list[Change] = []
        i = 0
        while i < len(fields) and fields[i].startswith(b":"):
            old_mode, new_mode, old_oid, new_oid, status = fields[i][1:].decode().split()
            status = status[0]
            two = status in "RC"
            old = fields[i + 1].decode("utf-8", errors="surrogateescape")
            new = fields[i + 2].decode("utf-8", errors="surrogateescape") if two else old
            i += 3 if two else 2
            was, now = old_mode in REGULAR, new_mode in REGULAR
            if status == "C":  # a copy: the new file is an addition
                status, was = "A", False
            if status == "D" or (was and not now):
                if was:
                    changes.append(Change("D", old, old_path=old, old_oid=old_oid))
                continue
            if not now:
                continue
            if not was or status == "A":
                changes.append(Change("A", new, new_oid))
            elif status == "R":
                changes.append(Change("R", new, new_oid, old, old_oid))
            else:  # M, T (type change between regular modes)
                changes.append(Change("M", new, new_oid, old, old_oid))
        return changes

    def read(self, oids: Sequence[str]) -> dict[str, bytes]:
        """The blobs of ``oids`` in one ``cat-file --batch`` call (object ids: no path can desync it)."""
        wanted = list(dict.fromkeys(o for o in oids if o))
        if not wanted:
            return {}
        out = self._git("cat-file", "--batch", stdin="".join(f"{o}\n" for o in wanted).encode())
        found: dict[str, bytes] = {}
        pos = 0
        for oid in wanted:
            end = out.index(b"\n", pos)
            header = out[pos:end].split()
            pos = end + 1
            if len(header) < 3 or header[-1] == b"missing":
                continue
            size = int(header[2])
            if header[1] == b"blob":
                found[oid] = out[pos : pos + size]
            pos += size + 1  # the content and its trailing newline
        return found
