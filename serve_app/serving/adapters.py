"""The search pipeline's ports over the graph's deployment handles.

Each adapter turns a Ray failure into the core's own error, so the pipeline and the HTTP layer
never look into Ray's exception wrapping: a dead replica is retried (idempotent calls only,
``handles.call_idempotent``), an unreachable embedder is ``EmbedderUnavailable``, an
unreachable reranker ``RerankerUnavailable``, and the client's and the store's own errors
(``InputTooLong``, ``StoreUnavailable``) are found in the cause chain and raised as they are.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from cachetools import TTLCache
from ray.serve.handle import DeploymentHandle

from serve_app.core.cache import EmbeddingCache
from serve_app.core.contracts import (
    EmbedOutput,
    Expansion,
    Fanout,
    InputType,
    QueryVector,
    TextScore,
    Truncate,
)
from serve_app.core.embedding import EmbedItem, cache_key, cached_output, fill_gaps
from serve_app.core.encoder import InputTooLong
from serve_app.core.fusion import Candidate
from serve_app.core.pipeline import EmbedderUnavailable, SearchObserver, SearchRejected
from serve_app.core.rerank import RerankerUnavailable
from serve_app.core.store import IndexModelMismatch, StoreUnavailable
from serve_app.serving.handles import call_idempotent, find_cause, root_cause
from serve_app.serving.observability import metric, observe_stages
from serve_app.settings import DataScope

log = logging.getLogger("ray.serve.specrag.ingress")


def first_line(exc: BaseException, limit: int = 300) -> str | None:
    """The first line of what the replica raised (not of Ray's wrapper: that is its traceback)."""
    text = str(root_cause(exc)).strip()
    return text.splitlines()[0][:limit] if text else None


class HandleExpander:
    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle

    async def expand(self, query: str, enabled: bool = True, scope: DataScope | None = None) -> Expansion:
        return await self.handle.expand.remote(query, enabled, scope)


class CachingExpander:
    """An ``Expander`` port that remembers its inner port's answers for ``ttl_s``, in this process.

    A repeated query (with the same ``enabled`` and data scope) is expanded without the hop to the
    QueryExpander and without a second LLM call, which with a real LLM is hundreds of milliseconds
    per search. Only complete answers are kept: a fallback to glossary variants (the LLM failing)
    or an error is asked again next time, so a recovered LLM is used at once. The Ingress sets
    ``ttl_s`` no longer than the expander's glossary refresh (``expander.glossary_refresh_s``), so
    newly learned terms reach remembered queries within one refresh period; ``MAX_ITEMS``
    bounds the memory (an entry is a few variants, well under a kilobyte).
    """

    MAX_ITEMS = 10_000
    KEEP = frozenset({"off", "skipped", "ok", "empty"})  # Expansion["llm"] of a complete answer

    def __init__(self, inner: Any, ttl_s: float) -> None:
        self.inner = inner
        self.memo: TTLCache[tuple[str, bool, DataScope | None], Expansion] = TTLCache(self.MAX_ITEMS, ttl_s)

    async def expand(self, query: str, enabled: bool = True, scope: DataScope | None = None) -> Expansion:
        key = (query, enabled, scope)
        hit = self.memo.get(key)
        if hit is None:
            hit = await self.inner.expand(query, enabled, scope)
            if hit.get("llm") in self.KEEP and "error" not in hit:
                self.memo[key] = hit
        return {**hit, "variants": list(hit["variants"])}  # callers may reorder their copy


class CachingEmbedder:
    """An ``Embedder`` port that remembers what its inner port returned, in this process.

    The Ingress answers a text it has embedded before (a repeated query, its variants, a repeated
    ``/v1/embed`` input) without the hop to the Embedder: that hop is most of a cached
    embedding's latency (measured: cached ``/v1/embed`` 15.4 ms p50 through the hop vs 5.4 ms for
    ``/healthz``). The Reranker keeps one for its candidates' ColBERT rows, which are megabytes
    per search to ship. Byte-bounded (``serve.ingress_cache_mb``, ``serve.reranker_cache_mb``);
    ``truncate="none"`` always goes to
    the Embedder, which checks the window; failed items are never kept. The Embedder's own caches
    (LRU + Redis) stay the shared tiers; this one only saves the hop.
    """

    def __init__(self, inner: HandleEmbedder, max_bytes: int) -> None:
        self.inner = inner
        self.cache = EmbeddingCache(None, "ingress", lru_bytes=max_bytes)

    async def embed(
        self, texts: list[str], input_type: InputType, colbert: bool = False, truncate: Truncate = "end"
    ) -> list[EmbedOutput]:
        if truncate == "none":
            return await self.inner.embed(texts, input_type, colbert, truncate)
        # One cache for both kinds of request: the key says whether the entry has ColBERT rows.
        keys = [f"{int(colbert)}:" + cache_key(EmbedItem(t, input_type, colbert, truncate)) for t in texts]
        out = [cached_output(e, colbert, "lru") if e is not None else None for e in self.cache.peek(keys)]

        async def compute(todo: list[int]) -> list[EmbedOutput]:
            got = await self.inner.embed([texts[i] for i in todo], input_type, colbert, truncate)
            # Failed or cut results are not kept (a hit could not say it was cut).
            self.cache.set_many(
                [
                    (keys[i], (r["dense"], r["sparse"], r["colbert"]))
                    for i, r in zip(todo, got, strict=True)
                    if r["error"] is None and not r["truncated"]
                ]
            )
            return got

        return await fill_gaps(out, compute)

    async def info(self) -> dict[str, Any]:
        return await self.inner.info()

    async def token_strings(self, ids: list[int]) -> list[str]:
        return await self.inner.token_strings(ids)


class HandleEmbedder:
    """The Embedder's calls are all idempotent reads: a replica that died meanwhile is retried on
    another; a text refused as too long is ``InputTooLong``; any other failure is
    ``EmbedderUnavailable``."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle

    async def _call(self, method: str, *args: Any) -> Any:
        try:
            return await call_idempotent(getattr(self.handle, method), *args)
        except Exception as exc:
            if (too_long := find_cause(exc, InputTooLong)) is not None:
                raise InputTooLong(too_long.over, too_long.limit, too_long.what) from exc
            log.exception("embedder call failed")
            raise EmbedderUnavailable(first_line(exc) or type(exc).__name__) from exc

    async def embed(
        self, texts: list[str], input_type: InputType, colbert: bool = False, truncate: Truncate = "end"
    ) -> list[EmbedOutput]:
        return await self._call("embed", texts, input_type, colbert, truncate)

    async def info(self) -> dict[str, Any]:
        """Model name, dimension and key."""
        return await self._call("info")

    async def token_strings(self, ids: list[int]) -> list[str]:
        return await self._call("token_strings", ids)


class HandleRetriever:
    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle

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
    ) -> Fanout:
        try:
            return await self.handle.search.remote(
                vectors,
                top_k=top_k,
                channels=channels,
                filters=filters,
                limit=limit,
                explain=explain,
                scope=scope,
            )
        except Exception as exc:
            if (unavailable := find_cause(exc, StoreUnavailable)) is not None:
                raise StoreUnavailable(str(unavailable)) from exc
            if (mismatch := find_cause(exc, IndexModelMismatch)) is not None:
                raise IndexModelMismatch(str(mismatch)) from exc
            if (rejected := find_cause(exc, ValueError)) is not None:
                raise SearchRejected(str(rejected)) from exc
            raise


class HandleReranker:
    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle

    async def rerank(
        self, query: str, candidates: list[Candidate], queries: Sequence[EmbedOutput]
    ) -> list[Candidate]:
        return await self.handle.rerank.remote(query, candidates, list(queries))

    async def score_texts(self, query: str, texts: list[str], truncate: Truncate = "end") -> list[TextScore]:
        """A pure function of its inputs, so a dead replica is retried; ``InputTooLong`` and
        ``EmbedderUnavailable`` come out as themselves, any other failure as
        ``RerankerUnavailable``."""
        try:
            return await call_idempotent(self.handle.score_texts, query, texts, truncate)
        except Exception as exc:
            if (too_long := find_cause(exc, InputTooLong)) is not None:
                raise InputTooLong(too_long.over, too_long.limit, too_long.what) from exc
            for kind in (EmbedderUnavailable, RerankerUnavailable):
                if (known := find_cause(exc, kind)) is not None:
                    raise kind(str(getattr(known, "cause", None) or known)) from exc
            log.exception("reranker call failed")
            raise RerankerUnavailable(first_line(exc) or type(exc).__name__) from exc


class ServeMetrics(SearchObserver):
    """Counts the pipeline's events into Ray's metrics (exported by the replica)."""

    def expander_failed(self, reason: str) -> None:
        metric("expander_fallbacks").inc(tags={"reason": reason})

    def stage_degraded(self, stage: str) -> None:
        metric("degraded").inc(tags={"stage": stage})

    def completed(self, timings_ms: dict[str, float]) -> None:
        observe_stages(timings_ms)
