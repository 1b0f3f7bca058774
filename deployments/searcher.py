"""Searcher: a thin Serve shell around ``Retriever`` (parallel fan-out over Milvus + RRF)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ray import serve

from serve_app.observability import metric
from serve_app.retrieval import Retriever
from serve_app.settings import Settings
from serve_app.store import MilvusStore, StoreUnavailable


def make_store(settings: Settings, dim: int) -> MilvusStore:
    m = settings.milvus
    return MilvusStore(
        m.uri,
        m.collection,
        dim,
        token=m.token.get_secret_value() if m.token else None,
        hnsw_m=m.hnsw_m,
        hnsw_ef_construction=m.hnsw_ef_construction,
        search_ef=m.search_ef,
        timeout_s=m.timeout_s,
    )


@serve.deployment(name="Searcher", max_ongoing_requests=128)
class Searcher:
    def __init__(self, settings: Settings, dim: int) -> None:
        self.store = make_store(settings, dim)
        self.retriever = Retriever(self.store, settings.search)

    async def search(self, vectors: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        try:
            candidates, timings = await self.retriever.search(vectors, **kwargs)
        except StoreUnavailable:
            metric("milvus_errors").inc(tags={"where": "searcher", "kind": "unavailable"})
            raise
        except ValueError:
            metric("milvus_errors").inc(tags={"where": "searcher", "kind": "rejected"})
            raise
        for channel in ("dense", "sparse"):
            if f"search_{channel}" in timings:
                metric("channel_ms").observe(timings[f"search_{channel}"], tags={"channel": channel})
        return {"candidates": candidates, "timings_ms": timings, "searches": int(timings["searches"])}

    async def ready(self) -> dict[str, Any]:
        """Milvus answers and the collection exists (``not_initialized`` before the first ingest)."""
        started = time.perf_counter()
        try:
            exists = await asyncio.to_thread(self._collection_exists)
        except StoreUnavailable as exc:
            return {"status": "down", "detail": str(exc)}
        ms = round((time.perf_counter() - started) * 1000, 2)
        if not exists:
            return {
                "status": "not_initialized",
                "detail": f"no collection {self.store.collection!r} yet",
                "ms": ms,
            }
        return {"status": "ok", "ms": ms}

    def _collection_exists(self) -> bool:
        try:
            self.store.resolve()
        except StoreUnavailable as exc:
            if "does not exist" in str(exc):
                self.store.ping()  # Milvus itself answers: the collection is what is missing
                return False
            raise
        return True

    def check_health(self) -> None:
        """Nothing to check in the replica itself: a Milvus outage is answered with 503 and
        recovers when Milvus does; restarting this replica would not bring Milvus back."""
