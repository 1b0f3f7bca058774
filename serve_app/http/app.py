"""The HTTP API's app factory: settings and a backend in, a FastAPI app out.

``create_app`` builds a fresh app per call (nothing at import time), with one router per feature
(``routes/``), the error mapping (``errors.py``) and the middleware configured by arguments. The
backend is whatever answers the routes: the Ingress deployment over its graph handles in Serve
(``deployments/ingress.py``), or an in-process double in a test.
"""

from __future__ import annotations

from typing import Any, Protocol

from fastapi import FastAPI

from serve_app.core.contracts import EmbedOutput, InputType, TextScore, Truncate
from serve_app.core.pipeline import SearchPipeline
from serve_app.http import openapi
from serve_app.http.errors import install_error_handlers
from serve_app.http.middleware import BodyLimit, RequestId
from serve_app.http.security import AuthMiddleware, Guard
from serve_app.settings import DataScope, Settings


class Backend(Protocol):
    """What the routes need from the service behind them."""

    pipeline: SearchPipeline

    async def model_info(self) -> dict[str, Any]: ...

    async def embed(
        self, texts: list[str], input_type: InputType, colbert: bool = False, truncate: Truncate = "end"
    ) -> list[EmbedOutput]: ...

    async def rerank(self, query: str, texts: list[str], truncate: Truncate = "end") -> list[TextScore]: ...

    async def token_strings(self, ids: list[int]) -> list[str]: ...

    async def readiness(self, timeout_s: float) -> dict[str, dict[str, Any]]: ...

    async def upsert_documents(
        self, docs: list[dict[str, Any]], scope: DataScope | None = None
    ) -> dict[str, Any]: ...

    async def get_document(self, doc_id: str) -> dict[str, Any] | None: ...

    async def delete_documents(
        self, doc_ids: list[str], scope: DataScope | None = None
    ) -> dict[str, Any]: ...

    async def sync_source(self, name: str, commit: str | None, full: bool, wait: bool) -> dict[str, Any]: ...

    async def source_status(self, name: str) -> dict[str, Any]: ...


def create_app(
    settings: Settings, backend: Backend, *, metrics: bool = False, request_id_header: bool = True
) -> FastAPI:
    """``metrics``: count every response into Ray's metrics (only inside a Serve replica).
    ``request_id_header=False`` where a proxy in front adds ``X-Request-ID`` itself (Serve's does)."""
    from serve_app.http.routes import dify, documents, embeddings, health, models, rerank, search, sources

    app = FastAPI(
        title="specrag",
        version="0.1.0",
        description="Retrieval over living ja/en system-development knowledge (BGE-M3 + Milvus, Ray Serve).",
    )
    app.state.settings, app.state.backend = settings, backend
    install_error_handlers(app)
    for feature in (health, search, documents, sources, embeddings, rerank, models, dify):
        app.include_router(feature.router)
    openapi.install(app)
    # Starlette runs the last added outermost: count every response, give it an id, then
    # authenticate, then size.
    app.add_middleware(BodyLimit, limit=settings.limits.max_body_bytes)
    redis_url = settings.redis.url.get_secret_value() if settings.redis.url else None
    on_fallback = None
    if metrics:
        from serve_app.serving.observability import metric

        on_fallback = metric("rate_limit_fallbacks").inc
    app.state.guard = Guard(settings.auth, redis_url=redis_url, on_fallback=on_fallback, redis=settings.redis)
    app.add_middleware(AuthMiddleware, guard=app.state.guard)
    app.add_middleware(RequestId, echo=request_id_header)
    if metrics:
        from serve_app.serving.observability import RequestMetrics

        app.add_middleware(RequestMetrics)
    return app
