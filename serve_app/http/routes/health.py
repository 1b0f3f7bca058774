"""Liveness and readiness."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from serve_app.http.errors import one_line
from serve_app.http.routes import BackendDep, SettingsDep
from serve_app.http.schemas import ReadinessResponse

router = APIRouter()


def overall(checks: dict[str, dict[str, Any]]) -> str:
    """``unhealthy``: the model or Milvus is unusable; ``not_initialized``: nothing indexed yet;
    ``degraded``: Redis or the expander is down (searches still succeed); else ``healthy``."""
    state = {name: c.get("status") for name, c in checks.items()}
    if state["model"] != "ok" or state["milvus"] == "down":
        return "unhealthy"
    if state["milvus"] == "not_initialized":
        return "not_initialized"
    if state["redis"] not in ("ok", "disabled") or state["expander"] != "ok":
        return "degraded"
    return "healthy"


@router.get("/healthz", summary="Liveness: the ingress answers.")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness with per-dependency detail: healthy, degraded, unhealthy or not_initialized.",
    responses={
        200: {"model": ReadinessResponse, "description": "healthy or degraded"},
        503: {"model": ReadinessResponse, "description": "unhealthy or not_initialized"},
    },
)
async def readyz(s: SettingsDep, b: BackendDep) -> JSONResponse:
    """``healthy``: everything works. ``degraded`` (200): Redis or the expander is down; searches
    still succeed, slower or with fewer variants. ``unhealthy`` (503): the model or Milvus is
    unusable. ``not_initialized`` (503): nothing is indexed yet."""
    started = time.perf_counter()
    checks = {
        name: {**check, "detail": one_line(check["detail"])} if "detail" in check else check
        for name, check in (await b.readiness(s.serve.ready_timeout_s)).items()
    }
    state = overall(checks)
    body = {"status": state, "checks": checks, "ms": round((time.perf_counter() - started) * 1000, 2)}
    return JSONResponse(body, status_code=200 if state in ("healthy", "degraded") else 503)
