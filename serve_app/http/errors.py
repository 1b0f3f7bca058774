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


# The core's errors and how each is answered: status and reason (``detail`` is the error's text).
CORE_ERRORS: dict[type[Exception], tuple[int, str]] = {
    StoreUnavailable: (503, "vector store unavailable"),
    SearchRejected: (400, "the vector store rejected the search"),
    QueryNotEmbedded: (503, "the embedder failed on the query"),
    EmbedderUnavailable: (503, "embedder unavailable"),
    ModelMismatch: (409, "the index was built with another model"),
}


def client_error(exc: BaseException) -> ClientError | None:
    """The status and reason a core error is answered with; ``None`` for an unexpected one."""
    if isinstance(exc, BackendUnavailable):
        return ClientError(503, exc.reason, exc.detail)
    for kind, (status, reason) in CORE_ERRORS.items():
        if isinstance(exc, kind):
            return ClientError(status, reason, str(exc) or None)
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

    async def _core_error(_: Request, exc: Exception) -> JSONResponse:
        mapped = client_error(exc)
        assert mapped is not None  # registered for the mapped kinds only
        return JSONResponse({"error": mapped.reason, "detail": mapped.detail}, status_code=mapped.status)

    for kind in (*CORE_ERRORS, BackendUnavailable):
        app.add_exception_handler(kind, _core_error)

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
