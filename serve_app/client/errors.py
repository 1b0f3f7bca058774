"""Typed exceptions of the client: one class per status family, each carrying status, reason, detail.

The service answers every refusal as ``{"error": reason, "detail": ...}``; ``error_for`` turns such
a response into the matching exception, so callers catch ``NotFound`` or ``RateLimited`` instead
of inspecting status codes.
"""

from __future__ import annotations

from typing import Any

import httpx


class SpecragError(Exception):
    """Anything the client raises."""


class TransportError(SpecragError):
    """No answer: the connection failed or timed out. ``sent``: the request may have reached the
    server (a write may have happened), which decides whether a non-idempotent call is resent."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class ConnectionFailed(TransportError):
    """The server could not be reached, or dropped the connection."""


class RequestTimeout(TransportError):
    """The server took longer than the client's timeout (not retried: asking again adds load)."""


class ApiError(SpecragError):
    """The service answered with an error status. ``request_id``: the service logs the refusal's
    details under it (quote it in a bug report); ``body``: the response body as parsed."""

    def __init__(
        self, status: int, reason: str, detail: Any = None, *, body: Any = None, request_id: str = ""
    ) -> None:
        super().__init__(f"{status} {reason}" + (f": {detail}" if detail not in (None, "", []) else ""))
        self.status, self.reason, self.detail, self.body = status, reason, detail, body
        self.request_id = request_id


class BadRequest(ApiError):
    """400: e.g. the vector store rejected the search."""


class Unauthorized(ApiError):
    """401: no key or an unknown key."""


class Forbidden(ApiError):
    """403: the key lacks the route's scope."""


class NotFound(ApiError):
    """404: e.g. no such document."""


class Conflict(ApiError):
    """409: e.g. the index was built with another model."""


class PayloadTooLarge(ApiError):
    """413: a query, document or body over the service's limits."""


class InvalidRequest(ApiError):
    """422: the body failed validation; ``detail`` lists each field and reason."""


class RateLimited(ApiError):
    """429: the key's rate limit; ``retry_after`` seconds until the window frees (not retried)."""

    retry_after: int | None = None


class ServiceUnavailable(ApiError):
    """503: a dependency (Milvus, the embedder, the indexer) is down; idempotent calls are retried."""


class ServerError(ApiError):
    """Any other 5xx."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: InvalidRequest,
    429: RateLimited,
    503: ServiceUnavailable,
}


def error_for(response: httpx.Response) -> ApiError:
    """The exception for an error response; a body that is not the service's shape is kept raw."""
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        reason, detail = body["error"], body.get("detail")
    else:
        reason, detail = response.reason_phrase or "error", body or None
    kind = _BY_STATUS.get(response.status_code) or (ServerError if response.status_code >= 500 else ApiError)
    request_id = response.headers.get("x-request-id", "")
    if isinstance(body, dict) and isinstance(body.get("request_id"), str):
        request_id = body["request_id"]
    error = kind(response.status_code, reason, detail, body=body, request_id=request_id)
    if isinstance(error, RateLimited) and response.headers.get("retry-after", "").isdigit():
        error.retry_after = int(response.headers["retry-after"])
    return error
