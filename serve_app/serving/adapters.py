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

from ray.serve.handle import DeploymentHandle

from serve_app.core.contracts import (
    EmbedOutput,
    Expansion,
    Fanout,
    InputType,
    QueryVector,
    TextScore,
    Truncate,
)
from serve_app.core.encoder import InputTooLong
from serve_app.core.fusion import Candidate
from serve_app.core.pipeline import EmbedderUnavailable, SearchObserver, SearchRejected
from serve_app.core.rerank import RerankerUnavailable
from serve_app.core.store import StoreUnavailable
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
