"""The load generator, its write ledger and the reports, against an in-process fake of the API.

The fake can fail for a while, answer late, forget or ignore writes: each must show in the
figures (errors, hangs, recovery, lost writes) exactly as the real scenarios rely on.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from ray.exceptions import ActorDiedError

from serve_app.devtools.reliability.load import TIMEOUT, LoadRun, Mix, require_loopback
from serve_app.devtools.reliability.report import scenarios_section, write
from serve_app.devtools.reliability.soak import memory_trend, slope_per_min
from serve_app.serving.handles import call_idempotent, replica_gone


class FakeAPI:
    """``/v1/search``, ``/v1/embed``, ``/v1/documents`` in memory, with switchable faults."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.down = False  # every request 503
        self.ignore_updates = False  # acknowledge updates without applying them (a stale write)
        self.apply_then_fail = False  # apply writes, then answer 503 (outcome unknown to the client)
        self.slow_embed_s = 0.0
        self.bare_503 = False  # 503 without a reason (as a crashed proxy might answer)
        self.not_json = False  # 200 whose body is not JSON
        app = FastAPI()

        @app.post("/v1/search")
        async def search(body: dict) -> Any:
            if self.bare_503:
                return Response("Service Unavailable", status_code=503)
            if self.not_json:
                return Response("<html>ok</html>", status_code=200)
            if self.down:
                return JSONResponse({"error": "vector store unavailable"}, status_code=503)
            ids = (body.get("filters") or {}).get("doc_ids") or list(self.docs)[:3]
            results = [{"doc_id": d, "text": self.docs[d]["text"]} for d in ids if d in self.docs]
            return {"results": results, "degraded": [], "timings_ms": {"embed": 1.5, "total": 4.0}}

        @app.post("/v1/embed")
        async def embed(body: dict) -> Any:
            await asyncio.sleep(self.slow_embed_s)
            if self.down:
                return JSONResponse({"error": "embedder unavailable"}, status_code=503)
            return {"data": [[0.0]] * len(body["input"])}

        @app.post("/v1/documents")
        async def documents(body: dict) -> Any:
            if self.down:
                return JSONResponse({"error": "vector store unavailable"}, status_code=503)
            for d in body["documents"]:
                if not (self.ignore_updates and d["doc_id"] in self.docs):
                    self.docs[d["doc_id"]] = d
            if self.apply_then_fail:
                return JSONResponse({"error": "indexer unavailable"}, status_code=503)
            return {"documents": len(body["documents"])}

        @app.get("/v1/documents/{doc_id:path}")
        async def get(doc_id: str) -> Any:
            if doc_id not in self.docs:
                return JSONResponse({"error": "no document"}, status_code=404)
            return {"doc_id": doc_id, "chunks": 1, "tags": self.docs[doc_id]["tags"]}

        self.transport = httpx.ASGITransport(app=app)


def _run(api: FakeAPI, **options: Any):
    defaults: dict[str, Any] = {"duration_s": 1.0, "rate": 30.0, "transport": api.transport, "timeout_s": 5.0}
    return asyncio.run(LoadRun("http://127.0.0.1:9", **{**defaults, **options}).run())


def test_open_loop_sends_rate_times_duration_and_reports_every_operation() -> None:
    api = FakeAPI()
    result = _run(api, duration_s=1.0, rate=40.0, mix=Mix(search=1, embed=1, ingest=1))
    summary = result.summary()
    assert summary["total"]["requests"] == 40
    assert summary["total"]["errors"] == 0
    assert set(summary["ops"]) == {"search", "embed", "ingest"}
    assert all(s["p50"] is not None and s["p99"] >= s["p50"] for s in summary["ops"].values())
    assert result.elapsed_s >= 0.97  # open loop: the last request was due at 39/40 s
    assert result.verify["acknowledged_writes"] == summary["ops"]["ingest"]["ok"]
    assert result.verify["lost"] == []
    assert result.verify["searched_back"] > 0
    assert summary["search_stages_p50_ms"] == {"embed": 1.5, "total": 4.0}


def test_a_fault_window_shows_as_503s_only_inside_it_and_recovery_after() -> None:
    api = FakeAPI()

    def fail() -> None:
        api.down = True

    def heal() -> None:
        api.down = False

    result = _run(api, duration_s=1.5, rate=40.0, actions=[(0.5, "down", fail), (1.0, "up", heal)])
    summary = result.summary()
    assert summary["total"]["by_status"].keys() == {"503"}
    assert summary["server_errors"] == 0, "a 503 is the expected answer of an outage"
    assert all(0.45 <= s.due_s <= 1.05 for s in result.samples if not s.ok)
    assert [e["action"] for e in result.events] == ["down", "up"]
    assert result.recovery_s(1.0) < 0.2
    assert "vector store unavailable" in next(iter(summary["error_reasons"]))


