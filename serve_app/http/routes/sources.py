"""``POST /v1/sources/{name}/sync`` and ``GET /v1/sources[/{name}]``: git-driven increments.

A CI job or a git hook names a source the operator registered (``ingest.sources``) and a commit;
the request never carries a URL or a path. The Indexer reads what changed since the source's
last synced commit (``core.gitsource``).
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from serve_app.http.errors import ClientError
from serve_app.http.routes import BackendDep, PrincipalDep, SettingsDep
from serve_app.http.schemas import SourceStatus, SyncRequest
from serve_app.settings import Settings

router = APIRouter()


def _registered(name: str, s: Settings) -> None:
    if name not in s.ingest.sources:
        raise ClientError(404, f"no registered source {name!r}", sorted(s.ingest.sources)[:50])


@router.post(
    "/v1/sources/{name}/sync",
    response_model=SourceStatus,
    status_code=202,
    summary="Sync a registered git source to a commit (push-style trigger for CI jobs and git hooks).",
    responses={
        200: {
            "model": SourceStatus,
            "description": "With `wait`: the sync is done; `report` says what it did.",
        },
        404: {"description": "No source of that name is registered."},
        422: {"description": "The repository has no such commit."},
        503: {"description": "The repository or the index is unavailable."},
    },
)
async def sync_source(
    name: str, body: SyncRequest, response: Response, s: SettingsDep, b: BackendDep, who: PrincipalDep
) -> SourceStatus:
    """Reads only what ``git diff`` says changed since the last synced commit: added and modified
    files are written (unchanged chunks keep their vectors), deleted files deleted, renamed files
    moved. A trigger for a commit the source already synced past changes nothing. A caller whose
    write scope is restricted gets 403: a source writes whatever its repository holds."""
    _registered(name, s)
    if who.write is not None:
        raise ClientError(
            403, "syncing a source needs an unrestricted write scope (it writes a whole repository)"
        )
    out = await b.sync_source(name, body.commit, body.full, body.wait)
    if body.wait:
        response.status_code = 200
    return SourceStatus(**out)


@router.get(
    "/v1/sources", response_model=list[SourceStatus], summary="The registered sources and their state."
)
async def list_sources(s: SettingsDep, b: BackendDep) -> list[SourceStatus]:
    return [SourceStatus(**await b.source_status(name)) for name in sorted(s.ingest.sources)]


@router.get(
    "/v1/sources/{name}",
    response_model=SourceStatus,
    summary="A source's last synced commit and its newest trigger's state.",
    responses={404: {"description": "No source of that name is registered."}},
)
async def source_status(name: str, s: SettingsDep, b: BackendDep) -> SourceStatus:
    _registered(name, s)
    return SourceStatus(**await b.source_status(name))
