"""Error shapes of the HTTP API and the one mapping from the core's errors to status codes.

Every refusal is ``{"error": reason, "detail": ...}`` (OpenAI's shape on ``/v1/embeddings``, so
OpenAI client libraries show the message); a core error becomes a 4xx/503 here and nowhere else.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.core.ingest import ModelMismatch
from serve_app.core.pipeline import EmbedderUnavailable, QueryNotEmbedded, SearchRejected
from serve_app.core.store import StoreUnavailable

log = logging.getLogger("ray.serve.specrag.ingress")


class ClientError(Exception):
    def __init__(self, status: int, reason: str, detail: Any = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.detail = status, reason, detail


class OpenAIError(Exception):
    """An error in OpenAI's shape, so OpenAI client libraries show its message."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


class BackendUnavailable(RuntimeError):
    """A deployment behind the ingress could not be reached; ``reason`` names which."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def client_error(exc: BaseException) -> ClientError | None:
    """The status and reason a core error is answered with; ``None`` for an unexpected one."""
    if isinstance(exc, StoreUnavailable):
        return ClientError(503, "vector store unavailable", str(exc))
    if isinstance(exc, SearchRejected):
        return ClientError(400, "the vector store rejected the search", str(exc))
    if isinstance(exc, QueryNotEmbedded):
        return ClientError(503, "the embedder failed on the query", str(exc))
    if isinstance(exc, EmbedderUnavailable):
        return ClientError(503, "embedder unavailable", str(exc) or None)
    if isinstance(exc, ModelMismatch):
        return ClientError(409, "the index was built with another model", str(exc))
    if isinstance(exc, BackendUnavailable):
        return ClientError(503, exc.reason, exc.detail)
    return None


def openai_body(message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


def _parse_error(exc: BaseException) -> str | None:
    """Name why a body could not be parsed; FastAPI only says "There was an error parsing the body"."""
    cause = exc.__cause__
    if isinstance(cause, UnicodeDecodeError):
        return f"request body is not valid UTF-8 (byte {cause.start}: {cause.reason})"
    if isinstance(cause, RecursionError):
        return "request body is nested too deeply"
    return None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OpenAIError)
    async def _openai_error(_: Request, exc: OpenAIError) -> JSONResponse:
        return JSONResponse(openai_body(exc.message, exc.param, exc.code), status_code=exc.status)

    @app.exception_handler(ClientError)
    async def _client_error(_: Request, exc: ClientError) -> JSONResponse:
        return JSONResponse({"error": exc.reason, "detail": exc.detail}, status_code=exc.status)

    for kind in (
        StoreUnavailable,
        SearchRejected,
        QueryNotEmbedded,
        EmbedderUnavailable,
        ModelMismatch,
        BackendUnavailable,
    ):

        @app.exception_handler(kind)
        async def _core_error(_: Request, exc: Exception) -> JSONResponse:
            mapped = client_error(exc)
            assert mapped is not None
            return JSONResponse({"error": mapped.reason, "detail": mapped.detail}, status_code=mapped.status)

    # Starlette's class, so its own 404/405 and FastAPI's body-parse 400 get the same {"error": ...} shape.
    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        reason = (exc.status_code == 400 and _parse_error(exc)) or exc.detail
        return JSONResponse({"error": reason}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": ".".join(str(p) for p in e.get("loc", ())[1:]) or "body", "reason": e.get("msg")}
            for e in exc.errors()
        ]
        if request.url.path.endswith("/v1/embeddings"):
            first = errors[0] if errors else {"field": "body", "reason": "invalid request"}
            return JSONResponse(
                openai_body(f"{first['field']}: {first['reason']}", first["field"]), status_code=422
            )
        return JSONResponse({"error": "invalid request", "detail": errors}, status_code=422)
