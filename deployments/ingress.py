"""Ingress: the graph's HTTP entry, a thin Serve shell around the app factory and the pipeline.

It holds no model. Its constructor wires the ``SearchPipeline`` to the other deployments' handles
(``serve_app.serving.adapters``) and implements the HTTP layer's ``Backend`` over them; the
routes themselves live in ``serve_app/http``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.core.contracts import EmbedOutput, InputType, TextScore, Truncate
from serve_app.core.gitrepo import GitError, UnknownRevision
from serve_app.core.gitsource import SourceConflict
from serve_app.core.ingest import ModelMismatch, OutOfScope
from serve_app.core.pipeline import SearchPipeline
from serve_app.core.store import StoreUnavailable
from serve_app.http.app import create_app
from serve_app.http.errors import BackendUnavailable, one_line
from serve_app.serving.adapters import (
    CachingEmbedder,
    CachingExpander,
    HandleEmbedder,
    HandleExpander,
    HandleReranker,
    HandleRetriever,
    ServeMetrics,
    first_line,
)
from serve_app.serving.handles import find_cause, root_cause
from serve_app.settings import DataScope, Settings

log = logging.getLogger("ray.serve.specrag.ingress")


@serve.deployment(name="Ingress", max_ongoing_requests=256)
@serve.ingress()
class Ingress:
    def __init__(
        self,
        settings: Settings,
        expander: DeploymentHandle,
        embedder: DeploymentHandle,
        searcher: DeploymentHandle,
        reranker: DeploymentHandle,
        indexer: DeploymentHandle,
    ) -> None:
        self.settings = settings
        self.expander, self.embedder, self.searcher, self.indexer = expander, embedder, searcher, indexer
        handle_embedder = HandleEmbedder(embedder)
        mb = settings.serve.ingress_cache_mb
        # A repeated text skips the hop to the Embedder (serving/adapters.py: CachingEmbedder).
        self._embed_port = CachingEmbedder(handle_embedder, mb * 2**20) if mb else handle_embedder
        self._rerank_port = HandleReranker(reranker)
        # A repeated query skips the hop to the QueryExpander and its LLM call (CachingExpander),
        # never past the expander's next glossary refresh: new terms reach remembered queries too.
        ttl = min(settings.serve.expansion_cache_s, settings.expander.glossary_refresh_s)
        expand_port = CachingExpander(HandleExpander(expander), ttl) if ttl else HandleExpander(expander)
        self.pipeline = SearchPipeline(
            settings.search,
            expander=expand_port,
            embedder=self._embed_port,
            retriever=HandleRetriever(searcher),
            reranker=self._rerank_port,
            observer=ServeMetrics(),
        )
        self._model_info: dict[str, Any] | None = None

    def __serve_build_asgi_app__(self) -> FastAPI:
        # Serve's proxy adds X-Request-ID to every response (the client's, or one it generated).
        return create_app(self.settings, self, metrics=True, request_id_header=False)

    def check_health(self) -> None:
        """Holds no model or connection of its own; /readyz reports the dependencies."""

    # ------------------------------------------------------------------ the HTTP layer's Backend

    async def model_info(self) -> dict[str, Any]:
        if self._model_info is None:
            self._model_info = await self._embed_port.info()
        return self._model_info

    async def embed(
        self, texts: list[str], input_type: InputType, colbert: bool = False, truncate: Truncate = "end"
    ) -> list[EmbedOutput]:
        return await self._embed_port.embed(texts, input_type, colbert, truncate)

    async def rerank(self, query: str, texts: list[str], truncate: Truncate = "end") -> list[TextScore]:
        return await self._rerank_port.score_texts(query, texts, truncate)

    async def token_strings(self, ids: list[int]) -> list[str]:
        return await self._embed_port.token_strings(ids)

    async def readiness(self, timeout_s: float) -> dict[str, dict[str, Any]]:
        async def ask(response: Any) -> dict[str, Any]:
            try:
                return await asyncio.wait_for(response, timeout_s + 1)
            except TimeoutError:
                return {"status": "down", "detail": f"no answer in {timeout_s + 1} s"}
            except Exception as exc:
                cause = root_cause(exc)
                return {"status": "down", "detail": one_line(cause) or type(cause).__name__}

        embedder, milvus, expander = await asyncio.gather(
            ask(self.embedder.ready.remote(timeout_s)),
            ask(self.searcher.ready.remote()),
            ask(self.expander.ready.remote()),
        )
        return {
            "model": embedder.get("model", embedder),
            "redis": embedder.get("redis", {"status": "unknown"}),
            "milvus": milvus,
            "expander": expander,
        }

    async def _indexer(self, call: Any) -> Any:
        try:
            return await call
        except Exception as exc:
            if (unavailable := find_cause(exc, StoreUnavailable)) is not None:
                raise StoreUnavailable(str(unavailable)) from exc
            if (mismatch := find_cause(exc, ModelMismatch)) is not None:
                raise ModelMismatch(str(mismatch)) from exc
            if (refused := find_cause(exc, OutOfScope)) is not None:
                raise OutOfScope(str(refused)) from exc
            if (conflict := find_cause(exc, SourceConflict)) is not None:
                raise SourceConflict(str(conflict)) from exc
            if (unknown := find_cause(exc, UnknownRevision)) is not None:
                raise UnknownRevision(str(unknown)) from exc
            if (git := find_cause(exc, GitError)) is not None:
                raise GitError(str(git)) from exc
            log.exception("indexer call failed")
            raise BackendUnavailable("indexer unavailable", first_line(exc)) from exc

    async def upsert_documents(
        self, docs: list[dict[str, Any]], scope: DataScope | None = None
    ) -> dict[str, Any]:
        return await self._indexer(self.indexer.upsert.remote(docs, scope))

    async def get_document(self, doc_id: str) -> dict[str, Any] | None:
        return await self._indexer(self.indexer.get.remote(doc_id))

    async def delete_documents(self, doc_ids: list[str], scope: DataScope | None = None) -> dict[str, Any]:
        return await self._indexer(self.indexer.delete.remote(doc_ids, scope))

    async def sync_source(self, name: str, commit: str | None, full: bool, wait: bool) -> dict[str, Any]:
        return await self._indexer(self.indexer.sync_source.remote(name, commit, full, wait))

    async def source_status(self, name: str) -> dict[str, Any]:
        return await self._indexer(self.indexer.source_status.remote(name))
