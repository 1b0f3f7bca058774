"""Probes: liveness (`/livez`, `/healthz`), readiness for writes (`/readyz/write`) and for searches
(`/readyz/search`), and the detailed readiness report (`/readyz`); docs/operations.md says which to use."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from serve_app.http.errors import one_line
from serve_app.http.routes import BackendDep, SettingsDep
from serve_app.http.schemas import ReadinessResponse
from serve_app.settings import Settings

router = APIRouter()


def overall(checks: dict[str, dict[str, Any]]) -> str:
    """``unhealthy``: the model or Milvus is unusable, or the API requires credentials but has none
    configured (every request would be refused); ``not_initialized``: nothing indexed yet;
    ``degraded``: Redis or the expander is down, or an auth file could not be applied (searches
    still succeed); else ``healthy``."""
    state = {name: c.get("status") for name, c in checks.items()}
    if state["model"] != "ok" or state["milvus"] == "down" or state.get("auth") == "down":
        return "unhealthy"
    if state["milvus"] == "not_initialized":
        return "not_initialized"
    if (
        state["redis"] not in ("ok", "disabled")
        or state["expander"] != "ok"
        or state.get("auth", "ok") != "ok"
    ):
        return "degraded"
    return "healthy"


@router.get("/healthz", summary="Liveness: the ingress answers (same as /livez).")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/livez", summary="Liveness: the ingress answers; restart the pod only when this fails.")
async def livez() -> dict[str, str]:
    """Answers from the ingress alone: a dependency that is down is a readiness matter, and a
    restart of this pod would not bring Milvus or the model back."""
    return {"status": "ok"}


async def _checks(s: Settings, b: Any, request: Request) -> tuple[dict[str, dict[str, Any]], float]:
    started = time.perf_counter()
    checks = {
        name: {**check, "detail": one_line(check["detail"])} if "detail" in check else check
        for name, check in (await b.readiness(s.serve.ready_timeout_s)).items()
    }
    guard = getattr(request.app.state, "guard", None)
    if guard is not None and guard.base.file is not None:
        error = guard.reload_error
        if guard.serves_no_one:
            checks["auth"] = {"status": "down", "detail": error or "no API keys or JWT settings configured"}
        else:
            checks["auth"] = {"status": "stale", "detail": error} if error else {"status": "ok"}
    return checks, round((time.perf_counter() - started) * 1000, 2)


_READINESS: dict[int | str, dict[str, Any]] = {
    200: {"model": ReadinessResponse, "description": "ready"},
    503: {"model": ReadinessResponse, "description": "not ready; checks say why"},
}


async def _probe(s: Settings, b: Any, request: Request, ready: tuple[str, ...]) -> JSONResponse:
    """The readiness report, 200 when its overall state is one of ``ready``, else 503."""
    checks, ms = await _checks(s, b, request)
    state = overall(checks)
    body = {"status": state, "checks": checks, "ms": ms}
    return JSONResponse(body, status_code=200 if state in ready else 503)


@router.get(
    "/readyz",
    summary="Readiness with per-dependency detail: healthy, degraded, unhealthy or not_initialized.",
    responses={
        200: {"model": ReadinessResponse, "description": "healthy or degraded"},
        503: {"model": ReadinessResponse, "description": "unhealthy or not_initialized"},
    },
)
async def readyz(s: SettingsDep, b: BackendDep, request: Request) -> JSONResponse:
    """``healthy``: everything works. ``degraded`` (200): Redis or the expander is down; searches
    still succeed, slower or with fewer variants. ``unhealthy`` (503): the model or Milvus is
    unusable. ``not_initialized`` (503): nothing is indexed yet (use ``/readyz/write`` to gate
    traffic to a fresh deployment)."""
    return await _probe(s, b, request, ("healthy", "degraded"))


@router.get("/readyz/write", summary="Ready for writes: the model and Milvus answer.", responses=_READINESS)
async def ready_for_writes(s: SettingsDep, b: BackendDep, request: Request) -> JSONResponse:
    """200 when ``POST /v1/documents`` can succeed: the model and Milvus answer, whether or not a
    collection exists yet (the first write creates it). The probe to gate a Kubernetes Service on."""
    return await _probe(s, b, request, ("healthy", "degraded", "not_initialized"))


@router.get(
    "/readyz/search",
    summary="Ready for searches: the model answers and a collection exists.",
    responses=_READINESS,
)
async def ready_for_searches(s: SettingsDep, b: BackendDep, request: Request) -> JSONResponse:
    """200 when a search can return results: as ``/readyz/write``, and the collection exists (the
    same states as ``/readyz``, under the name a probe configuration reads)."""
    return await _probe(s, b, request, ("healthy", "degraded"))
