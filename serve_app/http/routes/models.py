"""OpenAI's ``GET /v1/models`` and TEI's ``GET /info``: what is served, for clients that ask first.

Both read the Backend's ``model_info()`` (the Embedder's model) and the settings (the reranker).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request

from serve_app.http.routes import BackendDep, SettingsDep
from serve_app.http.schemas import InfoResponse, ModelCard, ModelList
from serve_app.settings import Settings

router = APIRouter()

# OpenAI's ``created`` is when a model was made available; here, when this replica's API came up.
STARTED = int(time.time())


def reranker_id(info: dict[str, Any], s: Settings) -> str:
    """The reranker's model id: the cross-encoder's when one is configured, else the served model
    (its ColBERT vectors rerank)."""
    return Path(s.search.cross_encoder).name if s.search.cross_encoder else info["model"]


def embedding_names(info: dict[str, Any], s: Settings) -> set[str]:
    """The names a request may give the embedding model as: its id, configured path, base name."""
    return {info["model"], s.model.name_or_path, Path(s.model.name_or_path).name}


def served_names(info: dict[str, Any], s: Settings) -> set[str]:
    """Every name a rerank request may give ``model`` as: the embedding model's, and the
    cross-encoder's (its configured path and base name) when one is configured."""
    names = embedding_names(info, s)
    if s.search.cross_encoder:
        names |= {s.search.cross_encoder, Path(s.search.cross_encoder).name}
    return names


@router.get("/v1/models", response_model=ModelList, summary="OpenAI-compatible list of the served models.")
async def list_models(s: SettingsDep, b: BackendDep) -> ModelList:
    """The embedding model, and the cross-encoder when one is configured (a distinct model)."""
    info = await b.model_info()
    ids = dict.fromkeys([info["model"], reranker_id(info, s)])
    return ModelList(data=[ModelCard(id=i, created=STARTED) for i in ids])


@router.get("/info", response_model=InfoResponse, summary="TEI-compatible model and limits.")
async def info(request: Request, s: SettingsDep, b: BackendDep) -> InfoResponse:
    """TEI's fields that apply (no tokenization workers, no Docker label), plus the dimension and
    the reranker."""
    model = await b.model_info()
    return InfoResponse(
        model_id=model["model"],
        model_sha=model.get("revision"),
        model_dtype=model.get("dtype", s.model.dtype),
        model_type={"embedding": {"pooling": model.get("pooling", s.model.pooling)}},
        max_input_length=model["max_length"],
        max_batch_tokens=s.batch.max_tokens_per_batch,
        max_batch_requests=s.batch.max_batch_size,
        max_client_batch_size=s.limits.max_embed_items,
        max_client_rerank_size=s.limits.max_rerank_documents,
        auto_truncate=True,
        dimension=model["dim"],
        reranker={
            "model_id": reranker_id(model, s),
            "method": "colbert+cross-encoder" if s.search.cross_encoder else "colbert",
        },
        version=request.app.version,
    )
