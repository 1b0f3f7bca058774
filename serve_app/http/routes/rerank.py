"""Rerank arbitrary texts: Cohere's and Jina's ``POST /v1/rerank`` (and Cohere v2's ``/v2/rerank``)
and text-embeddings-inference's ``POST /rerank``.

Both go through the Backend's ``rerank`` (the Reranker deployment: ColBERT MaxSim, plus the
cross-encoder when configured) and differ only in their wire: Cohere/Jina answer the relevance in
[0, 1] (``serve_app.core.rerank.relevance``) and cut over-long documents; TEI answers the
relevance or, with ``raw_scores``, the raw score, and refuses over-long texts unless ``truncate``.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter

from serve_app.core.contracts import TextScore, Truncate
from serve_app.core.encoder import InputTooLong
from serve_app.http.errors import ClientError
from serve_app.http.routes import BackendDep, SettingsDep, check_query_length
from serve_app.http.routes.models import reranker_id, served_names
from serve_app.http.schemas import (
    RerankMeta,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankResultDocument,
    TEIRank,
    TEIRerankRequest,
)
from serve_app.settings import Settings

router = APIRouter()


def check_limits(query: str, texts: list[str], s: Settings, field: str) -> None:
    """413 naming the setting when the request is over a limit (``field``: the texts' wire name)."""
    check_query_length(query, s)
    lim = s.limits
    if len(texts) > lim.max_rerank_documents:
        raise ClientError(
            413, f"more than {lim.max_rerank_documents} {field} in one request (limits.max_rerank_documents)"
        )
    if too_long := [i for i, t in enumerate(texts) if len(t) > lim.max_rerank_document_chars]:
        raise ClientError(
            413,
            f"{field} longer than {lim.max_rerank_document_chars} characters "
            "(limits.max_rerank_document_chars)",
            {"indices": too_long},
        )


async def rerank_texts(
    b: Any, query: str, texts: list[str], truncate: Truncate, field: str
) -> list[TextScore]:
    """The Backend's scores; a text refused as too long is named by its wire ``field``."""
    try:
        return await b.rerank(query, texts, truncate)
    except InputTooLong as exc:
        what = field if exc.what == "documents" else exc.what
        hint = "set truncate: true to cut it" if field == "texts" else "shorten it"
        raise ClientError(413, f"{InputTooLong(exc.over, exc.limit, what)}; {hint}") from exc


@router.post(
    "/v1/rerank",
    response_model=RerankResponse,
    response_model_exclude_none=True,
    summary="Cohere/Jina-compatible rerank: documents scored against a query, relevance in [0, 1].",
    responses={404: {"description": "`model` names neither the served model nor the reranker."}},
)
@router.post(
    "/v2/rerank",
    response_model=RerankResponse,
    response_model_exclude_none=True,
    summary="Cohere v2's path of the same rerank (cohere.ClientV2 posts here).",
    responses={404: {"description": "`model` names neither the served model nor the reranker."}},
)
async def rerank(body: RerankRequest, s: SettingsDep, b: BackendDep) -> RerankResponse:
    """Best first; documents over the model's token window are cut at their end (listed in
    ``meta.truncated``), as Cohere cuts them to ``max_tokens_per_doc``."""
    info = await b.model_info()
    if body.model is not None and body.model not in served_names(info, s):
        names = ", ".join(sorted({info["model"], reranker_id(info, s)}))
        raise ClientError(404, f"model {body.model!r} is not served here; use one of: {names}")
    window = info["max_length"]
    if body.max_tokens_per_doc is not None and body.max_tokens_per_doc < window:
        raise ClientError(
            422, f"max_tokens_per_doc below the model's window of {window} tokens is not supported"
        )
    texts = body.texts()
    check_limits(body.query, texts, s, "documents")
    scored = await rerank_texts(b, body.query, texts, "end", "documents")
    results = [
        RerankResult(
            index=t["index"],
            relevance_score=t["relevance"],
            document=RerankResultDocument(text=texts[t["index"]]) if body.return_documents else None,
        )
        for t in scored[: body.top_n]
    ]
    truncated = sorted(t["index"] for t in scored if t["truncated"])
    tokens = sum(t["tokens"] for t in scored)
    cut = f"{len(truncated)} document(s) cut to the model's window of {window} tokens"
    warnings = [cut] if truncated else []
    return RerankResponse(
        id=str(uuid.uuid4()),
        model=reranker_id(info, s),
        results=results,
        meta=RerankMeta(tokens={"input_tokens": tokens}, truncated=truncated, warnings=warnings),
        usage={"total_tokens": tokens},
    )


@router.post(
    "/rerank",
    response_model=list[TEIRank],
    response_model_exclude_none=True,
    summary="TEI-compatible rerank: [{index, score, text?}], best first.",
)
async def tei_rerank(body: TEIRerankRequest, s: SettingsDep, b: BackendDep) -> list[TEIRank]:
    """``score`` is the relevance in [0, 1], or the raw score with ``raw_scores``; a text over the
    model's window is a 413 naming the limit unless ``truncate`` (then cut on the
    ``truncation_direction`` side: Right = its end, Left = its start)."""
    check_limits(body.query, body.texts, s, "texts")
    side: Truncate = "start" if body.truncation_direction.lower() == "left" else "end"
    scored = await rerank_texts(b, body.query, body.texts, side if body.truncate else "none", "texts")
    return [
        TEIRank(
            index=t["index"],
            score=t["score"] if body.raw_scores else t["relevance"],
            text=body.texts[t["index"]] if body.return_text else None,
        )
        for t in scored
    ]