def test_unanswered_requests_count_as_hangs() -> None:
    api = FakeAPI()
    api.slow_embed_s = 0.5
    result = _run(api, duration_s=0.2, rate=20.0, mix=Mix(search=0, embed=1, ingest=0), timeout_s=0.1)
    summary = result.summary()
    assert summary["hangs"] == summary["total"]["requests"] == 4
    assert all(s.status == TIMEOUT for s in result.samples)


def test_a_forgotten_acknowledged_write_is_reported_lost() -> None:
    api = FakeAPI()
    result = _run(
        api,
        duration_s=1.0,
        rate=20.0,
        mix=Mix(search=0, embed=0, ingest=1),
        actions=[(0.98, "forget", api.docs.clear)],
    )
    assert result.verify["acknowledged_writes"] > 0
    assert len(result.verify["lost"]) >= result.verify["documents_checked"] > 0
    assert {entry.get("status") for entry in result.verify["lost"]} >= {404}


def test_an_acknowledged_update_that_was_not_applied_is_reported_lost() -> None:
    api = FakeAPI()
    api.ignore_updates = True
    # Seed 0 with 30 % updates of acknowledged documents: some update is acknowledged and ignored.
    result = _run(api, duration_s=2.0, rate=30.0, mix=Mix(search=0, embed=0, ingest=1), concurrency=1)
    stale = [e for e in result.verify["lost"] if "expected" in e and "got" in e]
    assert stale, result.verify


def test_a_write_with_an_unknown_outcome_may_be_applied_without_counting_as_lost() -> None:
    api = FakeAPI()
    api.apply_then_fail = True
    result = _run(api, duration_s=0.5, rate=20.0, mix=Mix(search=0, embed=0, ingest=1))
    assert result.summary()["total"]["by_status"] == {"503": 10}
    assert result.verify is None, "nothing was acknowledged, so nothing can be lost"


def test_a_503_without_a_reason_and_a_200_that_is_not_json_are_server_errors() -> None:
    api = FakeAPI()
    api.bare_503 = True
    summary = _run(api, duration_s=0.2, rate=20.0, mix=Mix(search=1, embed=0, ingest=0)).summary()
    assert summary["server_errors"] == summary["total"]["requests"] == 4
    api.bare_503, api.not_json = False, True
    summary = _run(api, duration_s=0.2, rate=20.0, mix=Mix(search=1, embed=0, ingest=0)).summary()
    assert summary["server_errors"] == summary["total"]["errors"] == 4


def test_no_recovery_when_nothing_succeeds_after_the_fault() -> None:
    api = FakeAPI()
    result = _run(api, duration_s=1.0, rate=20.0, actions=[(0.5, "down", lambda: setattr(api, "down", True))])
    assert result.recovery_s(0.5) is None, "still failing at the end: not recovered"
    assert result.recovery_s(0.0) is None


def test_a_document_whose_write_timed_out_is_not_updated_again() -> None:
    """The timed-out write may still land later and overwrite any later acknowledged update, which
    would then look lost; so such a document is left alone, and either outcome is accepted."""
    from serve_app.devtools.reliability.load import Ledger

    ledger = Ledger()
    ledger.begin("d", "t1")
    ledger.end("d", "t1", 200)
    assert ledger.idle_docs() == ["d"]
    ledger.begin("d", "t2")
    ledger.end("d", "t2", TIMEOUT)
    assert ledger.idle_docs() == [] and ledger.possible["d"] == {"t1", "t2"}


def test_loopback_only() -> None:
    require_loopback("http://127.0.0.1:8000")
    require_loopback("http://localhost:8000")
    for url in ("http://192.0.2.10:8000", "http://10.1.2.3"):
        with pytest.raises(ValueError, match="loopback"):
            LoadRun(url)


def test_mix_parse() -> None:
    assert Mix.parse("search=2,ingest=1") == Mix(search=2, embed=0, ingest=1)
    for bad in ("delete=1", "search=-1", "search=0"):
        with pytest.raises(ValueError):
            Mix.parse(bad)


def test_memory_trend_ignores_warmup_and_finds_a_leak() -> None:
    flat = [{"t_s": t, "rss_mib": {"ray": 500.0 + min(t, 60)}} for t in range(0, 600, 15)]  # fills, then flat
    leak = [{"t_s": t, "rss_mib": {"ray": 500.0 + t / 6}} for t in range(0, 600, 15)]  # 10 MiB/min
    assert memory_trend(flat, warmup_s=60)["ray"]["growth_after_warmup_mib"] == 0
    trend = memory_trend(leak, warmup_s=60)["ray"]
    assert trend["slope_mib_per_min"] == pytest.approx(10, abs=0.01)
    assert trend["growth_after_warmup_mib"] > 80
    assert trend["last_third_slope_mib_per_min"] == pytest.approx(10, abs=0.01), "a leak keeps its slope"
    filling = [{"t_s": t, "rss_mib": {"ray": 500.0 + min(t, 400) / 6}} for t in range(0, 600, 15)]
    assert memory_trend(filling, warmup_s=60)["ray"]["last_third_slope_mib_per_min"] == 0, (
        "a cache that fills"
    )
    assert slope_per_min([(0, 1.0)]) is None


