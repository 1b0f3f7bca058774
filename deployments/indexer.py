"""Indexer: a thin Serve shell around ``Ingestor`` for ``POST/DELETE /v1/documents`` and around
``GitSync`` for ``POST /v1/sources/{name}/sync``.

Embeds through the Embedder's handle (its GPU replicas and dynamic batches), writes to Milvus.
Writes are serialised in the replica: two requests updating one document at once would
otherwise both compute the same next version. Syncs of one source run one after another, each
to the commit its trigger named (a trigger for a commit already synced past does nothing).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.core.gitrepo import GitError, GitRepo, UnknownRevision
from serve_app.core.gitsource import GitSync
from serve_app.core.ingest import Ingestor, IngestReport, SourceDocument
from serve_app.core.meta import MetaStore
from serve_app.core.store import StoreUnavailable, doc_version_filter, make_store
from serve_app.serving.observability import metric
from serve_app.settings import DataScope, Settings

T = TypeVar("T")

EMBED_TIMEOUT_S = 300.0  # one embedding call of a write batch; a hung Embedder must not block writes forever


def _count(report: IngestReport) -> None:
    """Documents and chunks of a write into the service's metrics."""
    counts = {
        ("documents", "added"): report.added,
        ("documents", "updated"): report.updated,
        ("documents", "unchanged"): report.unchanged,
        ("documents", "failed"): len(report.failed),
        ("chunks", "embedded"): report.chunks_embedded,
        ("chunks", "reused"): report.chunks_reused,
        ("chunks", "deleted"): report.chunks_deleted,
    }
    for (name, kind), value in counts.items():
        if value:
            metric(name).inc(value, tags={"outcome" if name == "documents" else "kind": kind})


