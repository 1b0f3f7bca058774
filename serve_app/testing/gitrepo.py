"""A scratch git repository for tests: write files, commit, get the commit id (the git CLI, no network)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

# Commits need an author; the tests' own environment may have none configured.
ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@x",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@x",
}


class ScratchRepo:
    """``git init`` at ``root`` (branch ``main``); ``write`` then ``commit`` returns the commit id."""

    def __init__(self, root: Path) -> None:
        if shutil.which("git") is None:
            raise RuntimeError("git is needed for a scratch repository")
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str) -> str:
        done = subprocess.run(["git", "-C", str(self.root), *args], check=True, env=ENV, capture_output=True)
        return done.stdout.decode().strip()

    def write(self, rel: str, text: str) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")

    def commit(self, message: str = "c") -> str:
        self.git("add", "-A")
        self.git("commit", "-qm", message)
        return self.git("rev-parse", "HEAD")
