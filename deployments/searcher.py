"""Searcher: a thin Serve shell around ``Retriever`` (parallel two-stage fan-out over Milvus + RRF).

Every ``search.idf_refresh_s`` it re-reads, in a thread, what the fan-out adapts to: the
collection's language mix (which languages a balanced search lists separately), the BM25 index
of the ``bm25`` channel (when ``search.channels`` has it) and, with the offline model
(placeholder sparse head), the IDF table; until the first read, queries are unweighted, the bm25
channel is skipped and a balanced search lists both languages. Sooner when the index changed:
every ``search.changes_check_s`` it reads the mark writers leave in the meta store (or notices an
alias switch) and then re-reads, at most every ``search.corpus_refresh_min_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.core.bm25 import Bm25Index
from serve_app.core.contracts import Fanout, QueryVector
from serve_app.core.ingest import CHANGED
from serve_app.core.lexical import IdfTable, idf_enabled
from serve_app.core.meta import MetaStore
from serve_app.core.retrieval import Retriever
from serve_app.core.store import ModelGuard, StoreUnavailable, language_counts, make_store
from serve_app.serving.observability import metric
from serve_app.settings import Settings


@serve.deployment(name="Searcher", max_ongoing_requests=128)
class Searcher:
    def __init__(self, settings: Settings, dim: int, embedder: DeploymentHandle | None = None) -> None:
        self.settings = settings
        self.store = make_store(settings, dim)
        self.retriever = Retriever(self.store, settings.search)
        self.embedder = embedder
        self.guard = ModelGuard(self.store, settings.search.model_check_s)
        self._model_key: str | None = None
        self._guard_task: asyncio.Task[None] | None = None
        self.use_idf = idf_enabled(settings.search.sparse_idf, settings.model.name_or_path)
        self.use_bm25 = "bm25" in settings.search.channels
        self._idf_task: asyncio.Task[None] | None = None
        self._idf_checked = 0.0
        self.meta = MetaStore(self.store)
        self._changes_checked = 0.0
        self._seen_change: float | None = None  # the writers' mark when the statistics were read
        self._build_s = 0.0  # how long the last read of the statistics took

    def _maybe_refresh_idf(self) -> None:
        if self._idf_task is not None and not self._idf_task.done():
            return
        s = self.settings.search
        since = time.time() - self._idf_checked
        # A rebuild reads every chunk: never more than a quarter of the time on it, however busy
        # the writers are (11,000 chunks took 13-22 s to read here; 85 take milliseconds).
        least = max(s.corpus_refresh_min_s, 4 * self._build_s)
        if since > s.idf_refresh_s:
            self._idf_checked = time.time()
            self._idf_task = asyncio.get_running_loop().create_task(self._refresh_idf())
        elif since > least and time.time() - self._changes_checked > s.changes_check_s:
            self._changes_checked = time.time()
            self._idf_task = asyncio.get_running_loop().create_task(self._refresh_if_changed())

    async def _refresh_if_changed(self) -> None:
        """Re-read the statistics when a writer marked the index changed since the last read."""
        try:
            mark = await asyncio.to_thread(self.meta.get, *CHANGED)
        except Exception:  # the regular refresh still comes; searches are unaffected
            return
        if mark is not None and mark.get("at") != self._seen_change:
            self._idf_checked = time.time()
            await self._refresh_idf(mark)

    async def _refresh_idf(self, mark: dict[str, Any] | None = None) -> None:
        """The language mix, and the IDF table where the model needs one; ``mark``: the writers'
        change mark when the caller has just read it."""
        started = time.monotonic()
        try:
            if mark is None:
                mark = await asyncio.to_thread(self.meta.get, *CHANGED)
            languages = await asyncio.to_thread(language_counts, self.store)
            table = await asyncio.to_thread(IdfTable.build, self.store) if self.use_idf else None
            bm25 = await asyncio.to_thread(Bm25Index.build, self.store) if self.use_bm25 else None
        except Exception as exc:  # keep the previous state (or none): searches still work
            self._idf_checked = time.time() - self.settings.search.idf_refresh_s + 30  # retry soon
            logging.getLogger("ray.serve.specrag.searcher").warning("corpus statistics failed: %s", exc)
            return
        self._build_s = time.monotonic() - started
        self._seen_change = mark.get("at") if mark else None  # after success: a failed read retries
        self.retriever.languages = languages
        if table is not None and table.chunks:
            self.retriever.idf = table
        if bm25 is not None and len(bm25):
            self.retriever.bm25 = bm25
        if not sum(languages.values()):  # nothing ingested yet: look again soon, not after a period
            self._idf_checked = time.time() - self.settings.search.idf_refresh_s + 30

    async def _check_model(self) -> None:
        """Refuse (``IndexModelMismatch``) when the collection behind the alias was built with
        another model than the Embedder's: results from two vector spaces would be wrong."""
        if self.embedder is None:
            return
        if self._model_key is None:
            try:
                self._model_key = (await asyncio.wait_for(self.embedder.info.remote(), 5.0))["model_key"]
            except Exception:  # unknown for now: this search goes unchecked, the next one asks again
                return
        if self.guard.stale() and (self._guard_task is None or self._guard_task.done()):
            # One re-read at a time, in the background; searches meanwhile use the last reading
            # (the first one waits for it, so no search is ever unchecked once the key is known).
            self.guard.read_at = time.monotonic()
            self._guard_task = asyncio.get_running_loop().create_task(self._refresh_guard())
            if self.guard.recorded is None:
                await self._guard_task
        self.guard.check(self._model_key)

    async def _refresh_guard(self) -> None:
        before = self.guard.recorded
        try:
            await asyncio.to_thread(self.guard.refresh)
        except Exception as exc:  # keep the last reading; a Milvus outage shows on the search itself
            logging.getLogger("ray.serve.specrag.searcher").warning("index model check failed: %s", exc)
            return
        after = self.guard.recorded
        if before is not None and after is not None and before[0] != after[0]:
            self._idf_checked = 0.0  # the alias switched: the statistics are another collection's

    async def search(self, vectors: Sequence[QueryVector], **kwargs: Any) -> Fanout:
        self._maybe_refresh_idf()
        try:
            await self._check_model()
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
