"""The latency benchmark's measuring and reporting, over a fake HTTP app and a fake pipeline."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve_app.core.pipeline import SearchOutcome, SearchQuery
from serve_app.devtools.bench.latency import (
    STAGES,
    LatencyBenchOptions,
    Request,
    client_process,
    measure,
    section,
    timed,
    write,
)
from serve_app.devtools.local_stack import free_port

TIMINGS = {
    "expand": 1.0,
    "embed": 2.0,
    "search": 3.0,
    "versions": 0.5,
    "fuse": 0.1,
    "rerank": 4.0,
    "total": 10.6,
}


class FakePipeline:
    def __init__(self) -> None:
        self.queries: list[str] = []

    async def search(self, q: SearchQuery) -> SearchOutcome:
        self.queries.append(q.query)
        return SearchOutcome(
            query=q.query, results=[], variants=[], timings_ms=TIMINGS, degraded=[], reranked=True
        )


def app(requests: list[tuple[str, Any]], fail_path: str | None = None) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        requests.append((request.url.path, body))
        if request.url.path == fail_path:
            return httpx.Response(503, json={"error": "embedder unavailable"})
        if request.url.path == "/v1/search":
            return httpx.Response(200, json={"results": [], "timings_ms": TIMINGS})
        if request.url.path == "/v1/embed":
            return httpx.Response(200, json={"data": [{"dense": [0.1]}]})
        return httpx.Response(200, json={"status": "ok"})

    return httpx.MockTransport(handler)


def over_httpx(client: httpx.AsyncClient) -> Request:
    """Requests through ``client`` in this process (the mock transport), timed here."""

    async def request(method: str, path: str, payload: Any) -> tuple[float, int, str]:
        ms, response = await timed(lambda: client.request(method, path, json=payload))
        return ms, response.status_code, response.text

    return request


async def _measure(requests: list[tuple[str, Any]], pipeline: FakePipeline, fail: str | None = None) -> Any:
    async with httpx.AsyncClient(transport=app(requests, fail), base_url="http://t") as client:
        return await measure(over_httpx(client), pipeline, 6, echo=lambda _: None)


def test_every_required_figure_and_the_floor_as_the_sum_of_stage_medians() -> None:
    requests: list[tuple[str, Any]] = []
    pipeline = FakePipeline()
    report = asyncio.run(_measure(requests, pipeline))
    for key in ("http_noop_p50_ms", "embed_cache_hit_p50_ms", "search_p50_ms", "search_stage_floor_ms"):
        assert report[key] > 0, key
    assert report["search_stage_floor_ms"] == pytest.approx(sum(TIMINGS[k] for k in STAGES))
    assert report["series"]["search_cached"]["stages_p50_ms"]["rerank"] == 4.0
    assert report["embed_cached_answer"] is True
    # the cached rows repeat one text; the uncached rows never repeat one
    embeds = [b["input"][0] for p, b in requests if p == "/v1/embed"]
    cached, fresh = embeds[: len(embeds) - 6], embeds[-6:]
    assert len(set(cached)) == 1 and len(set(fresh)) == 6 and not set(cached) & set(fresh)
    searches = [b["query"] for p, b in requests if p == "/v1/search"]
    assert len(set(searches)) == 1 + 6, "one cached query, then a new one per round"
    assert len(set(pipeline.queries)) == 1 + 6, "the in-process path searches the same shapes"


def test_an_error_answer_stops_the_run() -> None:
    with pytest.raises(RuntimeError, match="503"):
        asyncio.run(_measure([], FakePipeline(), fail="/v1/embed"))


def _report() -> dict[str, Any]:
    report = asyncio.run(_measure([], FakePipeline()))
    report.update(requests=6, machine="x86_64 cpus=2", command="specrag bench latency")
    return report


def test_report_and_section_are_written(tmp_path: Path) -> None:
    report = _report()
    md = tmp_path / "B.md"
    md.write_text("# Benchmarks\n")
    options = LatencyBenchOptions(out=tmp_path / "latency.json", markdown=md)
    write(report, options)
    assert json.loads(options.out.read_text())["search_stage_floor_ms"] == report["search_stage_floor_ms"]
    text = md.read_text()
    assert (
        text.startswith("# Benchmarks") and "bench:latency:start" in text and "specrag bench latency" in text
    )
    assert section(report, str(options.out)) in text


def test_the_client_process_sends_and_times_each_request() -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[tuple[str, str, str | None]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer(404 if self.path == "/missing" else 200)

        def do_POST(self) -> None:
            self._answer(200)

        def _answer(self, status: int) -> None:
            length = int(self.headers.get("content-length") or 0)
            seen.append((self.command, self.path, self.headers.get("x-key")))
            body = json.dumps({"echo": json.loads(self.rfile.read(length)) if length else None}).encode()
            self.send_response(status)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with client_process(f"http://127.0.0.1:{server.server_port}", {"x-key": "k"}) as request:
            ms, status, text = asyncio.run(request("POST", "/v1/search", {"query": "q"}))
            assert status == 200 and json.loads(text) == {"echo": {"query": "q"}} and ms > 0
            assert asyncio.run(request("GET", "/missing", None))[1] == 404
    finally:
        server.shutdown()
    assert seen == [("POST", "/v1/search", "k"), ("GET", "/missing", "k")]


def test_a_request_without_an_answer_stops_the_run_with_its_reason() -> None:
    with client_process(f"http://127.0.0.1:{free_port()}", {}) as request, pytest.raises(RuntimeError) as err:
        asyncio.run(measure(request, FakePipeline(), 6, echo=lambda _: None))
    assert "answered 0: ConnectError" in str(err.value)


def test_the_floor_row_names_the_http_entry_it_went_through() -> None:
    report = _report()
    assert "`GET /healthz` (HAProxy + Ingress" in section({**report, "ingress": "haproxy"}, "l.json")
    assert "`GET /healthz` (Serve's proxy + Ingress" in section({**report, "ingress": "proxy"}, "l.json")
    assert "(Serve's proxy + Ingress" in section(report, "l.json")  # reports from before the setting
