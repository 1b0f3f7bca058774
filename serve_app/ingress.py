"""HTTP ingress: validation, errors, timings; it orchestrates the graph and holds no model."""

import logging
import time
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.chunking import detect_lang
from serve_app.schemas import (
    Embedding,
    EmbedRequest,
    EmbedResponse,
    SearchRequest,
    SearchResponse,
    SearchResult,
)
from serve_app.settings import Settings
from serve_app.store import StoreUnavailable

log = logging.getLogger("specrag.ingress")

api = FastAPI(
    title="specrag",
    version="0.1.0",
    description="Retrieval over living ja/en system-development knowledge (BGE-M3 + Milvus on Ray Serve).",
)


class ClientError(Exception):
    def __init__(self, status: int, reason: str, detail: Any = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.detail = status, reason, detail


@api.exception_handler(ClientError)
async def _client_error(_: Request, exc: ClientError) -> JSONResponse:
    return JSONResponse({"error": exc.reason, "detail": exc.detail}, status_code=exc.status)


@api.exception_handler(HTTPException)
async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code)


@api.exception_handler(RequestValidationError)
async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [
        {"field": ".".join(str(p) for p in e.get("loc", ())[1:]) or "body", "reason": e.get("msg")}
        for e in exc.errors()
    ]
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


api.add_middleware(BodyLimit)


def _store_error(exc: BaseException) -> StoreUnavailable | None:
    """Ray wraps a replica's exception; find the StoreUnavailable inside, if that is what it was."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, StoreUnavailable):
            return seen
        seen = getattr(seen, "cause", None) or seen.__cause__
    return None


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
    ) -> None:
        self.settings = settings
        self.expander, self.embedder, self.searcher, self.reranker = expander, embedder, searcher, reranker
        self.model_id: str | None = None
        BodyLimit.limit = settings.limits.max_body_bytes

    async def _model(self) -> str:
        if self.model_id is None:
            self.model_id = (await self.embedder.info.remote())["model"]
        return self.model_id

    @api.get("/healthz", summary="Liveness: the ingress answers.")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.post("/v1/search", response_model=SearchResponse, summary="Hybrid search with rerank.")
    async def search(self, body: SearchRequest) -> SearchResponse:
        s = self.settings
        if len(body.query) > s.limits.max_query_chars:
            raise ClientError(413, f"query longer than {s.limits.max_query_chars} characters")
        rerank = s.search.rerank if body.rerank is None else body.rerank
        degraded: list[str] = []
        t0 = time.perf_counter()
        try:
            variants = await self.expander.expand.remote(body.query, body.expand)
        except Exception:
            log.exception("expander failed; searching the original query only")
            variants = [{"text": body.query, "lang": detect_lang(body.query), "origin": "original"}]
            degraded.append("expander")
        t1 = time.perf_counter()
        try:
            vectors = await self.embedder.embed.remote([v["text"] for v in variants], "query")
        except Exception as exc:
            log.exception("embedder failed")
            raise ClientError(503, "embedder unavailable", str(exc).splitlines()[0][:300]) from exc
        t2 = time.perf_counter()
        pool = max(body.top_k, s.search.rerank_candidates) if rerank else body.top_k
        try:
            found = await self.searcher.search.remote(
                [{"dense": v["dense"], "sparse": v["sparse"]} for v in vectors],
                top_k=body.top_k,
                channels=body.channels,
                filters=body.filters.model_dump(exclude_none=True) if body.filters else None,
                limit=pool,
            )
        except Exception as exc:
            if (unavailable := _store_error(exc)) is not None:
                raise ClientError(503, "vector store unavailable", str(unavailable)) from exc
            raise
        t3 = time.perf_counter()
        candidates = found["candidates"]
        reranked = False
        if rerank and candidates:
            try:
                candidates = await self.reranker.rerank.remote(body.query, candidates)
                reranked = True
            except Exception:
                log.exception("reranker failed; returning the fused order")
                degraded.append("rerank")
        t4 = time.perf_counter()
        timings = {
            "expand": (t1 - t0) * 1000,
            "embed": (t2 - t1) * 1000,
            "search": found["timings_ms"]["search"],
            "fuse": found["timings_ms"]["fuse"],
            "rerank": (t4 - t3) * 1000 if rerank else 0.0,
            "total": (t4 - t0) * 1000,
        }
        results = []
        for rank, cand in enumerate(candidates[: body.top_k], start=1):
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
                    found_by=cand.found_by,
                )
            )
        log.info("search done in %.1f ms (%d results)", timings["total"], len(results))
        return SearchResponse(
            query=body.query,
            results=results,
            variants=variants,
            timings_ms={k: round(v, 2) for k, v in timings.items()},
            model=await self._model(),
            degraded=degraded,
        )

    @api.post("/v1/embed", response_model=EmbedResponse, summary="Dense, sparse and ColBERT outputs.")
    async def embed(self, body: EmbedRequest) -> EmbedResponse:
        texts = body.texts()
        lim = self.settings.limits
        if not texts:
            raise ClientError(422, "input is empty")
        if len(texts) > lim.max_embed_items:
            raise ClientError(413, f"more than {lim.max_embed_items} items in one request")
        bad = [
            {
                "index": i,
                "reason": "empty or whitespace-only" if not t.strip() else f"over {lim.max_item_chars} chars",
            }
            for i, t in enumerate(texts)
            if not t.strip() or len(t) > lim.max_item_chars
        ]
        if bad:
            raise ClientError(422, "invalid items", bad)
        try:
            outputs = await self.embedder.embed.remote(texts, body.input_type, body.return_colbert)
        except Exception as exc:
            log.exception("embedder failed")
            raise ClientError(503, "embedder unavailable", str(exc).splitlines()[0][:300]) from exc
        data = [
            Embedding(
                index=i,
                dense=o["dense"].tolist() if body.return_dense else None,
                sparse={str(k): round(v, 6) for k, v in o["sparse"].items()} if body.return_sparse else None,
                colbert=o["colbert"].tolist() if body.return_colbert else None,
                tokens=o["tokens"],
            )
            for i, o in enumerate(outputs)
        ]
        tokens = sum(o["tokens"] for o in outputs)
        return EmbedResponse(
            model=await self._model(), data=data, usage={"prompt_tokens": tokens, "total_tokens": tokens}
        )