def test_scenario_table_marks_failures_and_rewrites_only_its_section(tmp_path) -> None:
    result = {
        "passed": False,
        "checks": {"no errors": False, "acknowledged writes read back": True},
        "requests": 10,
        "errors": 2,
        "by_status": {"503": 1, "-1": 1},
        "acknowledged_writes": 3,
        "documents_checked": 3,
        "lost": [],
        "recovery_s": 1.5,
        "duration_s": 60.0,
        "rate": 0.8,
    }
    section = scenarios_section({"milvus": result})
    assert "**FAIL**" in section and "FAILED: no errors" in section and "1× timeout" in section
    assert "`specrag reliability run -s milvus --duration 60 --rate 0.8` |" in section
    doc = tmp_path / "R.md"
    doc.write_text("# Reliability\n\nhand-written intro\n")
    write(doc, section)
    write(doc, section.replace("**FAIL**", "**pass**"))
    text = doc.read_text()
    assert text.count("reliability:scenarios:start") == 1 and "hand-written intro" in text
    assert "**pass**" in text and "**FAIL**" not in text


def test_the_ingress_row_names_its_fault_and_its_slowest_answer() -> None:
    result = {
        "passed": True,
        "checks": {"no errors": True},
        "requests": 48,
        "errors": 0,
        "by_status": {},
        "acknowledged_writes": 0,
        "lost": [],
        "recovery_s": 9.1,
        "slowest_ms": 8712.0,
        "duration_s": 60.0,
        "rate": 0.8,
    }
    row = next(
        line for line in scenarios_section({"ingress": result}).splitlines() if line.startswith("| ingress")
    )
    assert "the only Ingress replica" in row and "slowest answer 8.7 s" in row and "**pass**" in row


class _Method:
    def __init__(self, failures: list[BaseException]) -> None:
        self.failures, self.calls = failures, 0

    def remote(self, *args: Any) -> Any:
        self.calls += 1

        async def answer() -> Any:
            if self.failures:
                raise self.failures.pop(0)
            return args

        return answer()


def test_a_call_on_a_dead_replica_is_repeated_once_it_is_known_dead() -> None:
    died = ActorDiedError()
    method = _Method([died])
    started = time.monotonic()
    assert asyncio.run(call_idempotent(method, "text")) == ("text",)
    assert method.calls == 2 and time.monotonic() - started < 2
    assert replica_gone(RuntimeError("wrapped").with_traceback(None)) is False


def test_other_failures_are_not_repeated() -> None:
    method = _Method([ValueError("bad input")])
    with pytest.raises(ValueError):
        asyncio.run(call_idempotent(method, "text"))
    assert method.calls == 1
    method = _Method([ActorDiedError()] * 3)
    with pytest.raises(ActorDiedError):
        asyncio.run(call_idempotent(method, "text"))
    assert method.calls == 3


def test_lone_surrogates_are_refused_with_field_and_position() -> None:
    """JSON ``"\\ud800"`` parses to a str no encoder can take; the schema refuses it (422), while a
    proper surrogate pair is one character and passes."""
    import json

    from pydantic import ValidationError

    from serve_app.http.schemas import DocumentsRequest, EmbedRequest, SearchRequest

    with pytest.raises(ValidationError, match="query: lone UTF-16 surrogate at character 6"):
        SearchRequest(query="token \ud800 expiry")
    with pytest.raises(ValidationError, match="tags: lone UTF-16 surrogate"):
        SearchRequest(query="q", filters={"tags": ["ok", "\udfff"]})
    with pytest.raises(ValidationError, match="doc_id"):  # pydantic-core itself refuses it there
        DocumentsRequest(documents=[{"doc_id": "a\ud800", "text": "x"}])
    assert EmbedRequest(input=["\ud800", "ok"]).texts()[0] == "\ud800", "embed reports it per item"
    assert SearchRequest(query=json.loads('"\\ud83d\\ude00 ok"')).query == "😀 ok"


def test_soak_groups_processes_by_deployment() -> None:
    from serve_app.devtools.reliability.stack import _ray_group

    assert (
        _ray_group("ray::ServeReplica:reliability:Embedder.handle_request_with_rejection") == "ray: Embedder"
    )
    assert _ray_group("ray::ProxyActor.receive_asgi_messages") == "ray: ProxyActor"
    assert (
        _ray_group("/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet --x")
        == "ray: raylet + gcs"
    )
    assert _ray_group("python -u /venv/ray/_private/log_monitor.py") == "ray: daemons"
    assert _ray_group("redis-server *:6379") is None


