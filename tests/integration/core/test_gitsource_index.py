"""Git increments into a real Milvus Lite server with the real offline model: the second sync
embeds only what changed (counted at the embedder), and the index reflects every change."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from serve_app.core.chunking import chunk_document
from serve_app.core.embedding import EmbeddingService
from serve_app.core.gitrepo import GitRepo
from serve_app.core.gitsource import GitSync
from serve_app.core.ingest import Ingestor
from serve_app.core.meta import MetaStore
from serve_app.core.retrieval import passage_text
from serve_app.core.store import MilvusStore, doc_ids_filter
from serve_app.settings import ChunkSettings, Settings

pytestmark = pytest.mark.integration

CHUNKS = ChunkSettings(max_chars=60, overlap_sentences=0)  # one chunk per paragraph here
ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x"}
ENV |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x"}

AUTH = [
    "# 認証",
    "アクセストークンの有効期限は15分です。期限が切れたらリフレッシュトークンで再発行します。",
    "リフレッシュトークンは30日間有効です。ログアウトするとすべて無効になります。",
]
ORDERS = [
    "# Orders",
    "An order can be cancelled within 24 hours.",
    "Refunds are issued to the original card.",
]
NOTES = ["# Release notes", "Version 2 adds idempotency keys to every write."]
LEGACY = ["# Legacy batch", "The nightly CSV export is retired in April."]
RETRY = ["# Retries", "Clients retry a 503 with exponential backoff.", "The first delay is 200 ms."]


class Counting:
    """The real embedding service, counting the texts it is asked to embed."""

    def __init__(self, service: EmbeddingService) -> None:
        self.service, self.texts = service, 0

    def __call__(self, texts: list[str]):
        self.texts += len(texts)
        return self.service.embed_texts(texts)


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(root), *args], check=True, env=ENV, capture_output=True
    ).stdout.decode()


def _write(root: Path, rel: str, lines: list[str]) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text("\n\n".join(lines) + "\n", encoding="utf-8")


def _passages(rel: str, lines: list[str]) -> set[str]:
    chunks = chunk_document(
        "\n\n".join(lines) + "\n",
        fmt="markdown",
        max_chars=CHUNKS.max_chars,
        overlap_sentences=0,
        doc_title=Path(rel).stem,
    )
    return {passage_text({"title_path": list(c.title_path), "text": c.text}) for c in chunks}


def test_second_sync_embeds_only_what_changed_and_the_index_follows(
    milvus: dict, model_dir: Path, tmp_path: Path
):
    service = EmbeddingService.from_settings(Settings(model={"name_or_path": str(model_dir)}))
    embed = Counting(service)
    store = MilvusStore(milvus["uri"], "git_increments", service.dim)
    store.ensure_collection()
    meta = MetaStore(store)
    root = tmp_path / "handbook"
    root.mkdir()
    _git(root, "init", "-q", "-b", "main")
    files = {"spec/auth.md": AUTH, "spec/orders.md": ORDERS, "notes/release.md": NOTES, "legacy.md": LEGACY}
    for rel, lines in files.items():
        _write(root, rel, lines)
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "first")

    def sync():
        ingestor = Ingestor(embed, store, CHUNKS, model_key=service.encoder.model_key, meta=meta)
        return GitSync(ingestor, meta, GitRepo(root), "handbook").sync()

    first = sync()
    assert first.mode == "full" and first.recorded
    assert GitSync.recorded(meta, "handbook")["commit"] == first.to_commit
    assert embed.texts == first.ingest.chunks_embedded == sum(len(_passages(r, v)) for r, v in files.items())

    changed = [
        AUTH[0],
        "アクセストークンの有効期限は60分です。期限が切れたらリフレッシュトークンで再発行します。",
        AUTH[2],
    ]
    _write(root, "spec/auth.md", changed)
    _write(root, "spec/retry.md", RETRY)  # added
    (root / "archive").mkdir()
    _git(root, "mv", "notes/release.md", "archive/release.md")  # renamed (same name, other folder)
    _git(root, "rm", "-q", "legacy.md")  # deleted
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "second")
    embed.texts = 0
    second = sync()
    expected = len(_passages("spec/auth.md", changed) - _passages("spec/auth.md", AUTH))
    expected += len(_passages("spec/retry.md", RETRY))
    assert second.mode == "increment" and second.recorded
    assert (second.added, second.modified, second.renamed, second.deleted) == (1, 1, 1, 1)
    assert embed.texts == expected == 1 + len(_passages("spec/retry.md", RETRY)), (
        "the changed paragraph and the new file only; the move embeds nothing"
    )
    unchanged_auth = len(_passages("spec/auth.md", changed) & _passages("spec/auth.md", AUTH))
    assert unchanged_auth >= 1
    assert second.ingest.chunks_reused == len(_passages("notes/release.md", NOTES)) + unchanged_auth

    versions = store.doc_versions()
    assert set(versions) == {"spec/auth.md", "spec/orders.md", "spec/retry.md", "archive/release.md"}
    assert versions["spec/auth.md"][0] == 2 and versions["spec/orders.md"][0] == 1

    def top(query: str) -> dict:
        (vector,), _ = service.embed_texts([query], input_type="query")
        (hit,) = store.search_dense(vector, limit=1, expr=None)
        return hit.fields

    assert "60分" in top("アクセストークンの有効期限は何分ですか")["text"]
    assert top("Which version adds idempotency keys?")["doc_id"] == "archive/release.md"
    assert top("How do clients retry a 503?")["doc_id"] == "spec/retry.md"
    texts = [r["text"] for r in store.query(doc_ids_filter(["spec/auth.md"]), fields=["text"])]
    assert texts and not any("15分" in t for t in texts), "the old paragraph is gone"

    embed.texts = 0
    assert sync().mode == "unchanged" and embed.texts == 0
