"""``POST /v1/embed`` (dense, sparse, ColBERT, per-item errors) and OpenAI's ``POST /v1/embeddings``."""

from __future__ import annotations

import base64
import time
from typing import Any

import numpy as np
from fastapi import APIRouter

from serve_app.core.contracts import EmbedOutput, Truncate
from serve_app.core.encoder import InputTooLong
from serve_app.core.pipeline import EmbedderUnavailable
from serve_app.http.errors import BackendUnavailable, ClientError, OpenAIError, one_line
from serve_app.http.routes import BackendDep, SettingsDep
from serve_app.http.routes.models import embedding_names
from serve_app.http.schemas import (
    Embedding,
    EmbedRequest,
    EmbedResponse,
    OpenAIEmbedding,
    OpenAIEmbeddingRequest,
    OpenAIEmbeddingResponse,
    surrogate_at,
)
from serve_app.settings import Settings

router = APIRouter()


def item_problems(items: list[Any], s: Settings) -> dict[int, str]:
    """Per-item refusals of ``/v1/embed`` (413 for the whole request when an item is too long)."""
    lim = s.limits
    if not items:
        raise ClientError(422, "input is empty")
    if len(items) > lim.max_embed_items:
        raise ClientError(413, f"more than {lim.max_embed_items} items in one request")
    too_long = [i for i, t in enumerate(items) if isinstance(t, str) and len(t) > lim.max_item_chars]
    if too_long:
        raise ClientError(413, f"items longer than {lim.max_item_chars} characters", {"indices": too_long})
    problems = {
        i: "not a string"
        if not isinstance(t, str)
        else "empty or whitespace-only"
        if not t.strip()
        else f"lone UTF-16 surrogate at character {surrogate_at(t)}; send valid Unicode"
        for i, t in enumerate(items)
        if not isinstance(t, str) or not t.strip() or surrogate_at(t) is not None
    }
    if len(problems) == len(items):
        raise ClientError(422, "no valid items", [{"index": i, "reason": r} for i, r in problems.items()])
    return problems


def to_embedding(i: int, o: EmbedOutput, body: EmbedRequest, names: dict[int, str]) -> Embedding:
    return Embedding(
        index=i,
        dense=o["dense"].tolist() if body.return_dense else None,
        sparse={str(k): round(v, 6) for k, v in o["sparse"].items()} if body.return_sparse else None,
        sparse_tokens={names[k]: round(v, 6) for k, v in o["sparse"].items()} if body.return_tokens else None,
        colbert=o["colbert"].tolist() if body.return_colbert and o["colbert"] is not None else None,
        tokens=o["tokens"],
        truncated=o["truncated"],
        cached=o["cached"],
    )


@router.post("/v1/embed", response_model=EmbedResponse, summary="Dense, sparse and ColBERT outputs.")
async def embed(body: EmbedRequest, s: SettingsDep, b: BackendDep) -> EmbedResponse:
    """Invalid items (not a string, empty) are reported per item; the others are embedded."""
    items = body.texts()
    problems = item_problems(items, s)
    valid = [i for i in range(len(items)) if i not in problems]
    started = time.perf_counter()
    outputs = dict(
        zip(
            valid, await b.embed([items[i] for i in valid], body.input_type, body.return_colbert), strict=True
        )
    )
    elapsed = (time.perf_counter() - started) * 1000
    names: dict[int, str] = {}
    if body.return_tokens:
        ids = sorted({t for o in outputs.values() for t in o["sparse"]})
        names = dict(zip(ids, await b.token_strings(ids), strict=True))
    data = []
    for i in range(len(items)):
        o = outputs.get(i)
        error = problems.get(i) or (o["error"] if o else None)
        data.append(
            Embedding(index=i, error=error) if o is None or error else to_embedding(i, o, body, names)
        )
    tokens = sum(o["tokens"] for o in outputs.values())
    return EmbedResponse(
        model=(await b.model_info())["model"],
        data=data,
        usage={"prompt_tokens": tokens, "total_tokens": tokens},
        timings_ms={"embed": round(elapsed, 3)},
    )


