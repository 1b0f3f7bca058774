"""Prometheus metrics (through Ray's metrics export) and the request-count middleware.

``ray.serve.metrics`` objects exist only inside Ray workers; the engines stay free of them and
report numbers (timings, counts) that the Serve deployments record here. Ray exports them on
its metrics port with a ``ray_`` prefix (``ray_specrag_stage_ms_bucket``...).
"""

from __future__ import annotations

import functools
from typing import Any

STAGE_MS_BOUNDARIES: list[float] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000]
KNOWN_ENDPOINTS = {"/v1/search", "/v1/embed", "/v1/embeddings", "/v1/documents", "/healthz", "/readyz"}


@functools.cache
def _metrics() -> dict[str, Any]:
    from ray.serve import metrics

    return {
        "requests": metrics.Counter(
            "specrag_http_requests_total",
            "HTTP requests by endpoint and status",
            tag_keys=("endpoint", "status"),  # type: ignore[arg-type]  # ray.serve.metrics types it Tuple[str]
        ),
        "stage_ms": metrics.Histogram(
            "specrag_stage_ms",
            "search pipeline stage latency (expand, embed, search, versions, fuse, rerank, total)",
            boundaries=STAGE_MS_BOUNDARIES,
            tag_keys=("stage",),
        ),
        "channel_ms": metrics.Histogram(
            "specrag_search_channel_ms",
            "one Milvus ANN search, by channel",
            boundaries=STAGE_MS_BOUNDARIES,
            tag_keys=("channel",),
        ),
        "expander_fallbacks": metrics.Counter(
            "specrag_expander_fallbacks_total",
            "searches that used the original query only",
            tag_keys=("reason",),
        ),
        "degraded": metrics.Counter(
            "specrag_degraded_total", "requests answered without a stage", tag_keys=("stage",)
        ),
        "replica_retries": metrics.Counter(
            "specrag_replica_retries_total",
            "idempotent calls repeated on another replica because the first one died",
        ),
        "milvus_errors": metrics.Counter(
            "specrag_milvus_errors_total",
            "failed Milvus calls by deployment and kind",
            tag_keys=("where", "kind"),  # type: ignore[arg-type]  # ray.serve.metrics types it Tuple[str]
        ),
        "breaker": metrics.Gauge(
            "specrag_redis_breaker_state",
            "Redis cache circuit breaker: 0 closed, 1 half-open, 2 open, -1 off",
        ),
        "documents": metrics.Counter(
            "specrag_ingested_documents_total",
            "documents written through the API by outcome",
            tag_keys=("outcome",),
        ),
        "chunks": metrics.Counter(
            "specrag_ingested_chunks_total",
            "chunks written through the API (embedded, reused, deleted)",
            tag_keys=("kind",),
        ),
        "rate_limit_fallbacks": metrics.Counter(
            "specrag_rate_limit_fallbacks_total",
            "requests whose rate limit was counted by one Ingress replica because Redis failed",
        ),
    }


def metric(name: str) -> Any:
    return _metrics()[name]


def observe_stages(timings_ms: dict[str, float]) -> None:
    hist = metric("stage_ms")
    for stage, ms in timings_ms.items():
        hist.observe(float(ms), tags={"stage": stage})


BREAKER_STATES = {"closed": 0, "half-open": 1, "open": 2, "disabled": -1}


def endpoint_label(path: str) -> str:
    if path.startswith("/v1/documents/"):
        return "/v1/documents/{doc_id}"
    return path if path in KNOWN_ENDPOINTS else "other"


class RequestMetrics:
    """ASGI: counts every response by endpoint and status (401/403/429/413 included)."""

    def __init__(self, app: Any, enabled: bool = True) -> None:
        self.app = app
        self.enabled = enabled  # off where Ray's metrics do not exist (an app outside a replica)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.enabled:
            await self.app(scope, receive, send)
            return
        status = {"code": 500}

        async def capture(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            path, root = scope["path"], scope.get("root_path", "").rstrip("/")
            relative = path[len(root) :] if root and path.startswith(root + "/") else path
            tags = {"endpoint": endpoint_label(relative), "status": str(status["code"])}
            metric("requests").inc(tags=tags)
