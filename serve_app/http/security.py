"""Who a request acts for: API keys and JWTs, route scopes, data scopes, shared rate limits.

An ASGI middleware in the ingress. A request presents ``Authorization: Bearer <key or JWT>`` or
``X-API-Key: <key>``. Keys are stored only as SHA-256 hex digests (``specrag keys create`` prints
a new key once); JWTs are verified against the configured JWKS (``http/tokens.py``). Either
yields a ``Principal``: its route scopes (search, ingest, admin) and its data scopes (the
documents it may read, and write or delete), which the routes pass to the pipeline and the
Indexer. Health and API-docs routes are open. Paths are matched relative to the ASGI
``root_path`` (Serve's route prefix). Refusals come in the path's error shape with a stable
``code``. With neither keys nor JWT configured (the embedded default) the API is open.

Rotation without restarts: ``auth.file`` (a mounted Secret) is re-read when it changes, at most
every ``auth.reload_s``; a file that does not validate keeps the previous configuration (logged,
and reported by ``/readyz``). Only the Ingress reads it, so no model replica restarts.

Rate limits use the ``limits`` library's moving window per principal, counted in Redis when
``auth.shared_rate_limits`` and ``redis.url`` are set, so they hold across Ingress replicas. If
Redis fails, counting falls back to this replica (fail open, not closed: an outage of the cache
must not lock every client out), a circuit breaker stops trying for a while, responses carry
``X-RateLimit-Scope: replica`` and ``specrag_rate_limit_fallbacks_total`` counts it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import jwt
import pybreaker
import yaml
from limits import RateLimitItemPerMinute, storage
from limits.strategies import MovingWindowRateLimiter
from pydantic import ValidationError

from serve_app.http.errors import error_response, route_path
from serve_app.http.tokens import ROUTE_SCOPES, JwtVerifier, TokenRejected, looks_like_jwt
from serve_app.settings import ApiKey, AuthSettings, DataScope, RedisSettings

log = logging.getLogger("ray.serve.specrag.auth")

OPEN_PATHS = (
    "/healthz",
    "/livez",
    "/readyz",
    "/readyz/search",
    "/readyz/write",
    "/docs",
    "/openapi.json",
    "/redoc",
)
SCOPES = ROUTE_SCOPES  # one list of route scopes (tokens.py maps JWT claims onto it)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "sk-specrag-" + secrets.token_urlsafe(32)


def required_scope(method: str, path: str) -> str | None:
    """The scope a route needs; None for open routes."""
    if path in OPEN_PATHS or path.startswith("/docs/"):
        return None
    if path.startswith(("/v1/documents", "/v1/sources")):
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
    """The credential of ``Authorization: Bearer <x>``, else of ``X-API-Key``; ``None`` if neither."""
    auth = headers.get(b"authorization", b"").decode("latin-1").strip()
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    key = headers.get(b"x-api-key", b"").decode("latin-1").strip()
    return key or None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts for: a key or a token subject, what routes and what documents."""

    name: str  # the key's name, "jwt:<subject>", or "" for the open API
    scopes: frozenset[str]
    read: DataScope | None = None  # None: every document
    write: DataScope | None = None
    kind: Literal["key", "jwt", "open"] = "key"
    rate_per_minute: int = 600


OPEN = Principal("", frozenset(SCOPES), kind="open")


@dataclass(slots=True)
class Decision:
    status: int = 200
    error: str = ""
    retry_after: int | None = None
    principal: Principal = OPEN
    # missing_api_key, invalid_authorization_header, invalid_api_key, invalid_token,
    # insufficient_scope, rate_limit_exceeded (errors.DIFY_CODES numbers them for Dify)
    code: str | None = None
    shared_limit: bool = True  # False: Redis failed and this replica counted alone


@dataclass(slots=True)
class _Config:
    """One validated auth configuration; swapped whole when the file changes."""

    settings: AuthSettings
    keys: dict[str, ApiKey] = field(default_factory=dict)
    jwt: JwtVerifier | None = None

    @classmethod
    def of(cls, settings: AuthSettings) -> _Config:
        keys = {k.sha256.lower(): k for k in settings.keys}
        return cls(settings, keys, JwtVerifier(settings.jwt) if settings.jwt else None)