def check_openai_request(body: OpenAIEmbeddingRequest, info: dict[str, Any], s: Settings) -> list[str]:
    """The texts of a valid request; an ``OpenAIError`` naming the parameter otherwise."""
    if body.model not in embedding_names(info, s):
        raise OpenAIError(
            404, f"model {body.model!r} is not served here; use {info['model']!r}", "model", "model_not_found"
        )
    if body.dimensions is not None and body.dimensions != info["dim"]:
        raise OpenAIError(422, f"dimensions must be {info['dim']} for this model", "dimensions")
    texts = [body.input] if isinstance(body.input, str) else body.input
    lim = s.limits
    if not texts:
        raise OpenAIError(422, "input must not be empty", "input")
    if len(texts) > lim.max_embed_items:
        raise OpenAIError(413, f"more than {lim.max_embed_items} inputs in one request", "input")
    for i, text in enumerate(texts):
        if not text.strip():
            raise OpenAIError(422, f"input[{i}] is empty or whitespace-only", "input")
        if (at := surrogate_at(text)) is not None:
            raise OpenAIError(422, f"input[{i}]: lone UTF-16 surrogate at character {at}", "input")
        if len(text) > lim.max_item_chars:
            raise OpenAIError(413, f"input[{i}] is longer than {lim.max_item_chars} characters", "input")
    return texts


def _unavailable(exc: Exception) -> OpenAIError:
    reason = exc.reason if isinstance(exc, BackendUnavailable) else "embedder unavailable"
    detail = one_line(exc.detail if isinstance(exc, BackendUnavailable) else exc)
    return OpenAIError(503, f"{reason}: {detail}" if detail else reason, code="service_unavailable")


# NIM's ``truncate`` values and the core's.
NIM_TRUNCATE: dict[str, Truncate] = {"END": "end", "START": "start", "NONE": "none"}


def _too_long(exc: InputTooLong) -> OpenAIError:
    """``truncate: NONE`` and an input over the window: 400 naming it and the limit (OpenAI's status
    for an over-long input)."""
    first = min(exc.over)
    return OpenAIError(
        400,
        f"input[{first}] has {exc.over[first]} tokens, over the model's limit of {exc.limit} tokens "
        f"({len(exc.over)} input(s) over it); send truncate END or START to cut it",
        "input",
        "context_length_exceeded",
    )


@router.post(
    "/v1/embeddings",
    response_model=OpenAIEmbeddingResponse,
    summary="OpenAI-compatible embeddings (dense vectors).",
    responses={404: {"description": "`model` is not the served model (code model_not_found)."}},
)
async def openai_embeddings(
    body: OpenAIEmbeddingRequest, s: SettingsDep, b: BackendDep
) -> OpenAIEmbeddingResponse:
    try:
        info = await b.model_info()
        texts = check_openai_request(body, info, s)
        input_type = "query" if body.input_type == "query" else "passage"  # document = passage
        outputs = await b.embed(texts, input_type, False, NIM_TRUNCATE[body.truncate])
    except InputTooLong as exc:
        raise _too_long(exc) from exc
    except (EmbedderUnavailable, BackendUnavailable) as exc:
        raise _unavailable(exc) from exc
    if failed := [i for i, o in enumerate(outputs) if o["error"]]:
        # Valid input the model still failed on: the embedder's fault, as on /v1/search (503).
        raise OpenAIError(
            503, f"input[{failed[0]}] failed: {outputs[failed[0]]['error']}", "input", "embedding_failed"
        )
    data = []
    for i, o in enumerate(outputs):
        vector = o["dense"].astype(np.float32)
        encoded = (
            base64.b64encode(vector.tobytes()).decode()
            if body.encoding_format == "base64"
            else vector.tolist()
        )
        data.append(OpenAIEmbedding(index=i, embedding=encoded, truncated=o["truncated"]))
    tokens = sum(o["tokens"] for o in outputs)
    return OpenAIEmbeddingResponse(
        data=data, model=info["model"], usage={"prompt_tokens": tokens, "total_tokens": tokens}
    )
