"""One router per feature; each handler maps its wire schema to the backend and back."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from serve_app.settings import Settings


def backend(request: Request) -> Any:
    """The app's backend (FastAPI dependency)."""
    return request.app.state.backend


def settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(settings)]
BackendDep = Annotated[Any, Depends(backend)]