def test_refusals_name_their_reason_in_every_shape() -> None:
    """The hostile-input check fails a 4xx whose body names no reason, so ``_reason`` must find it
    in each shape the service answers with, and find nothing where there is nothing."""
    from serve_app.devtools.reliability.fuzz import _reason

    assert _reason('{"error": "invalid request", "detail": [{"field": "query", "reason": "empty"}]}') == (
        "invalid request: query: empty"
    )
    assert _reason('{"error": "no valid items", "detail": [{"index": 0, "reason": "surrogate"}]}') == (
        "no valid items: 0: surrogate"
    )
    assert _reason('{"error": {"message": "model x is not served here"}}') == "model x is not served here"
    assert _reason('{"error": "vector store unavailable", "detail": "connect refused"}') == (
        "vector store unavailable: connect refused"
    )
    assert _reason('{"detail": null}') == "" and _reason("[1]") == "" and _reason("{}") == ""


def _refusal(body: Any, status: int = 503, rid: str | None = "r-1") -> httpx.Response:
    headers = {"x-request-id": rid} if rid else {}
    return httpx.Response(status, json=body, headers=headers)


def test_body_flaws_find_internals_and_a_missing_request_id() -> None:
    from serve_app.devtools.reliability.load import body_flaws

    clean = {"error": "vector store unavailable", "detail": "cannot connect to Milvus at 127.0.0.1:29530"}
    assert body_flaws(_refusal({**clean, "request_id": "r-1"})) == []
    assert body_flaws(httpx.Response(200, json={"ok": 1})) == []
    ray_text = '\x1b[36mray::ServeReplica:s:Searcher.search()\x1b[39m (pid=7, ip=10.0.0.3)\n  File "/x.py"'
    flaws = body_flaws(
        _refusal({"error": "vector store unavailable", "detail": ray_text, "request_id": "r-1"})
    )
    leaked = {"pid=", "ip=", "\n", "\x1b[", "ray::", 'File "'}
    assert {f"{m!r} in the message" for m in leaked} <= set(flaws)
    assert body_flaws(_refusal({**clean, "request_id": "other"}))[0].startswith("request_id 'other'")
    assert body_flaws(_refusal({**clean, "request_id": "r-1"}, rid=None))
    openai = {"error": {"message": "embedder unavailable: Traceback (most recent"}, "request_id": "r-1"}
    assert body_flaws(_refusal(openai)) == ["'Traceback' in the message"]
    assert body_flaws(_refusal({"error_code": 1002, "error_msg": "pid=3", "request_id": "r-1"})) == [
        "'pid=' in the message"
    ]


def test_the_load_counts_refusals_without_a_request_id_as_unclean() -> None:
    api = FakeAPI()
    api.down = True  # its 503s name a reason but carry no request id
    summary = _run(api, duration_s=0.2, rate=20.0, mix=Mix(search=1, embed=0, ingest=0)).summary()
    assert summary["unclean_errors"] == summary["total"]["errors"] == 4
    assert "request_id" in summary["unclean_examples"][0]


def test_schemathesis_run_checks_conformance_and_counts_non_conforming(tmp_path, monkeypatch) -> None:
    """The run asks for the conformance checks; a non-conforming answer fails it, counted apart
    from 5xx and hangs."""
    import json
    import subprocess

    from serve_app.devtools.reliability import fuzz

    seen: list[list[str]] = []

    def fake_run(cmd: list[str], **_: Any) -> subprocess.CompletedProcess:
        seen.append(cmd)
        report = {
            "schemathesis_version": "4.32.5",
            "operations": {"total": 3, "tested": 3},
            "test_cases": {"generated": 2100, "with_failures": 2},
            "failures": [
                {"title": "Undocumented status code", "count": 2, "operations": ["POST /v1/x"]},
                {"title": "Server error", "count": 1, "operations": ["POST /v1/x"]},
            ],
            "errors": [],
            "running_time": 3.0,
        }
        (tmp_path / "report.json").write_text(json.dumps(report))
        return subprocess.CompletedProcess(cmd, 1, "", "")

    monkeypatch.setattr(fuzz.subprocess, "run", fake_run)
    monkeypatch.setattr(fuzz.shutil, "which", lambda *a, **k: "/bin/st")
    result = fuzz.schemathesis_run("http://127.0.0.1:9", 8, tmp_path)
    checks = seen[0][seen[0].index("--checks") + 1].split(",")
    assert {"status_code_conformance", "response_schema_conformance", "not_a_server_error"} <= set(checks)
    assert (result["non_conforming"], result["server_errors"], result["passed"]) == (2, 1, False)
