"""``POST /v1/search``: the wire request to a ``SearchQuery``, the ``SearchOutcome`` back to JSON."""

from __future__ import annotations

from fastapi import APIRouter

from serve_app.core.contracts import ScoredResult
from serve_app.core.pipeline import SearchOutcome, SearchQuery
from serve_app.http.routes import BackendDep, PrincipalDep, SettingsDep, check_query_length
from serve_app.http.schemas import QueryVariant, SearchRequest, SearchResponse, SearchResult
from serve_app.settings import DataScope

router = APIRouter()


def to_query(body: SearchRequest, scope: DataScope | None = None) -> SearchQuery:
    return SearchQuery(
        query=body.query,
        top_k=body.top_k,
        filters=body.filters.model_dump(exclude_none=True) if body.filters else None,
        channels=tuple(body.channels) if body.channels else None,
        rerank=body.rerank,
        expand=body.expand,
        explain=body.explain,
        scope=scope,
    )


def to_result(r: ScoredResult, explain: bool) -> SearchResult:
    f = r.candidate.fields
    return SearchResult(
        rank=r.rank,
        chunk_id=r.candidate.chunk_id,
        doc_id=f["doc_id"],
        version=f["version"],
        title=f.get("title", ""),
        title_path=list(f.get("title_path") or []),
        text=f["text"],
        lang=f.get("lang", ""),
        kind=f.get("kind", ""),
        source=f.get("source", ""),
        tags=list(f.get("tags") or []),
        score=r.score,
        score_stage=r.score_stage,
        scores=r.scores,
        found_by=r.candidate.found_by if explain else [],
        updated_at=int(f.get("doc_updated_at") or f.get("updated_at") or 0),
    )


def to_response(outcome: SearchOutcome, model: str, explain: bool) -> SearchResponse:
    return SearchResponse(
        query=outcome.query,
        results=[to_result(r, explain) for r in outcome.results],
        variants=[QueryVariant.model_validate(v) for v in outcome.variants],
        timings_ms=outcome.timings_ms,
        model=model,
        degraded=outcome.degraded,
        explain=outcome.explain,
    )


@router.post("/v1/search", response_model=SearchResponse, summary="Hybrid search with rerank.")
async def search(body: SearchRequest, s: SettingsDep, b: BackendDep, who: PrincipalDep) -> SearchResponse:
    """A caller with a data scope searches only the documents it may read (its filters narrow
    further, they cannot widen it), and its glossary variants use only terms learned from them."""
    check_query_length(body.query, s)
    outcome = await b.pipeline.search(to_query(body, who.read))
    return to_response(outcome, (await b.model_info())["model"], body.explain)
