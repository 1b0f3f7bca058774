"""Searcher: a thin Serve shell around ``Retriever`` (parallel fan-out over Milvus + RRF)."""

from __future__ import annotations

from typing import Any

from ray import serve

from serve_app.retrieval import Retriever
from serve_app.settings import Settings
from serve_app.store import MilvusStore


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
        candidates, timings = await self.retriever.search(vectors, **kwargs)
        return {"candidates": candidates, "timings_ms": timings}

    def check_health(self) -> None:
        """Nothing to check in the replica itself: a Milvus outage is answered with 503 and
        recovers when Milvus does; restarting this replica would not bring Milvus back."""
