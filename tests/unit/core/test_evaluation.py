"""Evaluation helpers: metrics, language bias, subsets, the Markdown the eval command writes."""

from __future__ import annotations

import pytest

from serve_app.core.contracts import ScoredResult
from serve_app.core.evaluation import Query, _bias, _spread, metrics
from serve_app.core.fusion import Candidate


def test_metrics_on_a_known_ranking() -> None:
    m = metrics(["x", "a", "y", "b"], {"a": 1, "b": 1})
    assert m["mrr@10"] == pytest.approx(0.5)
    assert m["recall@10"] == 1.0
    ideal = 1 + 1 / 1.584962500721156
    assert m["ndcg@10"] == pytest.approx((1 / 1.584962500721156 + 1 / 2.321928094887362) / ideal)
    assert metrics(["x"], {"a": 0}) == {}, "a query without a relevant document is skipped"


def test_language_bias_and_recall_by_answer_language() -> None:
    ranked = [
        ScoredResult(1, Candidate("1", {"doc_id": "ja1", "lang": "ja"}), 0.9),
        ScoredResult(2, Candidate("2", {"doc_id": "en9", "lang": "en"}), 0.5),
    ]
    q = Query("q", "質問", "ja", "faq")
    out = _bias(ranked, q, {"ja1": 1, "en1": 1}, {"ja1": "ja", "en1": "en"})
    assert out == {"same_lang@10": 0.5, "recall@10_ja_answers": 1.0, "recall@10_en_answers": 0.0}


def test_spread_keeps_both_ends_and_is_exact() -> None:
    assert _spread(10, 3) == [0, 4, 9] or _spread(10, 3) == [0, 5, 9]
    assert _spread(5, 10) == [0, 1, 2, 3, 4]
    assert len(_spread(703, 200)) == 200


def test_every_configuration_runs_through_the_serving_pipeline() -> None:
    """With honest doubles (hash vectors, in-memory store): each configuration is a request to
    ``SearchPipeline``; the served top 10 and the depth-100 list are both recorded per query."""
    from serve_app.core.embedding import EmbeddingService
    from serve_app.core.evaluation import DEFAULT_CONFIGS, evaluate
    from serve_app.core.retrieval import Retriever
    from serve_app.settings import SearchSettings
    from serve_app.testing.doubles import FakeStore, HashEncoder

    texts = {f"d{i}": f"topic{i} alpha{i % 3} beta{i % 5} gamma" for i in range(30)}
    service = EmbeddingService(HashEncoder(16))
    dense, sparse = service.embed_texts(list(texts.values()))
    rows = [
        {
            "chunk_id": f"{d}#0", "doc_id": d, "version": 1, "ordinal": 0, "text": t, "title": "",
            "title_path": [], "lang": "en", "kind": "other", "source": "", "tags": [], "updated_at": 1,
            "content_hash": d, "is_current": True, "dense": dense[i], "sparse": sparse[i],
        }
        for i, (d, t) in enumerate(texts.items())
    ]  # fmt: skip
    queries = [Query(f"q{i}", f"topic{i} alpha{i % 3}", "en", "t") for i in range(0, 30, 3)]
    qrels = {q.qid: {f"d{q.qid[1:]}": 1} for q in queries}
    report = evaluate(
        service, Retriever(FakeStore(rows), SearchSettings()), queries, qrels, configs=DEFAULT_CONFIGS
    )
    for name in DEFAULT_CONFIGS:
        assert report["configs"][name]["queries"] == len(queries)
        assert all(len(r) <= 10 for r in report["rankings"][name].values())
        deep, top = report["rankings@100"][name], report["rankings"][name]
        assert all(len(deep[q]) >= len(top[q]) for q in top), "the depth list is the deeper one"
    assert all(len(r) == 30 for r in report["rankings@100"]["dense"].values()), "all 30 within depth 100"
    assert report["configs"]["dense"]["mrr@10"] == 1.0, "a query's own words find its document first"
    assert report["configs"]["full"]["recall@100"] == 1.0


def test_rerank_rows_on_a_subset_are_compared_on_the_same_queries() -> None:
    from serve_app.core.embedding import EmbeddingService
    from serve_app.core.evaluation import evaluate
    from serve_app.core.retrieval import Retriever
    from serve_app.settings import SearchSettings
    from serve_app.testing.doubles import FakeStore, HashEncoder

    service = EmbeddingService(HashEncoder(16))
    texts = [f"word{i} shared{i % 4}" for i in range(12)]
    dense, sparse = service.embed_texts(texts)
    rows = [
        {
            "chunk_id": f"d{i}#0", "doc_id": f"d{i}", "version": 1, "ordinal": 0, "text": t, "title": "",
            "title_path": [], "lang": "en", "kind": "other", "source": "", "tags": [], "updated_at": 1,
            "content_hash": str(i), "is_current": True, "dense": dense[i], "sparse": sparse[i],
        }
        for i, t in enumerate(texts)
    ]  # fmt: skip
    queries = [Query(f"q{i}", texts[i], "en", "t") for i in range(8)]
    qrels = {q.qid: {f"d{q.qid[1:]}": 1} for q in queries}
    report = evaluate(
        service, Retriever(FakeStore(rows), SearchSettings()), queries, qrels,
        configs=["dense+sparse", "dense+sparse+colbert"], rerank_queries=3,
    )  # fmt: skip
    plain, reranked = report["configs"]["dense+sparse"], report["configs"]["dense+sparse+colbert"]
    assert plain["queries"] == 8 and reranked["queries"] == 3
    assert (
        set(plain["rerank_subset"])
        == set(reranked["same_queries_without_rerank"])
        >= {"ndcg@10", "recall@100"}
    )
    assert len(report["rankings"]["dense+sparse+colbert"]) == 3
    shared = report["rankings@100"]["dense+sparse+colbert"]
    assert all(report["rankings@100"]["dense+sparse"][q] == r for q, r in shared.items()), "one depth list"


