"""Calls between deployments that survive a replica dying under them.

When a replica process dies (OOM kill, node loss, ``kill -9``), the requests it held fail with
``RayActorError`` while Serve starts a replacement; the same call on another replica succeeds.
Only idempotent calls (embedding, reranking) go through here.
"""

from __future__ import annotations

from typing import Any, TypeVar

from ray.exceptions import RayActorError, RayTaskError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from serve_app.serving.observability import metric

E = TypeVar("E", bound=BaseException)


def find_cause(exc: BaseException, kind: type[E]) -> E | None:
    """Ray wraps a replica's exception (``RayTaskError.cause``); find one of ``kind`` in the chain.

    Ray's wrapper ``RayTaskError(X)`` is also an ``X``, but its ``str()`` is the whole remote
    traceback (ANSI colours, pid, node IP): it is looked past, to the replica's own ``X``."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind) and not isinstance(seen, RayTaskError):
            return seen
        seen = getattr(seen, "cause", None) or seen.__cause__
    return None


def root_cause(exc: BaseException) -> BaseException:
    """The exception a replica raised, out of Ray's wrappers (itself when it is not wrapped)."""
    seen = exc
    while isinstance(seen, RayTaskError) and isinstance(seen.cause, BaseException) and seen.cause is not seen:
        seen = seen.cause
    return seen


def replica_gone(exc: BaseException) -> bool:
    """The replica died or is unreachable (``ActorDiedError``, ``ActorUnavailableError``), not a
    failure of the call itself."""
    return find_cause(exc, RayActorError) is not None


async def call_idempotent(method: Any, *args: Any, attempts: int = 3) -> Any:
    """``await method.remote(*args)``, again on another replica if the first one died meanwhile."""
    async for attempt in AsyncRetrying(
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=0.2, max=2.0),
        retry=retry_if_exception(replica_gone),
        reraise=True,
    ):
        with attempt:
            if attempt.retry_state.attempt_number > 1:
                metric("replica_retries").inc()
            return await method.remote(*args)
    raise AssertionError("unreachable")  # pragma: no cover - reraise=True always returns or raises
