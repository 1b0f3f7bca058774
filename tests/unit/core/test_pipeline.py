"""The search pipeline's policy with honest fakes behind its ports: defaults, the rerank pool,
the degradation rules, scores, explain and timings."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from serve_app.core.contracts import EmbedOutput, Expansion, Fanout
from serve_app.core.fusion import Candidate
from serve_app.core.pipeline import (
    EmbedderUnavailable,
    LocalEmbedder,
    MemoExpander,
    OriginalOnly,
    QueryNotEmbedded,
    SearchPipeline,
    SearchQuery,
    ServiceEmbedder,
)
from serve_app.settings import SearchSettings


def _out(error: str | None = None) -> EmbedOutput:
    return {
        "dense": np.ones(3, np.float32),
        "sparse": {5: 1.0},
        "colbert": None,
        "tokens": 2,
        "truncated": False,
        "cached": None,
        "error": error,
    }


class Expander:
    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode

    async def expand(self, query: str, enabled: bool = True, scope: Any = None) -> Expansion:
        if self.mode == "raise":
            raise RuntimeError("expander down")
        variants = [{"text": query, "lang": "en", "origin": "original"}]
        if enabled:
            variants.append({"text": query + " 変種", "lang": "ja", "origin": "glossary"})
        return {"variants": variants, "llm": "fallback" if self.mode == "fallback" else "off"}  # type: ignore[typeddict-item]


class Embedder:
    def __init__(self, fail: set[str] | None = None, down: bool = False) -> None:
        self.fail, self.down = fail or set(), down
        self.calls: list[list[str]] = []
        self.shapes: list[tuple[int, str, bool]] = []  # (texts, input type, ColBERT rows) per call

    async def embed(self, texts: list[str], input_type: str, colbert: bool = False) -> list[EmbedOutput]:
        if self.down:
            raise EmbedderUnavailable("no replica")
        self.calls.append(texts)
        self.shapes.append((len(texts), input_type, colbert))
        return [_out("boom" if t in self.fail else None) for t in texts]


class Retriever:
    def __init__(self, n: int = 30) -> None:
        self.n = n
        self.asked: dict[str, Any] = {}

    async def search(self, vectors: list[Any], **kw: Any) -> Fanout:
        self.asked = {"variants": len(vectors), **kw}
        cands = [
            Candidate(f"c{i:02d}", {"doc_id": f"d{i}", "version": 1, "text": "t"}, rrf=1 / (61 + i))
            for i in range(min(self.n, kw["limit"]))
        ]
        timings = {"search": 1.0, "versions": 0.5, "fuse": 0.1, "search_dense": 0.9}
        return Fanout(cands, timings, 2, [{"x": 1}], rrf_max=1 / 61)


class Reranker:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.seen = 0

    async def rerank(
        self, query: str, candidates: list[Candidate], queries: Sequence[Any] = ()
    ) -> list[Candidate]:
        if self.fail:
            raise RuntimeError("reranker down")
        self.seen = len(candidates)
        for i, c in enumerate(candidates):
            c.channel_scores["rerank"] = i / 100  # reverses the fused order
        return sorted(candidates, key=lambda c: -c.channel_scores["rerank"])


def _pipeline(**ports: Any) -> tuple[SearchPipeline, dict[str, Any]]:
    parts = {"expander": Expander(), "embedder": Embedder(), "retriever": Retriever(), "reranker": Reranker()}
    parts.update(ports)
    return SearchPipeline(SearchSettings(top_k=10, rerank_candidates=20), **parts), parts


def _run(p: SearchPipeline, **q: Any):
    return asyncio.run(p.search(SearchQuery(query="token expiry", **q)))


def test_defaults_rerank_pool_and_scores() -> None:
    p, parts = _pipeline()
    out = _run(p)
    assert parts["retriever"].asked["limit"] == 20 and parts["retriever"].asked["top_k"] == 10
    assert parts["reranker"].seen == 20, "the rerank sees the whole pool"
    assert len(out.results) == 10 and out.reranked and out.degraded == []
    assert [r.rank for r in out.results] == list(range(1, 11))
    assert out.results[0].candidate.chunk_id == "c19", "the reranked order is served"
    assert all(r.score == r.scores["rerank"] and r.score_stage == "rerank" for r in out.results)
    assert set(out.timings_ms) == {"expand", "embed", "search", "versions", "fuse", "rerank", "total"}
    assert out.explain is None


def test_channels_default_to_the_settings_and_a_request_may_name_its_own() -> None:
    p, parts = _pipeline()
    _run(p)
    assert parts["retriever"].asked["channels"] == ("dense", "sparse", "bm25")
    _run(p, channels=("dense",))
    assert parts["retriever"].asked["channels"] == ("dense",)


def test_one_embedding_call_per_search_yields_the_rows_the_rerank_reads() -> None:
    p, parts = _pipeline()
    _run(p)
    assert parts["embedder"].shapes == [(2, "query", True)], "one call: the query and its variant, with rows"
    _run(p, rerank=False)
    assert parts["embedder"].shapes[-1] == (2, "query", False), "no ColBERT rows without a rerank"


def test_without_rerank_the_pool_is_top_k_and_the_score_is_the_scaled_rrf() -> None:
    p, parts = _pipeline()
    out = _run(p, rerank=False, top_k=5)
    assert parts["retriever"].asked["limit"] == 5 and parts["reranker"].seen == 0
    assert not out.reranked and out.timings_ms["rerank"] == 0.0
    assert [r.score for r in out.results] == pytest.approx([61 / (61 + i) for i in range(5)])
    assert out.results[0].score == pytest.approx(1.0) and {r.score_stage for r in out.results} == {"fusion"}


def test_scores_stay_in_unit_range_whether_the_rerank_ran_or_failed() -> None:
    p_raw, _ = _pipeline(reranker=RawScale())
    raw = _run(p_raw)
    assert [r.score for r in raw.results[:2]] == [1.0, 0.0]  # clipped: 1.7 reads 1, -0.2 reads 0
    failed = _run(_pipeline(reranker=Reranker(fail=True))[0])
    assert failed.degraded == ["rerank"] and {r.score_stage for r in failed.results} == {"fusion"}
    assert all(0 < r.score <= 1 for r in failed.results) and failed.results[0].score > 0.9


class RawScale(Reranker):
    async def rerank(
        self, query: str, candidates: list[Candidate], queries: Sequence[Any] = ()
    ) -> list[Candidate]:
        for i, c in enumerate(candidates):
            c.channel_scores["rerank"] = 1.7 if i == 0 else -0.2
        return candidates


def test_expander_failure_searches_the_original_and_says_so() -> None:
    p, parts = _pipeline(expander=Expander("raise"))
    out = _run(p, explain=True)
    assert out.degraded == ["expander"]
    assert [v["origin"] for v in out.variants] == ["original"]
    assert out.explain and out.explain["expansion"]["llm"] == "error"
    assert parts["embedder"].calls == [["token expiry"]]


def test_llm_fallback_is_degraded_but_keeps_glossary_variants() -> None:
    p, _ = _pipeline(expander=Expander("fallback"))
    out = _run(p)
    assert out.degraded == ["expander"] and len(out.variants) == 2


def test_a_failed_variant_is_dropped_a_failed_query_is_an_error() -> None:
    p, parts = _pipeline(embedder=Embedder(fail={"token expiry 変種"}))
    out = _run(p)
    assert [v["origin"] for v in out.variants] == ["original"] and parts["retriever"].asked["variants"] == 1
    p, _ = _pipeline(embedder=Embedder(fail={"token expiry"}))
    with pytest.raises(QueryNotEmbedded):
        _run(p)
    p, _ = _pipeline(embedder=Embedder(down=True))
    with pytest.raises(EmbedderUnavailable):
        _run(p)


def test_rerank_failure_returns_the_fused_order() -> None:
    p, _ = _pipeline(reranker=Reranker(fail=True))
    out = _run(p, explain=True)
    assert out.degraded == ["rerank"] and not out.reranked
    assert out.results[0].candidate.chunk_id == "c00"
    assert out.explain and out.explain["rerank"] == "failed"


def test_explain_carries_the_plan_and_the_slowest_search() -> None:
    p, _ = _pipeline()
    out = _run(p, explain=True)
    assert out.explain == {
        "expansion": {"llm": "off"},
        "searches": [{"x": 1}],
        "slowest_search_ms": {"dense": 0.9},
        "rerank": "on",
    }


def test_in_process_adapters_remember() -> None:
    class Service:
        def __init__(self) -> None:
            self.items = 0

        def embed_items(self, items: list[Any]) -> list[EmbedOutput]:
            self.items += len(items)
            return [_out() for _ in items]

    service = Service()
    embedder = LocalEmbedder(service, batch=2)
    embedder.prime(["a", "b", "c", "a"], "query")
    assert service.items == 3
    asyncio.run(embedder.embed(["a", "d"], "query"))
    assert service.items == 4

    calls = []

    class Counting(OriginalOnly):
        async def expand(self, query: str, enabled: bool = True, scope: Any = None) -> Expansion:
            calls.append(query)
            return await super().expand(query, enabled)

    memo = MemoExpander(Counting())
    for _ in range(3):
        out = asyncio.run(memo.expand("認証トークン", True))
    assert calls == ["認証トークン"] and out["variants"][0]["lang"] == "ja"


def test_the_service_embedder_answers_cached_texts_without_the_model() -> None:
    from serve_app.core.embedding import EmbeddingService
    from serve_app.settings import Settings
    from serve_app.testing.doubles import HashEncoder

    encoder = HashEncoder(dim=8)
    embedder = ServiceEmbedder(EmbeddingService.from_settings(Settings(redis={"lru_items": 10}), encoder))
    first = asyncio.run(embedder.embed(["a b", "c"], "query", colbert=True))
    calls = encoder.calls
    again = asyncio.run(embedder.embed(["c", "new", "a b"], "query", colbert=True))
    assert encoder.calls == calls + 1, "only the new text reaches the model"
    assert [o["cached"] for o in again] == ["lru", None, "lru"]
    assert np.array_equal(again[2]["colbert"], first[0]["colbert"])
