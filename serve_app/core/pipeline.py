"""The search pipeline: expand → embed → two-stage fan-out → rerank, with its degradation rules.

One implementation serves ``POST /v1/search`` (the Ingress wires it to the graph's deployment
handles, ``serve_app.serving.adapters``) and ``specrag eval`` (in-process adapters below), so a
quality figure is a figure of the code that answers requests. Plain Python: no Ray, no FastAPI.

Degradation (each one is named in ``SearchOutcome.degraded`` and counted by the observer):
- the expander fails or its LLM falls back → search the original query (plus glossary variants);
- a variant fails to embed → it is dropped; the original failing is an error (nothing to search);
- the reranker fails → the fused order is returned.
The embedder or the vector store being unreachable is an error (``EmbedderUnavailable``,
``StoreUnavailable``): there is no useful answer without them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from serve_app.core.chunking import detect_lang
from serve_app.core.contracts import (
    Channel,
    EmbedOutput,
    Expansion,
    Fanout,
    InputType,
    QueryVariant,
    QueryVector,
    ScoredResult,
    Truncate,
)
from serve_app.core.fusion import Candidate
from serve_app.core.retrieval import relevance
from serve_app.settings import DataScope, SearchSettings

# A child of Serve's logger: inside a replica with ``logging_config: {encoding: JSON}`` every line
# is JSON with the request id and these ``extra`` fields (durations, stage timings).
log = logging.getLogger("ray.serve.specrag.pipeline")


class EmbedderUnavailable(RuntimeError):
    """The embedder could not be reached (every replica gone, timeouts): answer 503."""


class QueryNotEmbedded(RuntimeError):
    """The model failed on the original query text itself: nothing to search with."""


class SearchRejected(ValueError):
    """The vector store refused the search as invalid (e.g. a filter value it cannot take): 400."""


# ------------------------------------------------------------------------------------------ ports


class Expander(Protocol):
    async def expand(self, query: str, enabled: bool = True, scope: DataScope | None = None) -> Expansion: ...


class Embedder(Protocol):
    async def embed(
        self, texts: list[str], input_type: InputType, colbert: bool = False, truncate: Truncate = "end"
    ) -> list[EmbedOutput]: ...


class Retriever(Protocol):
    async def search(
        self,
        vectors: Sequence[QueryVector],
        *,
        top_k: int,
        channels: Sequence[str],
        filters: dict[str, Any] | None,
        limit: int,
        explain: bool,
        scope: DataScope | None = None,
    ) -> Fanout: ...


class Reranker(Protocol):
    async def rerank(
        self, query: str, candidates: list[Candidate], queries: Sequence[EmbedOutput]
    ) -> list[Candidate]: ...


class SearchObserver:
    """Hooks for metrics; the default observes nothing (the Serve side counts into Ray metrics)."""

    def expander_failed(self, reason: str) -> None:
        """The expander raised; the original query was searched alone."""

    def stage_degraded(self, stage: str) -> None:
        """A stage failed and was skipped (``rerank``)."""

    def completed(self, timings_ms: dict[str, float]) -> None:
        """A search finished; ``timings_ms`` per stage."""


# ---------------------------------------------------------------------------------- the pipeline


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """A search as a client asks for it; ``None`` means the configured default."""

    query: str
    top_k: int | None = None
    filters: dict[str, list[str]] | None = None
    channels: tuple[Channel, ...] | None = None  # None: search.channels
    rerank: bool | None = None
    expand: bool = True
    explain: bool = False
    # The caller's data scope (auth): every document the search reads, and every glossary term
    # its variants use, comes from it. None = all documents.
    scope: DataScope | None = None


@dataclass(slots=True)
class SearchOutcome:
    query: str
    results: list[ScoredResult]
    variants: list[QueryVariant]
    timings_ms: dict[str, float]
    degraded: list[str] = field(default_factory=list)
    reranked: bool = False
    explain: dict[str, Any] | None = None


class SearchPipeline:
    """Runs one search through the four ports; owns the defaults, the rerank pool and fallbacks."""

    def __init__(
        self,
        settings: SearchSettings,
        *,
        expander: Expander,
        embedder: Embedder,
        retriever: Retriever,
        reranker: Reranker,
        observer: SearchObserver | None = None,
    ) -> None:
        self.settings = settings
        self.expander, self.embedder, self.retriever, self.reranker = expander, embedder, retriever, reranker
        self.observer = observer or SearchObserver()

    def rerank_pool(self, top_k: int, rerank: bool) -> int:
        """How many fused candidates the fan-out returns: the rerank reorders the top ``pool``."""
        return max(top_k, self.settings.rerank_candidates) if rerank else top_k

    async def search(self, q: SearchQuery) -> SearchOutcome:
        s = self.settings
        top_k = q.top_k or s.top_k
        rerank = s.rerank if q.rerank is None else q.rerank
        degraded: list[str] = []
        t0 = time.perf_counter()
        expansion = await self._expand(q, degraded)
        variants = expansion["variants"]
        t1 = time.perf_counter()
        log.info(
            "query_expansion_completed",
            extra={
                "duration_ms": round((t1 - t0) * 1000, 2),
                "variants": len(variants),
                "fallback": bool(degraded),
            },
        )
        # One Embedder call per search: the same pass yields the ColBERT rows the rerank reads.
        vectors = await self.embedder.embed([v["text"] for v in variants], "query", rerank)
        if vectors[0]["error"]:
            raise QueryNotEmbedded(vectors[0]["error"])
        kept = [i for i, v in enumerate(vectors) if not v["error"]]  # a failed variant is dropped
        variants, vectors = [variants[i] for i in kept], [vectors[i] for i in kept]
        t2 = time.perf_counter()
        fan = await self.retriever.search(
            [
                {
                    "dense": v["dense"],
                    "sparse": v["sparse"],
                    "text": var["text"],
                    "origin": var["origin"],
                    "lang": var["lang"],
                }
                for v, var in zip(vectors, variants, strict=True)
            ],
            top_k=top_k,
            channels=q.channels or tuple(s.channels),
            filters=q.filters,
            limit=self.rerank_pool(top_k, rerank),
            explain=q.explain,
            scope=q.scope,
        )
        t3 = time.perf_counter()
        log.info(
            "parallel_vector_search_completed",
            extra={
                "duration_ms": round(fan.timings_ms["search"], 2),
                "searches": fan.searches,
                "candidates": len(fan.candidates),
            },
        )
        read = [
            vectors[0],
            *(
                v
                for v, var in zip(vectors[1:], variants[1:], strict=True)
                if var["origin"] in s.rerank_variants
            ),
        ]
        candidates, reranked = await self._rerank(q.query, fan.candidates, rerank, degraded, read)
        t4 = time.perf_counter()
        timings = {
            "expand": (t1 - t0) * 1000,
            "embed": (t2 - t1) * 1000,
            "search": fan.timings_ms["search"],
            "versions": fan.timings_ms["versions"],
            "fuse": fan.timings_ms["fuse"],
            "rerank": (t4 - t3) * 1000 if rerank else 0.0,
            "total": (t4 - t0) * 1000,
        }
        results = [
            _scored(rank, c, reranked, fan.rrf_max) for rank, c in enumerate(candidates[:top_k], start=1)
        ]
        self.observer.completed(timings)
        log.info(
            "retrieval_completed",
            extra={
                "duration_ms": round(timings["total"], 2),
                "timings_ms": {k: round(v, 2) for k, v in timings.items()},
                "results": len(results),
                "degraded": degraded,
            },
        )
        return SearchOutcome(
            query=q.query,
            results=results,
            variants=variants,
            timings_ms={k: round(v, 2) for k, v in timings.items()},
            degraded=degraded,
            reranked=reranked,
            explain=_explain(expansion, fan, reranked, degraded) if q.explain else None,
        )

    async def _expand(self, q: SearchQuery, degraded: list[str]) -> Expansion:
        try:
            expansion = await self.expander.expand(q.query, q.expand, q.scope)
        except Exception as exc:
            log.exception("expander failed; searching the original query only")
            degraded.append("expander")
            self.observer.expander_failed(type(exc).__name__)
            original: QueryVariant = {"text": q.query, "lang": detect_lang(q.query), "origin": "original"}
            return {
                "variants": [original],
                "llm": "error",
                "error": f"{type(exc).__name__}: {str(exc)[:200]}",
            }
        if expansion.get("llm") == "fallback":
            degraded.append("expander")
        return expansion

    async def _rerank(
        self,
        query: str,
        candidates: list[Candidate],
        rerank: bool,
        degraded: list[str],
        queries: list[EmbedOutput],
    ) -> tuple[list[Candidate], bool]:
        """``queries``: the query's embedder outputs (ColBERT rows included), then those of the
        variants the rerank reads (``rerank_variants``)."""
        if not rerank or not candidates:
            return candidates, False
        try:
            return await self.reranker.rerank(query, candidates, queries), True
        except Exception:
            log.exception("reranker failed; returning the fused order")
            degraded.append("rerank")
            self.observer.stage_degraded("rerank")
            return candidates, False


def _scored(rank: int, cand: Candidate, reranked: bool, rrf_max: float) -> ScoredResult:
    """``score`` in [0, 1] whichever stage ordered the results, and which one did.

    After the rerank: its raw score through ``relevance`` (cosine-type similarities, clipped), as
    ``/v1/rerank`` reports it. Without it (off, or failed and degraded): the RRF divided by the
    RRF of a chunk ranked first in every list of this fan-out, so 1.0 is "first everywhere" and
    a threshold still means "near the top" instead of the ~0.02 raw RRF values.
    """
    scores = {"rrf": cand.rrf, **cand.channel_scores}
    if reranked:
        return ScoredResult(rank, cand, relevance(scores["rerank"]), scores, "rerank")
    return ScoredResult(rank, cand, min(cand.rrf / rrf_max, 1.0) if rrf_max > 0 else 0.0, scores, "fusion")


def _explain(expansion: Expansion, fan: Fanout, reranked: bool, degraded: list[str]) -> dict[str, Any]:
    return {
        "expansion": {k: v for k, v in expansion.items() if k != "variants"},
        "searches": fan.plan or [],
        "slowest_search_ms": {
            ch: round(fan.timings_ms[f"search_{ch}"], 2)
            for ch in ("dense", "sparse", "bm25")
            if f"search_{ch}" in fan.timings_ms
        },
        "rerank": "on" if reranked else ("failed" if "rerank" in degraded else "off"),
    }


# ------------------------------------------------------------------------- in-process adapters


class OriginalOnly:
    """An expander that never rewrites: the original query with its detected language."""

    async def expand(self, query: str, enabled: bool = True, scope: DataScope | None = None) -> Expansion:
        return {"variants": [{"text": query, "lang": detect_lang(query), "origin": "original"}], "llm": "off"}


class MemoExpander:
    """Remembers each answer of an expander (an evaluation asks the same query once per config)."""

    def __init__(self, inner: Expander) -> None:
        self.inner = inner
        self._seen: dict[tuple[str, bool, DataScope | None], Expansion] = {}

    async def expand(self, query: str, enabled: bool = True, scope: DataScope | None = None) -> Expansion:
        key = (query, enabled, scope)
        if key not in self._seen:
            self._seen[key] = await self.inner.expand(query, enabled, scope)
        return self._seen[key]


class LocalEmbedder:
    """The ``Embedder`` port over an in-process ``EmbeddingService``, remembering every output.

    The memo plays the part of the Embedder's cache for an evaluation: each query, variant and
    rerank passage is encoded once for all configurations. ``prime`` encodes in batches first.
    """

    def __init__(self, service: Any, batch: int = 32) -> None:
        self.service = service
        self.batch = batch
        self._memo: dict[tuple[str, str, bool, Truncate], EmbedOutput] = {}

    def prime(
        self, texts: Sequence[str], input_type: InputType, colbert: bool = False, truncate: Truncate = "end"
    ) -> None:
        from serve_app.core.embedding import EmbedItem

        key = (input_type, colbert, truncate)
        if not colbert:  # an output with ColBERT rows serves a request without them
            for t in texts:
                richer = self._memo.get((t, input_type, True, truncate))
                if richer is not None and (t, *key) not in self._memo:
                    self._memo[(t, *key)] = {**richer, "colbert": None}
        todo = list(dict.fromkeys(t for t in texts if (t, *key) not in self._memo))
        for start in range(0, len(todo), self.batch):
            part = todo[start : start + self.batch]
            outs = self.service.embed_items([EmbedItem(t, input_type, colbert, truncate) for t in part])
            for text, out in zip(part, outs, strict=True):
                self._memo[(text, *key)] = out

    async def embed(
        self, texts: list[str], input_type: InputType, colbert: bool = False, truncate: Truncate = "end"
    ) -> list[EmbedOutput]:
        """``truncate="none"``: ``InputTooLong`` for a text over the window, as the Embedder does."""
        if truncate == "none":
            self.service.check_fits(texts, input_type)
        self.prime(texts, input_type, colbert, truncate)
        return [self._memo[(t, input_type, colbert, truncate)] for t in texts]


class ServiceEmbedder:
    """The ``Embedder`` port over an in-process ``EmbeddingService``, as the Embedder deployment
    runs it minus the Ray hop and the batching: in-memory cache hits answered at once, the rest
    in one model step in a thread (the latency benchmark's floor)."""

    def __init__(self, service: Any) -> None:
        self.service = service

    async def embed(
        self, texts: list[str], input_type: InputType, colbert: bool = False, truncate: Truncate = "end"
    ) -> list[EmbedOutput]:
        from serve_app.core.embedding import EmbedItem, fill_gaps

        if truncate == "none":
            self.service.check_fits(texts, input_type)
            truncate = "end"
        items = [EmbedItem(t, input_type, colbert, truncate) for t in texts]
        return await fill_gaps(
            self.service.from_memory(items),
            lambda todo: asyncio.to_thread(self.service.embed_items, [items[i] for i in todo]),
        )
