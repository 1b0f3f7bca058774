"""HTTP ingress: validation, errors, timings; it orchestrates the graph and holds no model."""

import asyncio
import base64
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.core.chunking import detect_lang
from serve_app.core.ingest import ModelMismatch
from serve_app.core.store import StoreUnavailable
from serve_app.http.schemas import (
    DeleteResponse,
    DocumentInfo,
    DocumentsRequest,
    DocumentsResponse,
    Embedding,
    EmbedRequest,
    EmbedResponse,
    OpenAIEmbedding,
    OpenAIEmbeddingRequest,
    OpenAIEmbeddingResponse,
    SearchRequest,
    SearchResponse,
    SearchResult,
    surrogate_at,
)
from serve_app.http.security import AuthMiddleware, Guard
from serve_app.serving.handles import call_idempotent, find_cause
from serve_app.serving.observability import RequestMetrics, metric, observe_stages
from serve_app.settings import Settings

# A child of Serve's logger: with ``logging_config: {encoding: JSON}`` every line is JSON with the
# request id, route and our ``extra`` fields (durations, stage timings).
log = logging.getLogger("ray.serve.specrag.ingress")

api = FastAPI(
    title="specrag",
    version="0.1.0",
    description="Retrieval over living ja/en system-development knowledge (BGE-M3 + Milvus on Ray Serve).",
)