class RateLimiter:
    """Moving-window limits per principal, in Redis when given (shared by every replica), with a
    per-replica fallback while Redis fails (see the module docstring)."""

    def __init__(
        self,
        redis_url: str | None,
        timeout_s: float = 0.05,
        fail_max: int = 3,
        reset_s: float = 10.0,
        on_fallback: Callable[[], None] | None = None,
    ) -> None:
        """The Redis knobs are the embedding cache's (``redis.timeout_s``, ``breaker_*``)."""
        self.on_fallback = on_fallback
        self.local = MovingWindowRateLimiter(storage.MemoryStorage())
        self.shared: MovingWindowRateLimiter | None = None
        if redis_url:
            backend = storage.storage_from_string(
                redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, key_prefix="specrag-rl"
            )
            self.shared = MovingWindowRateLimiter(backend)
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=fail_max, reset_timeout=reset_s, name="rate-limit-redis"
        )
        self.fallbacks = 0

    def hit(self, amount: int, key: str) -> tuple[bool, float, bool]:
        """(admitted, window reset time, counted in Redis)."""
        item = RateLimitItemPerMinute(amount)
        if self.shared is not None:
            try:
                with self.breaker.calling():
                    admitted = self.shared.hit(item, key)
                    reset = self.shared.get_window_stats(item, key)[0] if not admitted else 0.0
                return admitted, reset, True
            except Exception as exc:  # Redis down or slow: count here, say so
                self.fallbacks += 1
                if not isinstance(exc, pybreaker.CircuitBreakerError):
                    log.warning("rate limits counted per replica: Redis failed (%s)", type(exc).__name__)
                if self.on_fallback is not None:
                    self.on_fallback()
        admitted = self.local.hit(item, key)
        reset = self.local.get_window_stats(item, key)[0] if not admitted else 0.0
        return admitted, reset, self.shared is None


