"""Searcher: a thin Serve shell around ``Retriever`` (parallel two-stage fan-out over Milvus + RRF).

Every ``search.idf_refresh_s`` it re-reads, in a thread, what the fan-out adapts to: the
collection's language mix (which languages a balanced search lists separately), the BM25 index
of the ``bm25`` channel (when ``search.channels`` has it) and, with the offline model
(placeholder sparse head), the IDF table; until the first read, queries are unweighted, the bm25
channel is skipped and a balanced search lists both languages.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from ray import serve

from serve_app.core.bm25 import Bm25Index
from serve_app.core.contracts import Fanout, QueryVector
from serve_app.core.lexical import IdfTable, idf_enabled
from serve_app.core.retrieval import Retriever
from serve_app.core.store import StoreUnavailable, language_counts, make_store
from serve_app.serving.observability import metric
from serve_app.settings import Settings


@serve.deployment(name="Searcher", max_ongoing_requests=128)
class Searcher:
    def __init__(self, settings: Settings, dim: int) -> None:
        self.settings = settings
        self.store = make_store(settings, dim)
        self.retriever = Retriever(self.store, settings.search)
        self.use_idf = idf_enabled(settings.search.sparse_idf, settings.model.name_or_path)
        self.use_bm25 = "bm25" in settings.search.channels
        self._idf_task: asyncio.Task[None] | None = None
        self._idf_checked = 0.0

    def _maybe_refresh_idf(self) -> None:
        if self._idf_task is not None and not self._idf_task.done():
            return
        if time.time() - self._idf_checked > self.settings.search.idf_refresh_s:
            self._idf_checked = time.time()
            self._idf_task = asyncio.get_running_loop().create_task(self._refresh_idf())

    async def _refresh_idf(self) -> None:
        """The language mix, and the IDF table where the model needs one."""
        try:
            languages = await asyncio.to_thread(language_counts, self.store)
            table = await asyncio.to_thread(IdfTable.build, self.store) if self.use_idf else None
            bm25 = await asyncio.to_thread(Bm25Index.build, self.store) if self.use_bm25 else None
        except Exception as exc:  # keep the previous state (or none): searches still work
            self._idf_checked = time.time() - self.settings.search.idf_refresh_s + 30  # retry soon
            logging.getLogger("ray.serve.specrag.searcher").warning("corpus statistics failed: %s", exc)
            return
        self.retriever.languages = languages
        if table is not None and table.chunks:
            self.retriever.idf = table
        if bm25 is not None and len(bm25):
            self.retriever.bm25 = bm25
        if not sum(languages.values()):  # nothing ingested yet: look again soon, not after a period
            self._idf_checked = time.time() - self.settings.search.idf_refresh_s + 30

    async def search(self, vectors: Sequence[QueryVector], **kwargs: Any) -> Fanout:
        self._maybe_refresh_idf()
        try:
            fan = await self.retriever.search(vectors, **kwargs)
        except StoreUnavailable:
            metric("milvus_errors").inc(tags={"where": "searcher", "kind": "unavailable"})
            raise
        except ValueError:
            metric("milvus_errors").inc(tags={"where": "searcher", "kind": "rejected"})
            raise
        for channel in ("dense", "sparse", "bm25"):
            if f"search_{channel}" in fan.timings_ms:
                metric("channel_ms").observe(fan.timings_ms[f"search_{channel}"], tags={"channel": channel})
        return fan

    def idf_status(self) -> dict[str, Any]:
        idf = self.retriever.idf
        bm25 = self.retriever.bm25
        return {
            "enabled": self.use_idf,
            "chunks": idf.chunks if idf else 0,
            "languages": self.retriever.languages,
            "bm25_chunks": len(bm25) if bm25 is not None else 0,
        }

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
