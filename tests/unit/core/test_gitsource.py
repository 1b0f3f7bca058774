"""Git-driven increments over a real git repository; the index is a recording double."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.core.gitrepo import GitRepo
from serve_app.core.gitsource import GitSync
from serve_app.testing.doubles import MemoryMeta, RecordingIngestor
from serve_app.testing.gitrepo import ScratchRepo as Repo


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    r = Repo(tmp_path / "docs")
    r.write("spec/auth.md", "# 認証\nトークンは15分で失効する。\n")
    r.write("spec/order.md", "# Orders\nAn order is cancelled within 24 hours.\n")
    r.write("old/notes.md", "# Notes\nTo be moved.\n")
    r.write("gone.md", "---\ndoc_id: custom-id\n---\n# Gone\nThis file will be deleted.\n")
    r.write("config.yaml", "replicas: 3\n")  # not a document (no OpenAPI spec)
    r.write("設計 書/画面 一覧.md", "# 画面一覧\n受注画面。\n")  # spaces and Japanese in paths
    r.commit("first")
    return r


def _sync(repo: Repo, meta: MemoryMeta, ingestor: RecordingIngestor, commit: str | None = None, **kw):
    return GitSync(ingestor, meta, GitRepo(repo.root), "docs", **kw).sync(commit)  # type: ignore[arg-type]


def test_first_sync_reads_every_document_and_records_the_commit(repo: Repo) -> None:
    meta, index = MemoryMeta(), RecordingIngestor()
    report = _sync(repo, meta, index)
    assert report.mode == "full" and report.recorded and report.from_commit is None
    assert set(index.docs) == {
        "spec/auth.md",
        "spec/order.md",
        "old/notes.md",
        "custom-id",
        "設計 書/画面 一覧.md",
    }
    assert meta.get("git", "docs")["commit"] == repo.git("rev-parse", "HEAD")
    again = _sync(repo, meta, index)
    assert again.mode == "unchanged" and len(index.runs) == 1, "the same commit reads nothing"


def test_increment_reads_only_what_changed(repo: Repo) -> None:
    meta, index = MemoryMeta(), RecordingIngestor()
    _sync(repo, meta, index)
    repo.write("spec/order.md", "# Orders\nAn order is cancelled within 48 hours.\n")  # modified
    repo.write("spec/new.md", "# New\nAdded.\n")  # added
    (repo.root / "archive").mkdir()
    repo.git("mv", "old/notes.md", "archive/notes.md")  # renamed
    repo.git("rm", "-q", "gone.md")  # deleted (its doc id came from front matter)
    repo.write("config.yaml", "replicas: 4\n")  # changed, not a document
    head = repo.commit("second")
    report = _sync(repo, meta, index)
    assert report.mode == "increment"
    assert (report.added, report.modified, report.renamed, report.deleted) == (1, 1, 1, 1)
    assert sorted(index.runs[-1]) == ["archive/notes.md", "spec/new.md", "spec/order.md"]
    assert index.moves[-1] == {"archive/notes.md": "old/notes.md"}, "the move reuses the old vectors"
    assert "old/notes.md" not in index.docs and "custom-id" not in index.docs
    # config.yaml changed into no document: its id is deleted too (deleting an absent id is a no-op)
    assert set(index.deleted) == {"old/notes.md", "custom-id", "config.yaml"}
    assert "48 hours" in index.docs["spec/order.md"].text
    assert meta.get("git", "docs")["commit"] == head


def test_failed_embedding_keeps_the_commit_so_the_next_sync_redoes_it(repo: Repo) -> None:
    meta, index = MemoryMeta(), RecordingIngestor()
    first = _sync(repo, meta, index).to_commit
    repo.write("spec/auth.md", "# 認証\nトークンは30分で失効する。\n")
    repo.git("mv", "spec/order.md", "spec/orders.md")
    repo.commit("second")
    index.fail = {"spec/auth.md", "spec/orders.md"}
    report = _sync(repo, meta, index)
    assert not report.recorded and meta.get("git", "docs")["commit"] == first
    assert "spec/order.md" in index.docs, "a rename whose new version failed keeps the old document"
    index.fail = set()
    healed = _sync(repo, meta, index)
    assert healed.recorded and healed.from_commit == first
    assert "30分" in index.docs["spec/auth.md"].text and "spec/order.md" not in index.docs


def test_unreadable_file_fails_alone_and_does_not_block_the_commit(repo: Repo) -> None:
    meta, index = MemoryMeta(), RecordingIngestor()
    _sync(repo, meta, index)
    (repo.root / "legacy.xls").write_bytes(b"\xd0\xcf\x11\xe0 legacy")
    repo.write("spec/new.md", "# New\nAdded.\n")
    head = repo.commit("second")
    report = _sync(repo, meta, index)
    failed = {f["doc_id"]: f["error"] for f in report.ingest.failed}
    assert "legacy.xls" in failed and ".xlsx" in failed["legacy.xls"], "the reason names what to do"
    assert "spec/new.md" in index.docs and report.recorded and meta.get("git", "docs")["commit"] == head


def test_triggers_never_sync_backwards_and_a_prefix_namespaces_ids(repo: Repo) -> None:
    meta, index = MemoryMeta(), RecordingIngestor()
    first = repo.git("rev-parse", "HEAD")
    repo.write("spec/new.md", "# New\nAdded.\n")
    second = repo.commit("second")
    assert _sync(repo, meta, index, second, prefix="team/").recorded
    assert all(d.startswith("team/") for d in index.docs)
    late = _sync(repo, meta, index, first, prefix="team/")
    assert late.mode == "unchanged" and late.to_commit == second and len(index.runs) == 1


def test_an_id_written_in_a_sync_is_never_deleted_by_it(repo: Repo) -> None:
    """A move with a rewrite shows as delete + add; the document keeps its front-matter id."""
    meta, index = MemoryMeta(), RecordingIngestor()
    _sync(repo, meta, index)
    repo.git("rm", "-q", "gone.md")
    repo.write("moved/elsewhere.md", "---\ndoc_id: custom-id\n---\n# Rewritten\nAll new words here.\n")
    report = _sync(repo, meta, index)
    assert report.recorded and "custom-id" in index.docs and "custom-id" not in index.deleted


def test_ids_no_file_produces_any_more_are_deleted(repo: Repo) -> None:
    meta, index = MemoryMeta(), RecordingIngestor()
    _sync(repo, meta, index)
    repo.write("gone.md", "---\ndoc_id: renamed-id\n---\n# Gone\nSame file, new id.\n")  # M, id changed
    repo.git("mv", "spec/order.md", "spec/order.pdf")  # renamed into an unreadable file
    (repo.root / "spec" / "order.pdf").write_bytes(b"not a pdf")
    repo.commit("second")
    report = _sync(repo, meta, index)
    assert report.recorded and "renamed-id" in index.docs
    assert "custom-id" not in index.docs and "spec/order.md" not in index.docs
    assert any(f["doc_id"] == "spec/order.pdf" for f in report.ingest.failed)


def test_full_sync_after_a_rename_deletes_the_old_path(repo: Repo) -> None:
    meta, index = MemoryMeta(), RecordingIngestor()
    _sync(repo, meta, index)
    repo.git("mv", "spec/auth.md", "spec/authn.md")
    head = repo.commit("second")
    report = GitSync(index, meta, GitRepo(repo.root), "docs").sync(head, full=True)  # type: ignore[arg-type]
    assert report.mode == "full" and "spec/auth.md" not in index.docs and "spec/authn.md" in index.docs


def test_empty_documents_odd_paths_and_symlinks_fail_alone(repo: Repo) -> None:
    meta, index = MemoryMeta(), RecordingIngestor()
    _sync(repo, meta, index)
    repo.write("empty.md", "")
    repo.write("line\nbreak.md", "# x\ny\n")
    (repo.root / "link.md").symlink_to("spec/auth.md")
    head = repo.commit("second")
    ingestor = RecordingIngestor()
    ingestor.docs = index.docs
    report = GitSync(ingestor, meta, GitRepo(repo.root), "docs").sync()  # type: ignore[arg-type]
    assert report.recorded and meta.get("git", "docs")["commit"] == head
    failed = {f["doc_id"]: f["error"] for f in report.ingest.failed}
    assert "line\\nbreak.md" in failed and "line break" in failed["line\\nbreak.md"]
    assert "link.md" not in index.docs and "link.md" not in failed, "a symlink is no document"


def test_a_source_synced_under_one_prefix_refuses_another(repo: Repo) -> None:
    from serve_app.core.gitsource import SourceConflict

    meta, index = MemoryMeta(), RecordingIngestor()
    _sync(repo, meta, index, prefix="a/")
    repo.write("spec/new.md", "# New\nAdded.\n")
    repo.commit("second")
    with pytest.raises(SourceConflict, match="prefix 'a/'"):
        _sync(repo, meta, index, prefix="b/")


def test_full_sync_deletes_ids_that_modified_files_no_longer_produce(repo: Repo) -> None:
    meta, index = MemoryMeta(), RecordingIngestor()
    _sync(repo, meta, index)
    repo.write("gone.md", "---\ndoc_id: renamed-id\n---\n# Gone\nSame file, new id.\n")
    head = repo.commit("second")
    report = GitSync(index, meta, GitRepo(repo.root), "docs").sync(head, full=True)  # type: ignore[arg-type]
    assert report.recorded and "renamed-id" in index.docs and "custom-id" not in index.docs
