"""ASGI middleware of the HTTP API, configured by arguments (no class attributes, no globals)."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import MutableMapping
from typing import Any

from fastapi import HTTPException

from serve_app.http.errors import error_response, one_line

log = logging.getLogger("ray.serve.specrag.ingress")

# A client's X-Request-ID is kept when it is a plain token (UUIDs, ULIDs, trace ids); anything
# else (spaces, quotes, non-ASCII, over 128 characters) is replaced, as it ends up in logs.
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}")


class RequestId:
    """Gives every request an id and every response the ``X-Request-ID`` header; the outermost of
    the app's own middleware, so the auth and size refusals carry it too.

    The id is the client's ``X-Request-ID`` when sane, else a new one; it is put in
    ``scope["state"]["request_id"]`` for the error bodies. ``echo=False`` where a server in front
    already adds the header (Serve's HTTP server, the replica's own or its proxy, adds the client's
    or its own to every response; a second one would repeat it). An exception no handler took
    becomes a one-line 500 in the path's error shape, its traceback logged under the id.
    """

    def __init__(self, app: Any, echo: bool = True) -> None:
        self.app = app
        self.echo = echo

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        sent = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1").strip()
        rid = sent if SANE_REQUEST_ID.fullmatch(sent) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        started = False

        async def tagged(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if self.echo:
                    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                    message = {**message, "headers": [*headers, (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, tagged)
        except Exception as exc:
            log.exception("request %s: %s %s failed", rid, scope.get("method"), scope.get("path"))
            if started:
                raise
            message = one_line(exc) or type(exc).__name__
            await error_response(scope, 500, "internal error", message)(scope, receive, tagged)


class BodyLimit:
    """413 for bodies over the limit, declared or streamed (chunked bodies have no Content-Length)."""

    def __init__(self, app: Any, limit: int = 8 * 1024 * 1024) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            response = error_response(scope, 413, f"request body over {limit} bytes")
            return await response(scope, receive, send)
        received = 0

        async def counted() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise HTTPException(413, f"request body over {limit} bytes")
            return message

        return await self.app(scope, counted, send)