@serve.deployment(name="Indexer", max_ongoing_requests=16)
class Indexer:
    def __init__(self, settings: Settings, embedder: DeploymentHandle, dim: int) -> None:
        self.settings = settings
        self.embedder = embedder
        self.store = make_store(settings, dim)
        self.meta = MetaStore(self.store)
        self._lock = threading.Lock()
        self._model_key: str | None = None
        self._source_locks: dict[str, asyncio.Lock] = {}
        self._source_runs: dict[str, dict[str, Any]] = {}  # name -> the newest trigger's state
        self._fetch_locks: dict[str, threading.Lock] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Blocking work (Milvus, git, the Ingestor) off the replica's event loop, remembering that
        loop for the Embedder calls the work makes (``_call_embedder``)."""
        self._loop = asyncio.get_running_loop()
        return await asyncio.to_thread(fn, *args)

    def _call_embedder(self, method: str, *args: Any) -> Any:
        """An Embedder call from a worker thread, made on the replica's event loop and waited for
        here: a handle whose router runs on that loop (``RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0``,
        part of Serve's throughput-optimised mode) refuses calls from other threads."""

        async def call() -> Any:
            return await getattr(self.embedder, method).remote(*args)

        if self._loop is None:
            raise RuntimeError("Embedder calls come from work started by _in_thread")
        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout=EMBED_TIMEOUT_S)

    def _embed(self, texts: list[str]) -> tuple[np.ndarray, list[dict[int, float]]]:
        colbert = self.settings.ingest.colbert_rows  # warms the rerank's ColBERT cache (same pass)
        out = self._call_embedder("embed", texts, "passage", colbert)
        failed = [o["error"] for o in out if o["error"]]
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(texts)} texts failed to embed: {failed[0]}")
        return np.stack([o["dense"] for o in out]), [o["sparse"] for o in out]

    def _ingestor(self) -> Ingestor:
        if self._model_key is None:
            self._model_key = self._call_embedder("info")["model_key"]
        return Ingestor(
            self._embed,
            self.store,
            self.settings.chunk,
            settings=self.settings.ingest,
            model_key=self._model_key,
            meta=self.meta,
            origin="http",
            record_runs=False,
        )

    def _upsert(self, docs: list[dict[str, Any]], scope: DataScope | None = None) -> dict[str, Any]:
        sources = [SourceDocument(**d) for d in docs]
        try:
            with self._lock:  # the scope check and the write are one step for other writers
                ingestor = self._ingestor()
                ingestor.check_scope(scope, docs=sources)
                report = ingestor.ingest(sources, total=len(docs))
        except StoreUnavailable:
            metric("milvus_errors").inc(tags={"where": "indexer", "kind": "unavailable"})
            raise
        _count(report)
        return report.as_dict()

    def _delete(self, doc_ids: list[str], scope: DataScope | None = None) -> dict[str, Any]:
        with self._lock:
            ingestor = self._ingestor()
            ingestor.check_scope(scope, doc_ids=doc_ids)
            report = ingestor.delete_documents(doc_ids)
        return {"deleted": report.deleted, "chunks_deleted": report.chunks_deleted}

    async def upsert(self, docs: list[dict[str, Any]], scope: DataScope | None = None) -> dict[str, Any]:
        """``scope``: the caller's write scope (``OutOfScope`` before anything is written)."""
        return await self._in_thread(self._upsert, docs, scope)

    async def delete(self, doc_ids: list[str], scope: DataScope | None = None) -> dict[str, Any]:
        return await self._in_thread(self._delete, doc_ids, scope)

    def _resolve(self, name: str, commit: str | None) -> str:
        """Fetch the registered remote (one fetch per source at a time) and resolve the commit; a
        ref of the operator's that names nothing is the service's fault (503), not the caller's."""
        source = self.settings.ingest.sources[name]
        repo = GitRepo(source.repo)
        with self._fetch_locks.setdefault(name, threading.Lock()):
            if source.remote:
                repo.fetch(source.remote)
        if commit is not None:
            return repo.resolve(commit)
        try:
            return repo.resolve(source.ref)
        except UnknownRevision as exc:
            raise GitError(f"ingest.sources.{name}.ref {source.ref!r} names no commit: {exc}") from None

    def _sync(self, name: str, commit: str, full: bool) -> dict[str, Any]:
        source = self.settings.ingest.sources[name]
        with self._lock:
            ingestor = self._ingestor()
            ingestor.origin = f"git:{name}@{commit[:12]}"
            report = GitSync(ingestor, self.meta, GitRepo(source.repo), name, prefix=source.prefix).sync(
                commit, full=full
            )
        _count(report.ingest)
        return report.as_dict()

    async def _run_sync(self, name: str, commit: str, full: bool) -> dict[str, Any]:
        """One trigger's sync, after the source's earlier ones; its state is kept whatever ends it
        (a client that stops waiting cancels nothing: the caller shields this task)."""
        run = self._source_runs[name]
        mine = lambda: run.get("requested") == commit  # noqa: E731  (a newer trigger owns the status)
        async with self._source_locks.setdefault(name, asyncio.Lock()):
            if mine():
                run["state"] = "running"
            try:
                result = await self._in_thread(self._sync, name, commit, full)
            except BaseException as exc:
                if mine():
                    run.update(state="failed", error=f"{type(exc).__name__}: {exc}"[:1000])
                raise
            if mine():
                pending = result.get("pending") or []
                error = (
                    None
                    if result.get("recorded")
                    else f"{len(pending)} documents failed to embed; the commit was not recorded and the "
                    "next sync redoes them"
                )
                run.update(state="done", error=error, last=result, finished_at=int(time.time()))
            return result

    async def sync_source(self, name: str, commit: str | None, full: bool, wait: bool) -> dict[str, Any]:
        """Sync the registered source ``name`` to ``commit`` (default: its ref); ``wait``: answer
        with the sync's report, else at once with the queued state (the sync goes on here)."""
        target = await asyncio.to_thread(self._resolve, name, commit)
        self._source_runs[name] = {
            "state": "queued",
            "requested": target,
            "error": None,
            "at": int(time.time()),
        }
        task = asyncio.create_task(self._run_sync(name, target, full))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # failure kept in the status
        if wait:
            # shield: a client that disconnects (or times out) must not cancel the sync itself
            report = await asyncio.shield(task)
            return {**await self.source_status(name), "report": report}
        return await self.source_status(name)

    async def source_status(self, name: str) -> dict[str, Any]:
        """The source's synced commit (from the meta store: it outlives this replica) and the
        state of the newest trigger this replica received."""
        recorded = await asyncio.to_thread(GitSync.recorded, self.meta, name) or {}
        run = self._source_runs.get(name, {})
        return {
            "source": name,
            "state": run.get("state", "idle"),
            "requested": run.get("requested"),
            "error": run.get("error"),
            "commit": recorded.get("commit"),
            "synced_at": recorded.get("synced_at"),
            "last": run.get("last") or recorded.get("report"),
        }

    def check_health(self) -> None:
        """Stateless between requests: alive is healthy (a Milvus outage is a 503, not a restart)."""

    async def get(self, doc_id: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self._get, doc_id)

    def _get(self, doc_id: str) -> dict[str, Any] | None:
        versions = self.store.doc_versions([doc_id])
        if doc_id not in versions:
            return None
        version, updated_at = versions[doc_id]
        rows = self.store.query(
            doc_version_filter(doc_id, version),
            limit=16_384,
            fields=["ordinal", "title", "lang", "kind", "source", "tags"],
        )
        first = min(rows, key=lambda r: r["ordinal"]) if rows else {}
        return {
            "doc_id": doc_id,
            "version": version,
            "updated_at": updated_at,
            "chunks": len(rows),
            "title": first.get("title", ""),
            "kind": first.get("kind", ""),
            "source": first.get("source", ""),
            "tags": first.get("tags", []),
            "langs": sorted({r["lang"] for r in rows}),
            "failed": self.meta.get("failed", doc_id),
        }