class Guard:
    """Authenticates, authorises and rate-limits one request; pure apart from the limiter's
    storage and the reload of ``auth.file``, so unit tests call it directly."""

    def __init__(
        self,
        settings: AuthSettings,
        redis_url: str | None = None,
        on_fallback: Callable[[], None] | None = None,
        redis: RedisSettings | None = None,
    ) -> None:
        """``on_fallback``: called for each request counted per replica (a metric, in Serve);
        ``redis``: timeouts and breaker of the shared limits (defaults: ``RedisSettings()``)."""
        self.base = settings
        self.config = _Config.of(settings)
        r = redis or RedisSettings()
        self.limiter = RateLimiter(
            redis_url if settings.shared_rate_limits else None,
            timeout_s=r.timeout_s,
            fail_max=r.breaker_fail_max,
            reset_s=r.breaker_reset_s,
            on_fallback=on_fallback,
        )
        self.reload_error: str | None = None
        self._file_state: tuple[float, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self.reload(force=True)

    @property
    def serves_no_one(self) -> bool:
        """Credentials are required but none are configured (an auth file never applied, or one
        without keys or JWT settings): every protected request is refused."""
        c = self.config
        return self.enabled and not c.keys and c.jwt is None

    @property
    def enabled(self) -> bool:
        """Credentials are required: keys or JWTs configured, or an auth file named (fail closed:
        a missing or broken file never opens the API)."""
        c = self.config
        return bool(c.keys) or c.jwt is not None or self.base.file is not None

    def apply(self, settings: AuthSettings) -> None:
        """Use this configuration from the next request on (keys, JWT, limits)."""
        self.config = _Config.of(settings)

    def reload(self, force: bool = False) -> None:
        """Re-read ``auth.file`` if it changed (at most every ``reload_s``): its fields replace the
        configured ones. An unreadable or invalid file keeps the configuration in force."""
        path = self.base.file
        now = time.monotonic()
        if path is None or (not force and now - self._checked < self.base.reload_s):
            return
        with self._lock:
            self._checked = now
            try:
                stat = path.stat()
                state = (stat.st_mtime, stat.st_size)
                if state == self._file_state and not force:
                    return
                loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
                if not isinstance(loaded, dict):
                    raise ValueError("the file must hold a mapping of auth settings")
                merged = {**self.base.model_dump(exclude={"file", "reload_s"}), **loaded}
                self.apply(
                    AuthSettings.model_validate({**merged, "file": path, "reload_s": self.base.reload_s})
                )
                self._file_state = state
                self.reload_error = None
                log.info("auth configuration loaded from %s", path)
            except (OSError, ValueError, ValidationError, yaml.YAMLError, jwt.PyJWTError) as exc:
                self.reload_error = f"{path}: {_reason(exc)}"
                log.error("auth file not applied, the previous configuration stays: %s", self.reload_error)

    def _principal(self, credential: str) -> Principal | Decision:
        c = self.config
        if c.jwt is not None and looks_like_jwt(credential):
            try:
                claims = c.jwt.claims(credential)
                return Principal(
                    name=f"jwt:{claims.get(c.jwt.settings.name_claim, '?')}",
                    scopes=frozenset(c.jwt.route_scopes(claims)),
                    read=c.jwt.data_scope(claims, c.jwt.settings.read_claim),
                    write=c.jwt.data_scope(claims, c.jwt.settings.write_claim),
                    kind="jwt",
                    rate_per_minute=c.settings.rate_per_minute,
                )
            except TokenRejected as exc:
                return Decision(401, str(exc), code="invalid_token")
        entry = c.keys.get(hash_key(credential))
        if entry is None:
            return Decision(401, "invalid API key", code="invalid_api_key")
        return Principal(
            name=entry.name,
            scopes=frozenset(entry.scopes),
            read=entry.read,
            write=entry.write,
            rate_per_minute=entry.rate_per_minute or c.settings.rate_per_minute,
        )

    def check(self, method: str, path: str, headers: dict[bytes, bytes]) -> Decision:
        scope = required_scope(method, path)
        if scope is None:  # open routes (probes) never wait for, or fail on, a reload
            return Decision()
        self.reload()
        if not self.enabled:
            return Decision()
        credential = presented_key(headers)
        if credential is None and headers.get(b"authorization", b"").strip():
            malformed = "invalid Authorization header format: expected 'Bearer <key>' (or send X-API-Key)"
            return Decision(401, malformed, code="invalid_authorization_header")
        if credential is None:
            missing = "missing API key (Authorization: Bearer <key or JWT> or X-API-Key)"
            return Decision(401, missing, code="missing_api_key")
        who = self._principal(credential)
        if isinstance(who, Decision):
            return who
        if scope not in who.scopes and "admin" not in who.scopes:
            lacks = f"{'token' if who.kind == 'jwt' else 'key'} {who.name!r} lacks the {scope!r} scope"
            return Decision(403, lacks, principal=who, code="insufficient_scope")
        admitted, reset, shared = self.limiter.hit(who.rate_per_minute, who.name)
        if not admitted:
            retry = max(1, math.ceil(reset - time.time()))
            limited = f"rate limit of {who.rate_per_minute}/minute exceeded"
            return Decision(429, limited, retry, who, code="rate_limit_exceeded", shared_limit=shared)
        return Decision(principal=who, shared_limit=shared)

    def needs_thread(self, headers: dict[bytes, bytes]) -> bool:
        """The check may block on the network (a JWT against a JWKS URL, or Redis)."""
        c = self.config
        credential = presented_key(headers) or ""
        return (c.jwt is not None and c.jwt.fetches_keys and looks_like_jwt(credential)) or (
            self.limiter.shared is not None
        )


def _reason(exc: Exception) -> str:
    """One line naming what is wrong: each invalid field for a validation error."""
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())[:300]
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__


class AuthMiddleware:
    """ASGI: answers 401/403/429 before the app; the principal goes to ``scope['state']``."""

    def __init__(self, app: Any, guard: Guard | None = None) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        guard = self.guard
        if scope["type"] != "http" or guard is None:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        args = (scope["method"], route_path(scope), headers)
        protected = required_scope(args[0], args[1]) is not None
        if protected and guard.enabled and guard.needs_thread(headers):  # probes never take a thread
            decision = await asyncio.to_thread(guard.check, *args)
        else:
            decision = guard.check(*args)
        extra: dict[str, str] = {} if decision.shared_limit else {"x-ratelimit-scope": "replica"}
        if decision.status == 200:
            state = scope.setdefault("state", {})
            state["principal"] = decision.principal
            state["api_key"] = decision.principal.name
            await self.app(scope, receive, _with_headers(send, extra) if extra else send)
            return
        headers_out = dict(extra)
        if decision.status == 401:
            headers_out["www-authenticate"] = 'Bearer realm="specrag"'
        if decision.retry_after is not None:
            headers_out["retry-after"] = str(decision.retry_after)
        refusal = error_response(
            scope, decision.status, decision.error, headers=headers_out, code=decision.code
        )
        await refusal(scope, receive, send)


def _with_headers(send: Any, extra: dict[str, str]) -> Any:
    async def sending(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = {
                **message,
                "headers": [
                    *message.get("headers", []),
                    *((k.encode(), v.encode()) for k, v in extra.items()),
                ],
            }
        await send(message)

    return sending