def _hash_collection(texts: dict[str, str]) -> tuple[object, object]:
    from serve_app.core.embedding import EmbeddingService
    from serve_app.testing.doubles import FakeStore, HashEncoder

    service = EmbeddingService(HashEncoder(16))
    dense, sparse = service.embed_texts(list(texts.values()))
    rows = [
        {
            "chunk_id": f"{d}#0", "doc_id": d, "version": 1, "ordinal": 0, "text": t, "title": "",
            "title_path": [], "lang": "en", "kind": "other", "source": "", "tags": [], "updated_at": 1,
            "content_hash": d, "is_current": True, "dense": dense[i], "sparse": sparse[i],
        }
        for i, (d, t) in enumerate(texts.items())
    ]  # fmt: skip
    return service, FakeStore(rows)


def test_baselines_and_the_paired_tests_are_in_the_report() -> None:
    from serve_app.core.bm25 import Bm25Index
    from serve_app.core.evaluation import BASELINES, evaluate
    from serve_app.core.retrieval import Retriever
    from serve_app.settings import SearchSettings

    texts = {f"d{i}": f"topic{i} alpha{i % 3} beta{i % 5} gamma" for i in range(30)}
    service, store = _hash_collection(texts)
    queries = [Query(f"q{i}", f"topic{i} beta{i % 5}", "en", "t") for i in range(0, 30, 2)]
    qrels = {q.qid: {f"d{q.qid[1:]}": 1} for q in queries}
    retriever = Retriever(store, SearchSettings(), bm25=Bm25Index.build(store))  # type: ignore[arg-type]
    report = evaluate(service, retriever, queries, qrels, configs=[*BASELINES, "full"])
    assert report["configs"]["bm25"]["mrr@10"] == 1.0, "BM25 finds a query's own rare word first"
    assert set(report["ndcg@10"]["bm25"]) == {q.qid for q in queries}, "per-query figures for paired tests"
    sig = report["significance"]
    assert sig["default"] == "full" and set(sig["against"]) == set(BASELINES)
    assert sig["best_baseline"] in BASELINES
    assert all(0 <= t["p_ttest"] <= 1 and t["queries"] == len(queries) for t in sig["against"].values())


def test_paired_test_detects_a_consistent_gain_and_not_noise() -> None:
    from serve_app.core.evaluation import paired_test

    base = [0.1 * (i % 7) for i in range(60)]
    better = [b + 0.05 + 0.01 * (i % 3 - 1) for i, b in enumerate(base)]
    same = paired_test(base, base)
    assert same["p_ttest"] == 1.0 and same["delta"] == 0.0
    gain = paired_test(better, base)
    assert gain["delta"] == pytest.approx(0.05) and gain["p_randomization"] < 0.001
    mixed = paired_test([b + (0.05 if i % 2 else -0.05) for i, b in enumerate(base)], base)
    assert mixed["p_ttest"] > 0.5 and mixed["p_randomization"] > 0.5


def test_identifier_set_finds_planted_chunks_and_leaves_the_collection_as_it_was() -> None:
    from serve_app.core.evaluation import config_pipeline, evaluate_identifiers
    from serve_app.core.ingest import SourceDocument
    from serve_app.core.pipeline import LocalEmbedder, MemoExpander, OriginalOnly
    from serve_app.core.retrieval import Retriever
    from serve_app.core.store import doc_ids_filter
    from serve_app.settings import SearchSettings

    class Writer:
        """The two calls the identifier set makes of an ``Ingestor``, on the in-memory store."""

        def ingest(self, docs: list[SourceDocument]) -> None:
            dense, sparse = service.embed_texts([d.text for d in docs])  # type: ignore[attr-defined]
            store.upsert(  # type: ignore[attr-defined]
                [
                    {
                        "chunk_id": f"{d.doc_id}#0", "doc_id": d.doc_id, "version": 1, "ordinal": 0,
                        "text": d.text, "title": "", "title_path": [], "lang": "en", "kind": "other",
                        "source": "", "tags": [], "updated_at": 2, "content_hash": d.doc_id,
                        "is_current": True, "dense": dense[i], "sparse": sparse[i],
                    }
                    for i, d in enumerate(docs)
                ]
            )  # fmt: skip

        def delete_documents(self, doc_ids: list[str]) -> None:
            store.delete(expr=doc_ids_filter(doc_ids))  # type: ignore[attr-defined]

    texts = {
        f"d{i}": f"Passage {i} talks about topic{i % 4} at some length. It has two sentences, this one too."
        for i in range(24)
    }
    service, store = _hash_collection(texts)
    before = store.count()
    embedder = LocalEmbedder(service)
    pipeline = config_pipeline(
        "full",
        Retriever(store, SearchSettings()),
        embedder,
        MemoExpander(OriginalOnly()),  # type: ignore[arg-type]
    )
    writer = Writer()
    docs = [SourceDocument(d, t, fmt="text", lang="en") for d, t in texts.items()]
    out = evaluate_identifiers(pipeline, writer, docs, count=16)
    assert out["queries"] == 16 and out["rank1"] == 1.0, out["misses"]
    assert out["written_before_search"]["queries"] == 8 and len(out["by_shape"]) == 8
    assert store.count() == before, "the planted copies are deleted"
