"""Error shapes of the HTTP API, the one mapping from the core's errors to status codes, and the
sanitiser that keeps internals out of error bodies.

Every refusal names its cause in one line and carries the request's id (also in ``X-Request-ID``).
Its shape follows the path (``ERROR_SHAPE_BY_PREFIX``, relative to the route prefix):
``{"error": reason, "detail": ..., "request_id": ...}`` by default, OpenAI's
``{"error": {"message", "type", "param", "code"}}`` on the OpenAI-compatible routes (so OpenAI
client libraries show the message) and Dify's ``{"error_code", "error_msg"}`` on ``/retrieval``.
Routes, validation, the auth and size middleware and unknown paths all answer through
``error_response``, and ``http/openapi.py`` documents the same table, so the three cannot drift.
A core error becomes a 4xx/503 here and nowhere else.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.core.encoder import InputTooLong
from serve_app.core.gitrepo import GitError, UnknownRevision
from serve_app.core.gitsource import SourceConflict
from serve_app.core.ingest import ModelMismatch, OutOfScope
from serve_app.core.pipeline import EmbedderUnavailable, QueryNotEmbedded, SearchRejected
from serve_app.core.rerank import RerankerUnavailable
from serve_app.core.store import IndexModelMismatch, StoreUnavailable
from serve_app.http.schemas import DifyErrorResponse, ErrorResponse, OpenAIErrorResponse

log = logging.getLogger("ray.serve.specrag.ingress")


class ClientError(Exception):
    """A refusal of the request: its status, reason and detail; ``code`` a stable name for it
    (``knowledge_not_found``, ...) where a client API numbers its refusals (``DIFY_CODES``)."""

    def __init__(self, status: int, reason: str, detail: Any = None, *, code: str | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.detail, self.code = status, reason, detail, code


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
    IndexModelMismatch: (503, "the index was built with another model than the one this service runs"),
    SearchRejected: (400, "the vector store rejected the search"),
    QueryNotEmbedded: (503, "the embedder failed on the query"),
    EmbedderUnavailable: (503, "embedder unavailable"),
    ModelMismatch: (409, "the index was built with another model"),
    OutOfScope: (403, "outside this caller's write scope"),
    UnknownRevision: (422, "no such commit in the source's repository"),
    SourceConflict: (409, "the source was synced with another doc-id prefix"),
    GitError: (503, "the source's repository is unavailable"),
    InputTooLong: (413, "input over the model's token limit; shorten it or allow truncation"),
    RerankerUnavailable: (503, "reranker unavailable"),
}


# ------------------------------------------------------------------------------------- shapes

# The error shape of each path (relative to the route prefix); the longest matching prefix wins,
# every other path answers in the default shape. A router that follows another API's error
# convention adds its prefix here (and its shape to ``SHAPES`` if new): the handlers below, the
# auth and size middleware and the OpenAPI document all read this one table.
ERROR_SHAPE_BY_PREFIX: dict[str, str] = {
    "/v1/embeddings": "openai",
    "/v1/models": "openai",
    "/retrieval": "dify",
}
SHAPES: dict[str, type[BaseModel]] = {
    "default": ErrorResponse,
    "openai": OpenAIErrorResponse,
    "dify": DifyErrorResponse,
}
# Dify's documented codes for the refusals it names (1001 invalid Authorization header format,
# 1002 authorization failed, 2001 the knowledge does not exist); any other refusal, an unknown path's
# 404 included, carries its HTTP status.
DIFY_CODES = {
    "missing_api_key": 1001,
    "invalid_authorization_header": 1001,
    "invalid_api_key": 1002,
    "invalid_token": 1002,
    "insufficient_scope": 1002,
    "knowledge_not_found": 2001,
}


def route_path(scope: Mapping[str, Any]) -> str:
    """The request's path relative to the app's mount point: ASGI's ``path`` holds the
    ``root_path`` (Serve sets it to the route prefix), routes and scopes are declared without it."""
    path, root = scope.get("path", ""), scope.get("root_path", "").rstrip("/")
    if root and (path == root or path.startswith(root + "/")):
        return path[len(root) :] or "/"
    return path


def error_shape(path: str) -> str:
    """The shape errors on ``path`` (relative, or a route's path template) are answered in."""
    matches = [p for p in ERROR_SHAPE_BY_PREFIX if path == p or path.startswith(p.rstrip("/") + "/")]
    return ERROR_SHAPE_BY_PREFIX[max(matches, key=len)] if matches else "default"


def request_id_of(scope: Mapping[str, Any]) -> str:
    """The id ``middleware.RequestId`` gave the request ("" outside an app built by ``create_app``)."""
    return str((scope.get("state") or {}).get("request_id") or "")


def error_body(
    shape: str,
    status: int,
    message: str,
    detail: Any = None,
    *,
    request_id: str,
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """One refusal in ``shape``; built through its schema, so the body is what the document says.
    The OpenAI and Dify shapes have no ``detail``: it joins the message (a list or mapping as JSON),
    so what a refusal names is never dropped."""
    if shape != "default" and detail not in (None, "", [], {}):
        text = detail if isinstance(detail, str) else json.dumps(detail, ensure_ascii=False, default=str)
        message = f"{message}: {text}"
    if shape == "openai":
        kind = "server_error" if status >= 500 else "invalid_request_error"
        error = {"message": message, "type": kind, "param": param, "code": code}
        return OpenAIErrorResponse.model_validate({"error": error, "request_id": request_id}).model_dump()
    if shape == "dify":
        number = DIFY_CODES.get(code or "", status)
        return DifyErrorResponse(error_code=number, error_msg=message, request_id=request_id).model_dump()
    return ErrorResponse(error=message, detail=detail, request_id=request_id).model_dump()


def error_response(
    scope: Mapping[str, Any],
    status: int,
    message: str,
    detail: Any = None,
    *,
    headers: Mapping[str, str] | None = None,
    param: str | None = None,
    code: str | None = None,
    shape: str | None = None,
) -> JSONResponse:
    """A refusal of the request in ``scope``, in its path's shape unless ``shape`` says otherwise."""
    body = error_body(
        shape or error_shape(route_path(scope)),
        status,
        message,
        detail,
        request_id=request_id_of(scope),
        param=param,
        code=code,
    )
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


# ---------------------------------------------------------------------------------- sanitiser

_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
_TRACEBACK_LINE = re.compile(r'^\s*(?:Traceback \(most recent call last\)|File "|During handling|The above)')
_REDACT = [
    (re.compile(r"\((?:pid|ip|actor_id|repr)=[^)]*\)"), ""),  # Ray's "(pid=1, ip=10.0.0.3, actor_id=...)"
    (re.compile(r"\b(?:pid|ip|node_ip|actor_id|node_id|worker_id|job_id)\s*[=:]\s*[^\s,;)]+", re.I), ""),
    (re.compile(r"\bray::\S+"), ""),  # a Ray process title
    # Ray's actor, node, task ids ("The actor 8c6e... is", "ActorID(8c6e...)"); a model's revision stays
    (re.compile(r"\b(actor|node|task|worker|job|object)(?:[ _]?id)?[\s:=(]*[0-9a-f]{16,}\)?", re.I), r"\1"),
    (re.compile(r"""(?<![\w:/.'"])(?:/[\w.+@-]+){2,}/?"""), "<path>"),  # a file path (not a URL's)
]


def one_line(text: object, limit: int = 300) -> str | None:
    """A failure's own message in one line for a client: the last line of a traceback (its
    ``Kind: message``, the kind dropped) or the first line otherwise, without ANSI colours, Ray's
    process titles, pids, node IPs, actor ids or file paths; ``None`` when nothing is left.

    Ray's remote errors stringify as the whole remote traceback (``RayTaskError``); the full
    text belongs in the log, under the request's id, not in the body.
    """
    raw = _ANSI.sub("", str(text if text is not None else "")).replace("\r", "\n")
    lines = [line for line in raw.split("\n") if line.strip()]
    if any(_TRACEBACK_LINE.match(line) for line in lines):
        flush = [line for line in lines if not line[:1].isspace() and not _TRACEBACK_LINE.match(line)]
        tail = [line for line in flush if not line.lstrip().startswith("ray::")]
        line = re.sub(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:\([\w.]+\))?: ", "", tail[-1]) if tail else ""
    else:
        line = next((x for x in lines if not x.lstrip().startswith("ray::")), lines[0] if lines else "")
    for pattern, replacement in _REDACT:
        line = pattern.sub(replacement, line)
    line = re.sub(r"\s+", " ", "".join(c for c in line if c.isprintable())).strip(" ,;:")
    if not line:
        return None
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


# ---------------------------------------------------------------------------------- core errors


def client_error(exc: BaseException) -> ClientError | None:
    """The status and reason a core error is answered with; ``None`` for an unexpected one. The
    detail is the error's own message through ``one_line``."""
    if isinstance(exc, BackendUnavailable):
        return ClientError(503, exc.reason, one_line(exc.detail))
    for kind, (status, reason) in CORE_ERRORS.items():
        if isinstance(exc, kind):
            return ClientError(status, reason, one_line(exc))
    return None


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
    async def _openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
        return error_response(
            request.scope, exc.status, exc.message, param=exc.param, code=exc.code, shape="openai"
        )

    @app.exception_handler(ClientError)
    async def _client_error(request: Request, exc: ClientError) -> JSONResponse:
        return error_response(request.scope, exc.status, exc.reason, exc.detail, code=exc.code)

    async def _core_error(request: Request, exc: Exception) -> JSONResponse:
        mapped = client_error(exc)
        assert mapped is not None  # registered for the mapped kinds only
        if mapped.status >= 500:
            rid = request_id_of(request.scope)
            log.warning("request %s: %s: %s", rid, mapped.reason, mapped.detail, exc_info=exc)
        return error_response(request.scope, mapped.status, mapped.reason, mapped.detail)

    for kind in (*CORE_ERRORS, BackendUnavailable):
        app.add_exception_handler(kind, _core_error)

    # Starlette's class, so its own 404/405 and FastAPI's body-parse 400 get the same shape.
    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        reason = (exc.status_code == 400 and _parse_error(exc)) or exc.detail
        return error_response(request.scope, exc.status_code, str(reason), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": ".".join(str(p) for p in e.get("loc", ())[1:]) or "body", "reason": e.get("msg")}
            for e in exc.errors()
        ]
        if error_shape(route_path(request.scope)) != "default":  # one message naming every field
            errors = errors or [{"field": "body", "reason": "invalid request"}]
            message = "; ".join(f"{e['field']}: {e['reason']}" for e in errors)
            return error_response(request.scope, 422, message, param=errors[0]["field"])
        return error_response(request.scope, 422, "invalid request", errors)
