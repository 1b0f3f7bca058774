"""A typed Python client for specrag's HTTP API, sync and async, over httpx only.

It imports neither Ray, FastAPI, torch nor the engines (an import-linter contract in
pyproject.toml says so), so an application can use it without the service's stack. The
retrievers for LangChain (``serve_app.client.langchain``) and LlamaIndex
(``serve_app.client.llamaindex``) are optional extras: ``pip install 'specrag[langchain]'``.
"""

from __future__ import annotations

from serve_app.client.client import AsyncSpecragClient, SpecragClient
from serve_app.client.errors import (
    ApiError,
    BadRequest,
    Conflict,
    ConnectionFailed,
    Forbidden,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RequestTimeout,
    ServerError,
    ServiceUnavailable,
    SpecragError,
    TransportError,
    Unauthorized,
)
from serve_app.client.models import (
    DeleteResponse,
    Document,
    DocumentInfo,
    DocumentsResponse,
    EmbedResponse,
    Filters,
    Readiness,
    SearchResponse,
    SearchResult,
    SourceStatus,
)

__all__ = [
    "ApiError",
    "AsyncSpecragClient",
    "BadRequest",
    "Conflict",
    "ConnectionFailed",
    "DeleteResponse",
    "Document",
    "DocumentInfo",
    "DocumentsResponse",
    "EmbedResponse",
    "Filters",
    "Forbidden",
    "InvalidRequest",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "Readiness",
    "RequestTimeout",
    "SearchResponse",
    "SearchResult",
    "ServerError",
    "ServiceUnavailable",
    "SourceStatus",
    "SpecragClient",
    "SpecragError",
    "TransportError",
    "Unauthorized",
]
