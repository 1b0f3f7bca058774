"""One router per feature; each handler maps its wire schema to the backend and back."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from serve_app.http.errors import ClientError
from serve_app.http.security import OPEN, Principal
from serve_app.settings import Settings


async def backend(request: Request) -> Any:
    """The app's backend (FastAPI dependency). The dependencies are ``async`` because FastAPI runs a
    plain ``def`` dependency in its thread pool: a thread hop each, per request."""
    return request.app.state.backend


async def settings(request: Request) -> Settings:
    return request.app.state.settings


async def principal(request: Request) -> Principal:
    """Who the request acts for (set by the auth middleware; the open principal without auth)."""
    value = getattr(request.state, "principal", None)
    return value if isinstance(value, Principal) else OPEN


SettingsDep = Annotated[Settings, Depends(settings)]
BackendDep = Annotated[Any, Depends(backend)]
PrincipalDep = Annotated[Principal, Depends(principal)]


def check_query_length(query: str, s: Settings) -> None:
    """413 naming the setting for a query over ``limits.max_query_chars`` (every route taking one)."""
    limit = s.limits.max_query_chars
    if len(query) > limit:
        raise ClientError(413, f"query longer than {limit} characters (limits.max_query_chars)")
