"""The request path against its floor, in one run on the real local stack.

Sequential requests on one keep-alive connection (no queueing, so what shows is the path's own
cost): ``GET /healthz`` through Serve's proxy and the Ingress (the floor of any request), a
cached and an uncached ``POST /v1/embed``, a cached and an uncached ``POST /v1/search`` with the
server's stage split, and the same searches through the same ``SearchPipeline`` wired to
in-process engines on the same Milvus and Redis (``search_stage_floor_ms``: the sum of those
stages' medians). HTTP and in-process searches alternate request by request, so the drift of a
noisy machine hits both alike. The HTTP client runs in a process of its own, as an external
client does, apart from the Ray driver and the in-process engines this process holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import multiprocessing
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from serve_app.devtools.common import percentile, replace_section
from serve_app.devtools.reliability.load import QUERIES

MARK_START = "<!-- bench:latency:start -->"
MARK_END = "<!-- bench:latency:end -->"
STAGES = ("expand", "embed", "search", "versions", "fuse", "rerank")
CACHED_QUERY = "アクセストークンの有効期限は？"

#: One HTTP request: ``(method, path, JSON body or None)`` -> ``(ms, status, body text)``, timed
#: by whoever sends it.
Request = Callable[[str, str, Any], Awaitable[tuple[float, int, str]]]


@dataclass
class LatencyBenchOptions:
    requests: int = 60
    out: Path = Path("docs/benchmarks/latency.json")
    markdown: Path = Path("docs/BENCHMARKS.md")
    command: str = "specrag bench latency"
    machine: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def p50(values: list[float]) -> float:
    value = percentile(values, 50)
    return round(value, 2) if value is not None else float("nan")


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": p50(values),
        "p95_ms": round(percentile(values, 95) or float("nan"), 2),
        "min_ms": round(min(values), 2),
    }


def unique_queries() -> Iterator[str]:
    """Endless distinct queries in the three shapes the load uses (a counter makes each new)."""
    base = [q for qs in QUERIES.values() for q in qs]
    return (f"{base[i % len(base)]} {i}" for i in itertools.count())


async def timed(call: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = await call()
    return (time.perf_counter() - started) * 1000, out


def _client_main(conn: Any, base_url: str, headers: dict[str, str]) -> None:
    """The client process: one keep-alive connection, each request timed here; a request that got
    no answer comes back as status 0 with the reason (``http_series`` refuses it, naming it)."""
    with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
        while (message := conn.recv()) is not None:
            method, path, payload = message
            started = time.perf_counter()
            try:
                response = client.request(method, path, json=payload)
            except httpx.HTTPError as exc:
                conn.send(((time.perf_counter() - started) * 1000, 0, f"{type(exc).__name__}: {exc}"))
                continue
            conn.send(((time.perf_counter() - started) * 1000, response.status_code, response.text))


@contextlib.contextmanager
def client_process(base_url: str, headers: dict[str, str]) -> Iterator[Request]:
    """A ``Request`` that a separate process sends and times."""
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    process = ctx.Process(target=_client_main, args=(theirs, base_url, headers), daemon=True)
    process.start()

    async def request(method: str, path: str, payload: Any) -> tuple[float, int, str]:
        ours.send((method, path, payload))
        if not ours.poll(120):
            raise RuntimeError(f"the client process sent no answer to {method} {path} in 120 s")
        return ours.recv()

    try:
        yield request
    finally:
        with contextlib.suppress(OSError):
            ours.send(None)
        process.join(10)
        if process.is_alive():
            process.kill()


async def http_series(
    request: Request, n: int, method: str, path: str, body: Callable[[int], Any] | None = None
) -> tuple[list[float], list[dict[str, Any]]]:
    """``n`` sequential requests; each must answer 200 (a benchmark of errors measures nothing)."""
    times: list[float] = []
    answers: list[dict[str, Any]] = []
    for i in range(n):
        ms, status, text = await request(method, path, body(i) if body is not None else None)
        if status != 200:
            raise RuntimeError(f"{method} {path} answered {status}: {text[:300]}")
        answer = json.loads(text)
        if answer.get("degraded"):  # a stage that failed fast would pass for a fast one
            raise RuntimeError(f"{method} {path} answered without {answer['degraded']}")
        times.append(ms)
        answers.append(answer)
    return times, answers


def whole(outcome: Any) -> Any:
    """The in-process ``SearchOutcome``, refused when a stage was skipped (as ``http_series`` does)."""
    if outcome.degraded:
        raise RuntimeError(f"the in-process search answered without {outcome.degraded}")
    return outcome


def stage_p50(timings: list[dict[str, float]]) -> dict[str, float]:
    return {k: p50([t.get(k, 0.0) for t in timings]) for k in (*STAGES, "total")}


async def measure(request: Request, pipeline: Any, n: int, echo: Callable[[str], None]) -> dict[str, Any]:
    """Every figure of the report; ``pipeline`` is the in-process ``SearchPipeline``."""
    from serve_app.core.pipeline import SearchQuery

    warm = max(5, n // 10)
    await http_series(request, warm, "GET", "/healthz")
    noop, _ = await http_series(request, n, "GET", "/healthz")
    echo(f"GET /healthz p50 {p50(noop)} ms")

    cached_text = {"input": ["Idempotency-Key ヘッダーの扱い (latency benchmark)"]}
    await http_series(request, warm, "POST", "/v1/embed", lambda i: cached_text)
    embed_hit, answers = await http_series(request, n, "POST", "/v1/embed", lambda i: cached_text)
    echo(f"POST /v1/embed cached p50 {p50(embed_hit)} ms")
    fresh = unique_queries()
    embed_miss, _ = await http_series(request, n, "POST", "/v1/embed", lambda i: {"input": [next(fresh)]})
    echo(f"POST /v1/embed uncached p50 {p50(embed_miss)} ms")

    body = {"query": CACHED_QUERY}
    for _ in range(warm):  # every cache on both paths holds the query, its variants and candidates
        await http_series(request, 1, "POST", "/v1/search", lambda i: body)
        await pipeline.search(SearchQuery(query=CACHED_QUERY))
    http_cached: list[float] = []
    http_cached_stages: list[dict[str, float]] = []
    local_cached: list[float] = []
    local_cached_stages: list[dict[str, float]] = []
    http_fresh: list[float] = []
    http_fresh_stages: list[dict[str, float]] = []
    local_fresh: list[float] = []
    local_fresh_stages: list[dict[str, float]] = []
    for _ in range(n):
        ms, r = await http_series(request, 1, "POST", "/v1/search", lambda i: body)
        http_cached += ms
        http_cached_stages.append(r[0]["timings_ms"])
        ms2, outcome = await timed(lambda: pipeline.search(SearchQuery(query=CACHED_QUERY)))
        local_cached.append(ms2)
        local_cached_stages.append(whole(outcome).timings_ms)
        q = next(fresh)
        ms, r = await http_series(request, 1, "POST", "/v1/search", lambda i, q=q: {"query": q})
        http_fresh += ms
        http_fresh_stages.append(r[0]["timings_ms"])
        q = next(fresh)
        ms2, outcome = await timed(lambda q=q: pipeline.search(SearchQuery(query=q)))
        local_fresh.append(ms2)
        local_fresh_stages.append(whole(outcome).timings_ms)
    floor_stages = stage_p50(local_cached_stages)
    floor = round(sum(floor_stages[k] for k in STAGES), 2)
    echo(f"POST /v1/search cached p50 {p50(http_cached)} ms; in-process stages sum {floor} ms")
    return {
        "http_noop_p50_ms": p50(noop),
        "embed_cache_hit_p50_ms": p50(embed_hit),
        "embed_uncached_p50_ms": p50(embed_miss),
        "search_p50_ms": p50(http_cached),
        "search_uncached_p50_ms": p50(http_fresh),
        "search_stage_floor_ms": floor,
        "search_uncached_stage_floor_ms": round(sum(stage_p50(local_fresh_stages)[k] for k in STAGES), 2),
        "ratios": {
            "embed_cache_hit_vs_noop": round(p50(embed_hit) / p50(noop), 2),
            "search_vs_stage_floor": round(p50(http_cached) / floor, 2),
        },
        "series": {
            "http_noop": summary(noop),
            "embed_cache_hit": summary(embed_hit),
            "embed_uncached": summary(embed_miss),
            "search_cached": {**summary(http_cached), "stages_p50_ms": stage_p50(http_cached_stages)},
            "search_uncached": {**summary(http_fresh), "stages_p50_ms": stage_p50(http_fresh_stages)},
            "in_process_search_cached": {**summary(local_cached), "stages_p50_ms": floor_stages},
            "in_process_search_uncached": {
                **summary(local_fresh),
                "stages_p50_ms": stage_p50(local_fresh_stages),
            },
        },
        "embed_cached_answer": bool(answers and answers[-1].get("data")),
    }


# What listens on the app's port, by ``serve.ingress``.
ENTRY_NAMES = {"haproxy": "HAProxy", "proxy": "Serve's proxy"}


def section(report: dict[str, Any], json_path: str) -> str:
    s = report["series"]
    entry = ENTRY_NAMES.get(report.get("ingress", ""), "Serve's proxy")
    named = [
        (f"`GET /healthz` ({entry} + Ingress: the floor)", "http_noop"),
        ("`POST /v1/embed`, cached text", "embed_cache_hit"),
        ("`POST /v1/embed`, new text", "embed_uncached"),
        ("`POST /v1/search`, cached", "search_cached"),
        ("same search, stages in-process", "in_process_search_cached"),
        ("`POST /v1/search`, new query", "search_uncached"),
        ("new query, stages in-process", "in_process_search_uncached"),
    ]
    lines = [
        MARK_START,
        f"Sequential requests on one connection, {report['requests']} per row ({report['machine']}); "
        "searches with no options (the default pipeline, the fake LLM answering at once); HTTP and "
        "in-process searches alternate request by request.",
        "",
        "| request | p50 ms | p95 ms | stages p50: expand / embed / search / versions / fuse / rerank |",
        "|---|---|---|---|",
    ]
    for name, key in named:
        row = s[key]
        stages = row.get("stages_p50_ms")
        split = " / ".join(str(stages[k]) for k in STAGES) if stages else ""
        lines.append(f"| {name} | {row['p50_ms']} | {row['p95_ms']} | {split} |")
    r = report["ratios"]
    lines += [
        "",
        f"Cached `/v1/embed` p50 = {r['embed_cache_hit_vs_noop']} × the `/healthz` floor "
        f"({report['embed_cache_hit_p50_ms']} vs {report['http_noop_p50_ms']} ms); cached search p50 = "
        f"{r['search_vs_stage_floor']} × the sum of its in-process stage medians "
        f"({report['search_p50_ms']} vs {report['search_stage_floor_ms']} ms).",
        "",
        f"Command: `{report['command']}` (raw: `{json_path}`)",
        MARK_END,
    ]
    return "\n".join(lines)


def write(report: dict[str, Any], options: LatencyBenchOptions) -> None:
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    text = options.markdown.read_text(encoding="utf-8") if options.markdown.exists() else ""
    options.markdown.write_text(replace_section(text, section(report, str(options.out))), encoding="utf-8")


def in_process_pipeline(settings: Any) -> Any:
    """The serving pipeline over in-process engines on the stack's Milvus, Redis and LLM."""
    from serve_app.core.embedding import EmbeddingService
    from serve_app.core.local import local_expansion, local_retriever
    from serve_app.core.pipeline import SearchPipeline, ServiceEmbedder
    from serve_app.core.rerank import ColbertReranker
    from serve_app.core.store import make_store

    service = EmbeddingService.from_settings(settings)
    store = make_store(settings, service.dim)
    embedder = ServiceEmbedder(service)
    return SearchPipeline(
        settings.search,
        expander=local_expansion(settings, store),
        embedder=embedder,
        retriever=local_retriever(settings, store),
        reranker=ColbertReranker(embedder, settings.search),
    )


def run_latency_bench(
    stack: Any, options: LatencyBenchOptions, echo: Callable[[str], None]
) -> dict[str, Any]:
    """Measure on a running ``devtools.reliability.stack.Stack``; write the JSON and the section."""
    pipeline = in_process_pipeline(stack.settings)

    with client_process(stack.base_url, dict(stack.headers)) as request:
        figures = asyncio.run(measure(request, pipeline, options.requests, echo))
    report = {
        **figures,
        "ingress": stack.settings.serve.ingress,
        "requests": options.requests,
        "machine": options.machine,
        "command": options.command,
        **options.extra,
    }
    write(report, options)
    return report
