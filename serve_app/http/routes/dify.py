"""``POST /retrieval``: Dify's External Knowledge API over the search pipeline.

``knowledge_id`` names a search profile (settings ``dify.profiles``); an unknown one is Dify's
2001. The profile's filters always apply; ``metadata_condition`` narrows them where it maps onto
the search's filter language (``is``/``in`` on source, kind, lang, doc_id; ``is``/``in``/
``contains`` on tag) and is refused with a 400 naming the condition where it does not (any other
operator, another field, ``or`` across fields): a condition that were dropped would widen the
answer behind the caller's back. ``score_threshold`` is compared with the pipeline's 0-1 score:
the rerank's similarity (profiles rerank by default), or the scaled fusion score where the rerank
is off or failed (``metadata.score_stage`` says which).
"""

from __future__ import annotations

from fastapi import APIRouter

from serve_app.core.pipeline import SearchOutcome, SearchQuery
from serve_app.http.dify_schemas import (
    DifyCondition,
    DifyMetadataCondition,
    DifyRecord,
    DifyRetrievalRequest,
    DifyRetrievalResponse,
)
from serve_app.http.errors import ClientError
from serve_app.http.routes import BackendDep, PrincipalDep, SettingsDep, check_query_length
from serve_app.http.routes.search import to_result
from serve_app.settings import DifyProfile

router = APIRouter()

# Dify's metadata names -> the search filter they map onto.
FIELDS = {
    "source": "sources",
    "kind": "kinds",
    "lang": "langs",
    "language": "langs",
    "doc_id": "doc_ids",
    "tag": "tags",
    "tags": "tags",
}
# A filter holds a set of values: a scalar field matches any of them, the tag filter matches chunks
# carrying any of them; so equality and membership map, and for tags so does "contains".
OPERATORS = {"scalar": ("in", "is"), "tags": ("contains", "in", "is")}
FILTERS = ("kinds", "langs", "tags", "sources", "doc_ids")


def condition_filter(c: DifyCondition) -> tuple[str, set[str]]:
    """The filter one condition maps onto and its values; a ``ClientError`` (400) if none does."""
    names = [c.name] if isinstance(c.name, str) else c.name
    if len(names) != 1:
        raise ClientError(400, "a condition must name exactly one metadata field", ", ".join(names) or "none")
    name, op = names[0], c.comparison_operator
    field = FIELDS.get(name)
    if field is None:
        raise ClientError(
            400, f"metadata field {name!r} cannot be filtered", f"filterable: {', '.join(FIELDS)}"
        )
    allowed = OPERATORS["tags" if field == "tags" else "scalar"]
    if op not in allowed:
        use = " or ".join(allowed)
        raise ClientError(400, f"operator {op!r} on {name!r} cannot be honoured", f"use {use}")
    value = c.value
    if op == "in" and isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]  # Dify's own convention for `in`
    if op == "in" and isinstance(value, list) and value:
        return field, set(value)
    if op != "in" and isinstance(value, str):
        return field, {value}
    wanted = "a non-empty list of strings" if op == "in" else "a string"
    raise ClientError(400, f"{name} {op}: value must be {wanted}", repr(value))


def both(field: str, a: set[str], b: set[str]) -> set[str]:
    """Two filters on one field joined by *and*, as one filter: for a scalar field the values both
    allow; for tags (any-of sets) only where one set holds the other, else it cannot be expressed."""
    if field != "tags":
        return a & b
    if a <= b or b <= a:
        return a if len(a) <= len(b) else b
    raise ClientError(
        400,
        "tag conditions joined by 'and' cannot be expressed",
        f"a chunk would need a tag of {sorted(a)} and one of {sorted(b)}; the tag filter matches any "
        "tag of one set",
    )


def request_filters(mc: DifyMetadataCondition | None) -> dict[str, set[str]]:
    """``metadata_condition`` as filter sets (joined by and); a 400 where it cannot be expressed."""
    pairs = [condition_filter(c) for c in (mc.conditions or [])] if mc else []
    if mc is not None and mc.logical_operator == "or" and pairs:
        fields = sorted({f for f, _ in pairs})
        if len(fields) > 1:  # named as the request names them
            names = sorted({c.name if isinstance(c.name, str) else c.name[0] for c in mc.conditions or []})
            across = ", ".join(names)
            raise ClientError(400, "'or' across different metadata fields cannot be expressed", across)
        return {fields[0]: set().union(*(values for _, values in pairs))}
    merged: dict[str, set[str]] = {}
    for field, values in pairs:
        merged[field] = both(field, merged[field], values) if field in merged else values
    return merged


def search_filters(profile: DifyProfile, mc: DifyMetadataCondition | None) -> dict[str, list[str]] | None:
    """The profile's filters and the request's, joined by and; ``None`` when they exclude each
    other (no chunk can match: the answer is no records, without a search)."""
    merged = request_filters(mc)
    for field in FILTERS:
        if (mine := getattr(profile, field)) is not None:
            merged[field] = both(field, set(mine), merged[field]) if field in merged else set(mine)
    if any(not values for values in merged.values()):
        return None
    return {field: sorted(values) for field, values in merged.items()}


def to_records(outcome: SearchOutcome, threshold: float) -> DifyRetrievalResponse:
    """Results at or above ``threshold`` as Dify's records; ``score`` is the pipeline's 0-1 score."""
    records = []
    for r in outcome.results:
        if r.score < threshold:
            continue
        hit = to_result(r, explain=False)
        metadata = hit.model_dump(exclude={"text", "found_by", "score", "scores", "title"})
        metadata["score_stage"] = r.score_stage
        records.append(
            DifyRecord(content=hit.text, score=r.score, title=hit.title or hit.doc_id, metadata=metadata)
        )
    return DifyRetrievalResponse(records=records)


@router.post(
    "/retrieval",
    response_model=DifyRetrievalResponse,
    summary="Dify's External Knowledge API: a search profile's chunks for a query.",
    responses={404: {"description": "error_code 2001: no search profile has this knowledge_id."}},
)
async def retrieval(
    body: DifyRetrievalRequest, s: SettingsDep, b: BackendDep, who: PrincipalDep
) -> DifyRetrievalResponse:
    """Records at most ``min(top_k, profile.max_top_k)``, best first, none under ``score_threshold``;
    only from documents the caller's read scope allows, whatever the profile says."""
    profile = s.dify.profiles.get(body.knowledge_id)
    if profile is None:
        missing = f"no search profile {body.knowledge_id!r}"
        raise ClientError(404, "The knowledge does not exist", missing, code="knowledge_not_found")
    check_query_length(body.query, s)
    filters = search_filters(profile, body.metadata_condition)
    if filters is None:
        return DifyRetrievalResponse(records=[])
    top_k = min(body.retrieval_setting.top_k, profile.max_top_k)
    query = SearchQuery(
        body.query, top_k, filters, rerank=profile.rerank, expand=profile.expand, scope=who.read
    )
    return to_records(await b.pipeline.search(query), body.retrieval_setting.score_threshold)
