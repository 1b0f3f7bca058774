"""Git plumbing over a real scratch repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.core.gitrepo import GitError, GitRepo, UnknownRevision
from serve_app.testing.gitrepo import ScratchRepo


@pytest.fixture
def repo(tmp_path: Path) -> ScratchRepo:
    r = ScratchRepo(tmp_path / "docs")
    r.write("spec/auth.md", "# 認証\n")
    r.write("spec/order.md", "# Orders\n")
    r.commit("first")
    return r


def test_repo_plumbing_and_its_errors(repo: ScratchRepo, tmp_path: Path) -> None:
    git = GitRepo(repo.root)
    first = git.resolve("main")
    repo.write("a b.md", "x\n")
    repo.git("mv", "spec/auth.md", "spec/認証.md")
    second = repo.commit()
    changes = {(c.status, c.path, c.old_path) for c in git.changes(first, second)}
    assert changes == {("A", "a b.md", None), ("R", "spec/認証.md", "spec/auth.md")}
    files = git.files(second)
    assert "spec/認証.md" in files and "spec/auth.md" not in files
    blobs = git.read([files["a b.md"], "0" * 40, files["spec/認証.md"]])
    assert blobs[files["a b.md"]] == b"x\n" and len(blobs) == 2, "a missing object is left out"
    assert git.is_ancestor(first, second) and not git.is_ancestor(second, first)
    with pytest.raises(UnknownRevision, match="no commit"):
        git.resolve("0" * 40)
    with pytest.raises(UnknownRevision):
        git.resolve("--upload-pack=x")
    with pytest.raises(GitError, match="not a git repository"):
        GitRepo(tmp_path / "nowhere").resolve("HEAD")


def test_tracked_files_leave_out_untracked_and_ignored_ones(repo: ScratchRepo) -> None:
    repo.write(".gitignore", "*.tmp\n")
    repo.write("設計 書/画面.md", "x\n")
    repo.commit()
    repo.write("draft.md", "not added\n")
    repo.write("scratch.tmp", "ignored\n")
    assert sorted(GitRepo(repo.root).tracked_files()) == [
        ".gitignore",
        "spec/auth.md",
        "spec/order.md",
        "設計 書/画面.md",
    ]
    with pytest.raises(GitError):
        GitRepo(repo.root / "spec" / "missing").tracked_files()