class ClientError(Exception):
    def __init__(self, status: int, reason: str, detail: Any = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.detail = status, reason, detail


def _embedder_unavailable(exc: BaseException) -> ClientError:
    log.exception("embedder call failed")
    return ClientError(503, "embedder unavailable", str(exc).splitlines()[0][:300] if str(exc) else None)


class OpenAIError(Exception):
    """An error in OpenAI's shape, so OpenAI client libraries show its message."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def _openai_body(message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


@api.exception_handler(OpenAIError)
async def _openai_error(_: Request, exc: OpenAIError) -> JSONResponse:
    return JSONResponse(_openai_body(exc.message, exc.param, exc.code), status_code=exc.status)


@api.exception_handler(ClientError)
async def _client_error(_: Request, exc: ClientError) -> JSONResponse:
    return JSONResponse({"error": exc.reason, "detail": exc.detail}, status_code=exc.status)


def _parse_error(exc: BaseException) -> str | None:
    """Name why a body could not be parsed; FastAPI only says "There was an error parsing the body"."""
    cause = exc.__cause__
    if isinstance(cause, UnicodeDecodeError):
        return f"request body is not valid UTF-8 (byte {cause.start}: {cause.reason})"
    if isinstance(cause, RecursionError):
        return "request body is nested too deeply"
    return None


# Starlette's class, so its own 404/405 and FastAPI's body-parse 400 get the same {"error": ...} shape.
@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    reason = (exc.status_code == 400 and _parse_error(exc)) or exc.detail
    return JSONResponse({"error": reason}, status_code=exc.status_code, headers=exc.headers)


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [
        {"field": ".".join(str(p) for p in e.get("loc", ())[1:]) or "body", "reason": e.get("msg")}
        for e in exc.errors()
    ]
    if request.url.path.endswith("/v1/embeddings"):
        first = errors[0] if errors else {"field": "body", "reason": "invalid request"}
        return JSONResponse(
            _openai_body(f"{first['field']}: {first['reason']}", first["field"]), status_code=422
        )
    return JSONResponse({"error": "invalid request", "detail": errors}, status_code=422)


class BodyLimit:
    """413 for bodies over the limit, declared or streamed (chunked bodies have no Content-Length)."""

    limit = 8 * 1024 * 1024  # set from settings when the ingress starts

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = BodyLimit.limit
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            response = JSONResponse({"error": f"request body over {limit} bytes"}, status_code=413)
            return await response(scope, receive, send)
        received = 0

        async def counted() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise HTTPException(413, f"request body over {limit} bytes")
            return message

        return await self.app(scope, counted, send)


# Starlette runs the last added outermost: count every response, then authenticate, then size.
api.add_middleware(BodyLimit)
api.add_middleware(AuthMiddleware)
api.add_middleware(RequestMetrics)


@serve.deployment(name="Ingress", max_ongoing_requests=256)
@serve.ingress(api)
class Ingress:
    def __init__(
        self,
        settings: Settings,
        expander: DeploymentHandle,
        embedder: DeploymentHandle,
        searcher: DeploymentHandle,
        reranker: DeploymentHandle,
        indexer: DeploymentHandle,
    ) -> None:
        self.settings = settings
        self.expander, self.embedder, self.searcher, self.reranker = expander, embedder, searcher, reranker
        self.indexer = indexer
        self.model_info: dict[str, Any] | None = None
        BodyLimit.limit = settings.limits.max_body_bytes
        AuthMiddleware.guard = Guard(settings.auth)
        RequestMetrics.enabled = True

    def check_health(self) -> None:
        """Holds no model or connection of its own; /readyz reports the dependencies."""

    async def _info(self) -> dict[str, Any]:
        if self.model_info is None:
            try:
                self.model_info = await self.embedder.info.remote()
            except Exception as exc:
                raise _embedder_unavailable(exc) from exc
        return self.model_info

    async def _model(self) -> str:
        return (await self._info())["model"]

    @api.get("/healthz", summary="Liveness: the ingress answers.")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get(
        "/readyz",
        summary="Readiness with per-dependency detail: healthy, degraded, unhealthy or not_initialized.",
        responses={503: {"description": "unhealthy or not_initialized"}},
    )
    async def readyz(self) -> JSONResponse:
        """``healthy``: everything works. ``degraded`` (200): Redis or the expander is down; searches
        still succeed, slower or with fewer variants. ``unhealthy`` (503): the model or Milvus is
        unusable. ``not_initialized`` (503): nothing is indexed yet."""
        timeout = self.settings.serve.ready_timeout_s
        started = time.perf_counter()

        async def ask(response: Any) -> dict[str, Any]:
            try:
                return await asyncio.wait_for(response, timeout + 1)
            except TimeoutError:
                return {"status": "down", "detail": f"no answer in {timeout + 1} s"}
            except Exception as exc:
                return {"status": "down", "detail": f"{type(exc).__name__}: {str(exc)[:200]}"}

        embedder, milvus, expander = await asyncio.gather(
            ask(self.embedder.ready.remote(timeout)),
            ask(self.searcher.ready.remote()),
            ask(self.expander.ready.remote()),
        )
        checks = {
            "model": embedder.get("model", embedder),
            "redis": embedder.get("redis", {"status": "unknown"}),
            "milvus": milvus,
            "expander": expander,
        }
        state = {name: c.get("status") for name, c in checks.items()}
        if state["model"] != "ok" or state["milvus"] == "down":
            overall = "unhealthy"
        elif state["milvus"] == "not_initialized":
            overall = "not_initialized"
        elif state["redis"] not in ("ok", "disabled") or state["expander"] != "ok":
            overall = "degraded"
        else:
            overall = "healthy"
        body = {"status": overall, "checks": checks, "ms": round((time.perf_counter() - started) * 1000, 2)}
        return JSONResponse(body, status_code=200 if overall in ("healthy", "degraded") else 503)

    @api.post("/v1/search", response_model=SearchResponse, summary="Hybrid search with rerank.")
    async def search(self, body: SearchRequest) -> SearchResponse:
        s = self.settings
        top_k = body.top_k or s.search.top_k
        if len(body.query) > s.limits.max_query_chars:
            raise ClientError(413, f"query longer than {s.limits.max_query_chars} characters")
        rerank = s.search.rerank if body.rerank is None else body.rerank
        degraded: list[str] = []
        t0 = time.perf_counter()
        expansion: dict[str, Any] = {}
        try:
            expansion = await self.expander.expand.remote(body.query, body.expand)
            variants = expansion["variants"]
        except Exception as exc:
            log.exception("expander failed; searching the original query only")
            variants = [{"text": body.query, "lang": detect_lang(body.query), "origin": "original"}]
            expansion = {"llm": "error", "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
            degraded.append("expander")
            metric("expander_fallbacks").inc(tags={"reason": type(exc).__name__})
        if expansion.get("llm") == "fallback":
            degraded.append("expander")
        t1 = time.perf_counter()
        log.info(
            "query_expansion_completed",
            extra={
                "duration_ms": round((t1 - t0) * 1000, 2),
                "variants": len(variants),
                "fallback": bool(degraded),
            },
        )
        vectors = await self._embed([v["text"] for v in variants], "query")
        if vectors[0]["error"]:
            raise ClientError(503, "the embedder failed on the query", vectors[0]["error"])
        kept = [i for i, v in enumerate(vectors) if not v["error"]]  # a failed variant is dropped
        variants, vectors = [variants[i] for i in kept], [vectors[i] for i in kept]
        t2 = time.perf_counter()
        pool = max(top_k, s.search.rerank_candidates) if rerank else top_k
        try:
            found = await self.searcher.search.remote(
                [
                    {"dense": v["dense"], "sparse": v["sparse"], "origin": var["origin"], "lang": var["lang"]}
                    for v, var in zip(vectors, variants, strict=True)
                ],
                top_k=top_k,
                channels=body.channels,
                filters=body.filters.model_dump(exclude_none=True) if body.filters else None,
                limit=pool,
                explain=body.explain,
            )
        except Exception as exc:
            if (unavailable := find_cause(exc, StoreUnavailable)) is not None:
                raise ClientError(503, "vector store unavailable", str(unavailable)) from exc
            if (rejected := find_cause(exc, ValueError)) is not None:
                raise ClientError(400, "the vector store rejected the search", str(rejected)) from exc
            raise
        t3 = time.perf_counter()
        log.info(
            "parallel_vector_search_completed",
            extra={
                "duration_ms": round(found["timings_ms"]["search"], 2),
                "searches": found["searches"],
                "candidates": len(found["candidates"]),
            },
        )
        candidates = found["candidates"]
        reranked = False
        if rerank and candidates:
            try:
                candidates = await self.reranker.rerank.remote(body.query, candidates)
                reranked = True
            except Exception:
                log.exception("reranker failed; returning the fused order")
                degraded.append("rerank")
                metric("degraded").inc(tags={"stage": "rerank"})
        t4 = time.perf_counter()
        timings = {
            "expand": (t1 - t0) * 1000,
            "embed": (t2 - t1) * 1000,
            "search": found["timings_ms"]["search"],
            "versions": found["timings_ms"]["versions"],
            "fuse": found["timings_ms"]["fuse"],
            "rerank": (t4 - t3) * 1000 if rerank else 0.0,
            "total": (t4 - t0) * 1000,
        }
        results = []
        for rank, cand in enumerate(candidates[:top_k], start=1):
            f = cand.fields
            scores = {"rrf": cand.rrf, **cand.channel_scores}
            results.append(
                SearchResult(
                    rank=rank,
                    chunk_id=cand.chunk_id,
                    doc_id=f["doc_id"],
                    version=f["version"],
                    title=f.get("title", ""),
                    title_path=list(f.get("title_path") or []),
                    text=f["text"],
                    lang=f.get("lang", ""),
                    kind=f.get("kind", ""),
                    source=f.get("source", ""),
                    tags=list(f.get("tags") or []),
                    score=scores["rerank"] if reranked else cand.rrf,
                    scores=scores,
                    found_by=cand.found_by if body.explain else [],
                    updated_at=int(f.get("doc_updated_at") or f.get("updated_at") or 0),
                )
            )
        observe_stages(timings)
        log.info(
            "retrieval_completed",
            extra={
                "duration_ms": round(timings["total"], 2),
                "timings_ms": {k: round(v, 2) for k, v in timings.items()},
                "results": len(results),
                "degraded": degraded,
            },
        )
        return SearchResponse(
            query=body.query,
            results=results,
            variants=variants,
            timings_ms={k: round(v, 2) for k, v in timings.items()},
            model=await self._model(),
            degraded=degraded,
            explain=(
                {
                    "expansion": {k: v for k, v in expansion.items() if k != "variants"},
                    "searches": found["timings_ms"].get("plan", []),
                    "slowest_search_ms": {
                        ch: round(found["timings_ms"][f"search_{ch}"], 2)
                        for ch in ("dense", "sparse")
                        if f"search_{ch}" in found["timings_ms"]
                    },
                    "rerank": "on" if reranked else ("failed" if "rerank" in degraded else "off"),
                }
                if body.explain
                else None
            ),
        )

    # ---------------------------------------------------------------------------------- documents

    async def _indexer_call(self, call: Any) -> Any:
        try:
            return await call
        except Exception as exc:
            if (unavailable := find_cause(exc, StoreUnavailable)) is not None:
                raise ClientError(503, "vector store unavailable", str(unavailable)) from exc
            if (mismatch := find_cause(exc, ModelMismatch)) is not None:
                raise ClientError(409, "the index was built with another model", str(mismatch)) from exc
            log.exception("indexer call failed")
            raise ClientError(503, "indexer unavailable", str(exc).splitlines()[0][:300] or None) from exc

    @api.post(
        "/v1/documents",
        response_model=DocumentsResponse,
        summary="Add or update documents (idempotent: unchanged documents are not re-embedded).",
    )
    async def put_documents(self, body: DocumentsRequest) -> DocumentsResponse:
        """A known ``doc_id`` gets a new version; only chunks whose content changed are embedded.

        Searches see the old version until the new one is completely written, then only the new
        one. A document whose chunks fail to embed is listed in ``failed`` and keeps its stored
        version; the others are written.
        """
        lim = self.settings.limits
        if len(body.documents) > lim.max_documents:
            raise ClientError(413, f"at most {lim.max_documents} documents per request")
        ids = [d.doc_id for d in body.documents]
        if len(set(ids)) != len(ids):
            raise ClientError(422, "a doc_id appears twice in this request")
        if too_long := [d.doc_id for d in body.documents if len(d.text) > lim.max_document_chars]:
            raise ClientError(
                413, f"documents longer than {lim.max_document_chars} characters", too_long[:10]
            )
        docs = [{**d.model_dump(exclude={"format"}), "fmt": d.format} for d in body.documents]
        report = await self._indexer_call(self.indexer.upsert.remote(docs))
        if report["failed"] and len(report["failed"]) == len(docs) and not report["unchanged"]:
            raise ClientError(503, "no document could be embedded", report["failed"][:10])
        return DocumentsResponse(**{k: v for k, v in report.items() if k in DocumentsResponse.model_fields})

    @api.get(
        "/v1/documents/{doc_id:path}", response_model=DocumentInfo, summary="A document's current version."
    )
    async def get_document(self, doc_id: str) -> DocumentInfo:
        info = await self._indexer_call(self.indexer.get.remote(doc_id))
        if info is None:
            raise ClientError(404, f"no document {doc_id!r}")
        return DocumentInfo(**info)

    @api.delete(
        "/v1/documents/{doc_id:path}",
        response_model=DeleteResponse,
        summary="Remove a document (idempotent).",
    )
    async def delete_document(self, doc_id: str) -> DeleteResponse:
        return DeleteResponse(**await self._indexer_call(self.indexer.delete.remote([doc_id])))

    async def _embed(self, texts: list[str], input_type: str, colbert: bool = False) -> list[dict[str, Any]]:
        try:
            return await call_idempotent(self.embedder.embed, texts, input_type, colbert)
        except Exception as exc:
            raise _embedder_unavailable(exc) from exc

    @api.post("/v1/embed", response_model=EmbedResponse, summary="Dense, sparse and ColBERT outputs.")
    async def embed(self, body: EmbedRequest) -> EmbedResponse:
        """Invalid items (not a string, empty) are reported per item; the others are embedded."""
        items = body.texts()
        lim = self.settings.limits
        if not items:
            raise ClientError(422, "input is empty")
        if len(items) > lim.max_embed_items:
            raise ClientError(413, f"more than {lim.max_embed_items} items in one request")
        too_long = [i for i, t in enumerate(items) if isinstance(t, str) and len(t) > lim.max_item_chars]
        if too_long:
            raise ClientError(
                413, f"items longer than {lim.max_item_chars} characters", {"indices": too_long}
            )
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
        valid = [i for i in range(len(items)) if i not in problems]
        started = time.perf_counter()
        embedded = await self._embed([items[i] for i in valid], body.input_type, body.return_colbert)
        outputs = dict(zip(valid, embedded, strict=True))
        elapsed = (time.perf_counter() - started) * 1000
        token_names: dict[int, str] = {}
        if body.return_tokens:
            ids = sorted({t for o in outputs.values() for t in o["sparse"]})
            try:
                names = await self.embedder.token_strings.remote(ids)
            except Exception as exc:
                raise _embedder_unavailable(exc) from exc
            token_names = dict(zip(ids, names, strict=True))
        data = []
        for i in range(len(items)):
            o = outputs.get(i)
            error = problems.get(i) or (o["error"] if o else None)
            if o is None or error:
                data.append(Embedding(index=i, error=error))
                continue
            data.append(
                Embedding(
                    index=i,
                    dense=o["dense"].tolist() if body.return_dense else None,
                    sparse={str(k): round(v, 6) for k, v in o["sparse"].items()}
                    if body.return_sparse
                    else None,
                    sparse_tokens={token_names[k]: round(v, 6) for k, v in o["sparse"].items()}
                    if body.return_tokens
                    else None,
                    colbert=o["colbert"].tolist() if body.return_colbert else None,
                    tokens=o["tokens"],
                    truncated=o["truncated"],
                    cached=o["cached"],
                )
            )
        tokens = sum(o["tokens"] for o in outputs.values())
        return EmbedResponse(
            model=await self._model(),
            data=data,
            usage={"prompt_tokens": tokens, "total_tokens": tokens},
            timings_ms={"embed": round(elapsed, 3)},
        )

    @api.post(
        "/v1/embeddings",
        response_model=OpenAIEmbeddingResponse,
        summary="OpenAI-compatible embeddings (dense vectors).",
    )
    async def openai_embeddings(self, body: OpenAIEmbeddingRequest) -> OpenAIEmbeddingResponse:
        try:
            info = await self._info()
        except ClientError as exc:
            raise OpenAIError(503, f"{exc.reason}: {exc.detail}", code="service_unavailable") from exc
        accepted = {
            info["model"],
            self.settings.model.name_or_path,
            Path(self.settings.model.name_or_path).name,
        }
        if body.model not in accepted:
            raise OpenAIError(
                404,
                f"model {body.model!r} is not served here; use {info['model']!r}",
                "model",
                "model_not_found",
            )
        if body.dimensions is not None and body.dimensions != info["dim"]:
            raise OpenAIError(422, f"dimensions must be {info['dim']} for this model", "dimensions")
        texts = [body.input] if isinstance(body.input, str) else body.input
        lim = self.settings.limits
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
        try:
            outputs = await self._embed(texts, "passage")
        except ClientError as exc:
            raise OpenAIError(503, f"{exc.reason}: {exc.detail}", code="service_unavailable") from exc
        failed = [i for i, o in enumerate(outputs) if o["error"]]
        if failed:
            # Valid input the model still failed on: the embedder's fault, as on /v1/search (503).
            message = f"input[{failed[0]}] failed: {outputs[failed[0]]['error']}"
            raise OpenAIError(503, message, "input", "embedding_failed")
        data = []
        for i, o in enumerate(outputs):
            vector = o["dense"].astype(np.float32)
            embedding = (
                base64.b64encode(vector.tobytes()).decode()
                if body.encoding_format == "base64"
                else vector.tolist()
            )
            data.append(OpenAIEmbedding(index=i, embedding=embedding, truncated=o["truncated"]))
        tokens = sum(o["tokens"] for o in outputs)
        return OpenAIEmbeddingResponse(
            data=data, model=info["model"], usage={"prompt_tokens": tokens, "total_tokens": tokens}
        )
