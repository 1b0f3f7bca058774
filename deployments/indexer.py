"""Indexer: a thin Serve shell around ``Ingestor`` for ``POST/DELETE /v1/documents``.

Embeds through the Embedder's handle (its GPU replicas and dynamic batches), writes to Milvus.
Writes are serialised in the replica: two requests updating one document at once would
otherwise both compute the same next version.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.core.ingest import Ingestor, SourceDocument
from serve_app.core.meta import MetaStore
from serve_app.core.store import StoreUnavailable, doc_version_filter, make_store
from serve_app.serving.observability import metric
from serve_app.settings import DataScope, Settings

EMBED_TIMEOUT_S = 300.0  # one embedding call of a write batch; a hung Embedder must not block writes forever


@serve.deployment(name="Indexer", max_ongoing_requests=16)
class Indexer:
    def __init__(self, settings: Settings, embedder: DeploymentHandle, dim: int) -> None:
        self.settings = settings
        self.embedder = embedder
        self.store = make_store(settings, dim)
        self.meta = MetaStore(self.store)
        self._lock = threading.Lock()
        self._model_key: str | None = None

    def _embed(self, texts: list[str]) -> tuple[np.ndarray, list[dict[int, float]]]:
        # A worker thread (not the replica's event loop), so a blocking .result() is allowed.
        colbert = self.settings.ingest.colbert_rows  # warms the rerank's ColBERT cache (same pass)
        out = self.embedder.embed.remote(texts, "passage", colbert).result(timeout_s=EMBED_TIMEOUT_S)
        failed = [o["error"] for o in out if o["error"]]
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(texts)} texts failed to embed: {failed[0]}")
        return np.stack([o["dense"] for o in out]), [o["sparse"] for o in out]

    def _ingestor(self) -> Ingestor:
        if self._model_key is None:
            self._model_key = self.embedder.info.remote().result(timeout_s=EMBED_TIMEOUT_S)["model_key"]
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
        return report.as_dict()

    def _delete(self, doc_ids: list[str], scope: DataScope | None = None) -> dict[str, Any]:
        with self._lock:
            ingestor = self._ingestor()
            ingestor.check_scope(scope, doc_ids=doc_ids)
            report = ingestor.delete_documents(doc_ids)
        return {"deleted": report.deleted, "chunks_deleted": report.chunks_deleted}

    async def upsert(self, docs: list[dict[str, Any]], scope: DataScope | None = None) -> dict[str, Any]:
        """``scope``: the caller's write scope (``OutOfScope`` before anything is written)."""
        return await asyncio.to_thread(self._upsert, docs, scope)

    async def delete(self, doc_ids: list[str], scope: DataScope | None = None) -> dict[str, Any]:
        return await asyncio.to_thread(self._delete, doc_ids, scope)

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
