"""BM25 channel: the tokeniser's units and the index over a store's current chunks."""

from __future__ import annotations

from serve_app.core.bm25 import Bm25Index, tokenize
from serve_app.testing.doubles import FakeStore


def _row(doc: str, text: str, *, lang: str = "en", current: bool = True) -> dict:
    return {
        "chunk_id": f"{doc}-c0",
        "doc_id": doc,
        "version": 1,
        "ordinal": 0,
        "text": text,
        "title_path": [],
        "kind": "spec",
        "lang": lang,
        "source": "s",
        "tags": [],
        "updated_at": 1,
        "is_current": current,
        "dense": [1.0, 0.0],
        "sparse": {1: 1.0},
    }


def test_japanese_runs_become_bigrams_and_identifiers_stay_whole() -> None:
    assert tokenize("注文をキャンセル") == ["注文", "文を", "をキ", "キャ", "ャン", "ンセ", "セル"]
    assert tokenize("Ｘ-Timestamp ヘッダ") == ["x", "timestamp", "x-timestamp", "ヘッ", "ッダ"]
    assert tokenize("INSUFFICIENT_STOCK v1.2.3") == ["insufficient_stock", "v1", "2", "3", "v1.2.3"]
    assert tokenize("猫") == ["猫"]


def test_index_ranks_by_bm25_and_skips_old_versions() -> None:
    store = FakeStore(
        [
            _row("cancel", "注文をキャンセルするエンドポイント", lang="ja"),
            _row("create", "注文を作成するエンドポイント", lang="ja"),
            _row("stale", "注文をキャンセル キャンセル キャンセル", lang="ja", current=False),
            _row("other", "Pods and nodes"),
        ]
    )
    index = Bm25Index.build(store)
    assert len(index) == 3  # the old version is not indexed
    hits = index.search("注文のキャンセル", limit=10)
    assert [h.fields["doc_id"] for h in hits][:2] == ["cancel", "create"]
    assert hits[0].score > hits[1].score > 0
    assert index.search("zzz", limit=5) == []  # no shared term: nothing, not noise
    assert Bm25Index.build(FakeStore([])).search("x", limit=3) == []


def test_a_per_language_search_is_the_full_ranking_filtered_by_language() -> None:
    store = FakeStore(
        [
            _row("ja-1", "注文 API のエンドポイント", lang="ja"),
            _row("en-1", "order API endpoint", lang="en"),
            _row("en-2", "API API reference", lang="en"),
            _row("ja-2", "API 一覧", lang="ja"),
        ]
    )
    index = Bm25Index.build(store)
    full = index.search("API", limit=10)
    for lang in ("ja", "en"):
        only = index.search("API", limit=1, lang=lang)
        assert [h.chunk_id for h in only] == [h.chunk_id for h in full if h.fields["lang"] == lang][:1]
        assert only[0].score == next(h.score for h in full if h.fields["lang"] == lang)
