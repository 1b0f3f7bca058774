"""API keys, scopes and per-key rate limits for the HTTP API (an ASGI middleware in the ingress).

Keys are stored only as SHA-256 hex digests (``specrag keys create`` prints a new key once, with
the line to put into the settings). A request presents its key as ``Authorization: Bearer <key>``
or ``X-API-Key: <key>``. Health and API-docs routes are open. Paths are matched relative to the
ASGI ``root_path`` (Serve's route prefix), so ``/specrag/v1/search`` needs what ``/v1/search`` does.
Refusals come in the path's error shape (``errors.error_response``) with a stable ``code``.
With no keys configured (the embedded default) the API is open and unlimited; configure keys in
production.

Rate limits use the ``limits`` library's moving window, per key and per ingress replica (N
replicas admit up to N times the rate; size the limit accordingly).
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from serve_app.http.errors import error_response, route_path
from serve_app.settings import ApiKey, AuthSettings

OPEN_PATHS = ("/healthz", "/readyz", "/docs", "/openapi.json", "/redoc")
SCOPES = ("search", "ingest", "admin")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "sk-specrag-" + secrets.token_urlsafe(32)


def required_scope(method: str, path: str) -> str | None:
    """The scope a route needs; None for open routes."""
    if path in OPEN_PATHS or path.startswith("/docs/"):
        return None
    if path.startswith("/v1/documents"):
        return "ingest"
    if path in ("/v1/search", "/v1/embed", "/v1/embeddings"):
        return "search"
    if path == "/retrieval":  # Dify's External Knowledge API: a search under a profile
        return "search"
    # Reranking (Cohere/Jina, TEI) reads like a search; model metadata is what those clients ask first.
    if path in ("/v1/rerank", "/v2/rerank", "/rerank", "/v1/models", "/info"):
        return "search"
    return "admin"


def presented_key(headers: dict[bytes, bytes]) -> str | None:
    """The key of ``Authorization: Bearer <key>``, else of ``X-API-Key``; ``None`` if neither has one."""
    auth = headers.get(b"authorization", b"").decode("latin-1").strip()
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    key = headers.get(b"x-api-key", b"").decode("latin-1").strip()
    return key or None


@dataclass(slots=True)
class Decision:
    status: int = 200
    error: str = ""
    retry_after: int | None = None
    key_name: str = ""
    # missing_api_key, invalid_authorization_header, invalid_api_key, insufficient_scope,
    # rate_limit_exceeded (errors.DIFY_CODES numbers them for Dify)
    code: str | None = None


class Guard:
    """Authenticates, authorises and rate-limits one request; pure, so unit tests call it directly."""

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self.keys: dict[str, ApiKey] = {k.sha256.lower(): k for k in settings.keys}
        self.limiter = MovingWindowRateLimiter(MemoryStorage())
        self.limits = {
            k.name: RateLimitItemPerMinute(k.rate_per_minute or settings.rate_per_minute)
            for k in settings.keys
        }

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def check(self, method: str, path: str, headers: dict[bytes, bytes]) -> Decision:
        scope = required_scope(method, path)
        if scope is None or not self.enabled:
            return Decision()
        key = presented_key(headers)
        if key is None and headers.get(b"authorization", b"").strip():
            malformed = "invalid Authorization header format: expected 'Bearer <key>' (or send X-API-Key)"
            return Decision(401, malformed, code="invalid_authorization_header")
        if key is None:
            missing = "missing API key (Authorization: Bearer <key> or X-API-Key)"
            return Decision(401, missing, code="missing_api_key")
        entry = self.keys.get(hash_key(key))
        if entry is None:
            return Decision(401, "invalid API key", code="invalid_api_key")
        if scope not in entry.scopes and "admin" not in entry.scopes:
            lacks = f"key {entry.name!r} lacks the {scope!r} scope"
            return Decision(403, lacks, key_name=entry.name, code="insufficient_scope")
        item = self.limits[entry.name]
        if not self.limiter.hit(item, entry.name):
            reset, _ = self.limiter.get_window_stats(item, entry.name)
            retry = max(1, math.ceil(reset - time.time()))
            limited = f"rate limit of {item.amount}/minute exceeded"
            return Decision(429, limited, retry, entry.name, code="rate_limit_exceeded")
        return Decision(key_name=entry.name)


class AuthMiddleware:
    """ASGI: answers 401/403/429 before the app; the key's name goes to ``scope['state']``."""

    def __init__(self, app: Any, guard: Guard | None = None) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        guard = self.guard
        if scope["type"] != "http" or guard is None:
            await self.app(scope, receive, send)
            return
        decision = guard.check(scope["method"], route_path(scope), dict(scope.get("headers") or []))
        if decision.status == 200:
            scope.setdefault("state", {})["api_key"] = decision.key_name
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        if decision.status == 401:
            headers["www-authenticate"] = 'Bearer realm="specrag"'
        if decision.retry_after is not None:
            headers["retry-after"] = str(decision.retry_after)
        refusal = error_response(scope, decision.status, decision.error, headers=headers, code=decision.code)
        await refusal(scope, receive, send)
