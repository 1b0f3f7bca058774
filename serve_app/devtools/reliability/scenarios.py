"""Fault-injection scenarios against the real local stack, each with a pass/fail outcome.

Every scenario runs the mixed load (:mod:`serve_app.devtools.reliability.load`), injects its fault at a
fixed point, and checks: no 5xx other than a 503 that names its reason, no hang, errors only
while the fault lasts, recovery after it, and every acknowledged write read back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from serve_app.devtools.reliability.load import (
    LEAK_MARKERS,
    TRANSPORT,
    LoadResult,
    LoadRun,
    Mix,
    body_flaws,
)
from serve_app.devtools.reliability.stack import Stack


def _load(stack: Stack, duration_s: float, rate: float, actions=(), mix: Mix | None = None, seed: int = 0):
    run = LoadRun(
        stack.base_url,
        duration_s=duration_s,
        rate=rate,
        headers=stack.headers,
        actions=actions,
        mix=mix or Mix(),
        seed=seed,
        timeout_s=60.0,
    )
    return asyncio.run(run.run())


def _outcome(name: str, result: LoadResult, checks: dict[str, bool], **figures: Any) -> dict[str, Any]:
    summary = result.summary()
    verify = result.verify or {"acknowledged_writes": 0, "documents_checked": 0, "lost": []}
    checks = {
        "fault injected as planned": not [e for e in result.events if "error" in e],
        "no 5xx other than a 503 with a reason": summary["server_errors"] == 0,
        "no hang (every request answered)": summary["hangs"] == 0,
        "acknowledged writes read back": not verify["lost"],
        "every error body: the cause in one line, no internals, the request id": summary["unclean_errors"]
        == 0,
        **checks,
    }
    return {
        "scenario": name,
        "passed": all(checks.values()),
        "checks": checks,
        "requests": summary["total"]["requests"],
        "errors": summary["total"]["errors"],
        "by_status": summary["total"]["by_status"],
        "degraded": summary["total"]["degraded"],
        "acknowledged_writes": verify["acknowledged_writes"],
        "documents_checked": verify["documents_checked"],
        "searched_back": verify.get("searched_back", 0),
        "lost": verify["lost"][:10],
        "events": result.events,
        "summary": summary,
        **figures,
    }


def _wait(predicate: Callable[[], bool], timeout_s: float, every_s: float = 0.25) -> float | None:
    """Seconds until ``predicate()`` held, or None if it did not within ``timeout_s``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        try:
            if predicate():
                return round(time.monotonic() - start, 2)
        except Exception:
            pass
        time.sleep(every_s)
    return None


def _event(result: LoadResult, action: str) -> Any:
    """What a fault action returned (``{}`` when it failed or did not run)."""
    found = next((e for e in result.events if e["action"] == action), {})
    return found.get("detail") if found.get("detail") is not None else {}


def baseline(stack: Stack, duration_s: float, rate: float) -> dict[str, Any]:
    """The mixed load with no fault: the reference for the others."""
    result = _load(stack, duration_s, rate)
    return _outcome("baseline", result, {"no errors": result.summary()["total"]["errors"] == 0})


def _embed_unique(stack: Stack, label: str) -> dict[str, Any]:
    """One embedding of a text never seen before: it must reach the model (and, if Redis is up,
    be written to it)."""
    with stack.client(timeout_s=30) as c:
        r = c.post("/v1/embed", json={"input": [f"{label} {time.time_ns()} キャッシュ確認"]})
    return {"status": r.status_code, "cached": r.json()["data"][0].get("cached") if r.is_success else None}


def redis_outage(stack: Stack, duration_s: float, rate: float) -> dict[str, Any]:
    """Redis SIGKILLed at 1/3 of the run, restarted (empty) at 2/3: the cache is skipped, nothing
    fails, and once Redis is back the service writes to it again (measured from the restart)."""
    import redis

    kill_at, back_at = duration_s / 3, 2 * duration_s / 3

    def probe() -> dict[str, Any]:
        with stack.client(timeout_s=30) as c:
            ready = c.get("/readyz").json()["checks"]["redis"]
        detail = str(ready.get("detail") or "")
        return {
            "embed": _embed_unique(stack, "redis down"),
            "readyz": ready.get("status"),
            "readyz_leaks": [m for m in LEAK_MARKERS if m in detail],
        }

    def restart() -> float | None:
        stack.redis.start()  # no persistence: it comes back empty
        with contextlib.closing(redis.Redis.from_url(stack.redis.url, socket_timeout=2)) as keys:

            def written_again() -> bool:
                _embed_unique(stack, "redis back")
                return keys.dbsize() > 0

            return _wait(written_again, 60, every_s=0.5)

    result = _load(
        stack,
        duration_s,
        rate,
        [
            (kill_at, "SIGKILL redis-server", stack.redis.kill),
            ((kill_at + back_at) / 2, "probe", probe),
            (back_at, "start redis-server", restart),
        ],
    )
    probed = _event(result, "probe")
    cache_back = _event(result, "start redis-server")
    return _outcome(
        "redis",
        result,
        {
            "no errors": result.summary()["total"]["errors"] == 0,
            "while down: embeddings served, readiness not ok": probed.get("embed", {}).get("status") == 200
            and probed.get("readyz") not in (None, "ok"),
            "while down: readiness names the cause in one line": probed.get("readyz_leaks") == [],
            "cache written again after the restart": isinstance(cache_back, float),
        },
        recovery_s=cache_back if isinstance(cache_back, float) else None,
        recovery_note="restart → the service writes to Redis again (its breaker closed)",
    )


def milvus_outage(stack: Stack, duration_s: float, rate: float) -> dict[str, Any]:
    """Milvus SIGKILLed at 1/3, restarted at 2/3: searches and writes answer 503 with a reason while
    it is down (embeddings keep working), everything recovers, and every acknowledged write is back."""
    kill_at, back_at = duration_s / 3, 2 * duration_s / 3

    def probe() -> dict[str, Any]:
        """One search and one embedding in the middle of the outage, whatever the load drew."""
        with stack.client(timeout_s=30) as c:
            search = c.post("/v1/search", json={"query": "冪等キー", "rerank": False})
            embed = c.post("/v1/embed", json={"input": ["障害中の埋め込み"]})
            milvus = c.get("/readyz").json()["checks"]["milvus"]
        body = search.json()
        return {
            "search": [search.status_code, body.get("error")],
            "detail": body.get("detail"),
            "flaws": body_flaws(search),
            "readyz_leaks": [m for m in LEAK_MARKERS if m in str(milvus.get("detail") or "")],
            "embed": embed.status_code,
        }

    result = _load(
        stack,
        duration_s,
        rate,
        [
            (kill_at, "SIGKILL milvus-lite server", stack.milvus.kill),
            ((kill_at + back_at) / 2, "probe", probe),
            (back_at, "start milvus", stack.milvus.start),
        ],
        mix=Mix(search=4, embed=2, ingest=4),  # many writes acknowledged before the kill
    )
    started = next(
        (e["done_s"] for e in result.events if e["action"] == "start milvus" and "done_s" in e), None
    )
    probed = _event(result, "probe")
    errors = [s for s in result.samples if not s.ok]
    outside = [s for s in errors if s.due_s + s.latency_s < kill_at]
    recovery = result.recovery_s(started) if started is not None else None
    return _outcome(
        "milvus",
        result,
        {
            "every error is a 503 with a reason": all(
                s.status == 503 and "unavailable" in s.reason for s in errors
            ),
            "no error before the kill": not outside,
            "a search while down: 503 vector store unavailable": probed.get("search")
            == [503, "vector store unavailable"],
            "its detail names the cause in one line (no traceback, pid, IP, colours)": probed.get("flaws")
            == []
            and "Milvus" in str(probed.get("detail"))
            and probed.get("readyz_leaks") == [],
            "an embedding while down: 200": probed.get("embed") == 200,
            "recovered within 30 s of the restart (requests succeed after)": recovery is not None
            and recovery <= 30,
        },
        recovery_s=recovery,
        recovery_note="after the restart returned (Milvus answering again), until the last failed request",
        down_s=round(started - kill_at, 1) if started is not None else None,
        reasons=sorted({s.reason.split('"detail"')[0][:80] for s in errors})[:3],
        detail_while_down=probed.get("detail"),
    )


def _llm_used(stack: Stack) -> bool:
    """A search whose expansion came from the LLM (not the glossary fallback)."""
    with stack.client(timeout_s=30) as c:
        body = {"query": f"トークンの有効期限 {time.time_ns() % 1000}", "rerank": False, "explain": True}
        answer = c.post("/v1/search", json=body).json()
    return (answer.get("explain") or {}).get("expansion", {}).get("llm") == "ok"


def expander_faults(stack: Stack, duration_s: float, rate: float) -> dict[str, Any]:
    """The LLM endpoint goes down, then slow (5 s), then returns garbage, then recovers: every
    search still answers 200, a new query's flagged ``degraded`` while the LLM is out (a repeated
    one keeps the expansion the Ingress remembers, ``serve.expansion_cache_s``); readiness shows the
    expander down while its breaker is open; the LLM is used again once it is healthy."""
    llm = stack.llm
    q = duration_s / 5

    def mode(name: str) -> Callable[[], Any]:
        def switch() -> Any:
            if name == "down":
                llm.stop()
                return name
            if not llm.server.started or llm.server.should_exit:
                llm.start()
            llm.mode = name
            if name == "ok":  # recovery: until a search's expansion comes from the LLM again
                return _wait(lambda: _llm_used(stack), 60, every_s=0.5)
            return name

        return switch

    new_query_degraded: list[bool] = []

    def readiness_while_down() -> list[str]:
        """Searches of new queries (each a failed expansion: a repeated query keeps the expansion
        the Ingress remembers) and /readyz's expander status after each, until it shows the
        breaker open or the outage ends."""
        seen: list[str] = []
        end = time.monotonic() + q - 1.0
        with stack.client(timeout_s=30) as c:
            while time.monotonic() < end and "down" not in seen:
                answer = c.post("/v1/search", json={"query": f"有効期限 {time.time_ns()}", "rerank": False})
                new_query_degraded.append("expander" in answer.json().get("degraded", []))
                seen.append(c.get("/readyz").json()["checks"]["expander"]["status"])
        return seen

    result = _load(
        stack,
        duration_s,
        rate,
        [
            (q, "LLM down", mode("down")),
            (q + 0.2, "readiness while down", readiness_while_down),
            (2 * q, "LLM slow (5 s)", mode("slow")),
            (3 * q, "LLM garbage", mode("garbage")),
            (4 * q, "LLM ok", mode("ok")),
        ],
        mix=Mix(search=8, embed=1, ingest=1),
    )
    llm.mode = "ok"
    back = _event(result, "LLM ok")
    seen = _event(result, "readiness while down")
    summary = result.summary()
    searches = summary["ops"].get("search", {})
    return _outcome(
        "expander",
        result,
        {
            "no errors": summary["total"]["errors"] == 0,
            "new queries fell back, flagged degraded": bool(new_query_degraded) and all(new_query_degraded),
            "readiness showed the expander down during the outage": "down" in (seen or []),
            "LLM used again after it recovered": isinstance(back, float),
        },
        readiness_while_down=seen,
        load_searches_degraded=searches.get("degraded", 0),
        recovery_s=back if isinstance(back, float) else None,
        recovery_note="LLM healthy → a search's expansion comes from the LLM again (breaker closed)",
    )


def embedder_replica_killed(stack: Stack, duration_s: float, rate: float) -> dict[str, Any]:
    """One of the two Embedder replicas is SIGKILLed at 1/3, with a burst of embedding requests in
    flight on both: Serve replaces it, the calls it held are repeated on the other replica, and
    errors are counted and bounded."""
    from concurrent.futures import ThreadPoolExecutor

    from ray import serve

    before = stack.replica_pids()
    kill_at = duration_s / 3
    burst = 8

    def burst_and_kill() -> dict[str, Any]:
        """``burst`` slow embeddings (unique long texts) sent together, the kill 0.3 s later: the
        requests that were sent before the kill and answered after it were in flight at the kill."""
        text = "障害注入の試験文。Fault injection test sentence. " * 40

        def one(i: int) -> tuple[float, float, int]:
            sent = time.monotonic()
            texts = [f"{i}.{k} {time.time_ns()} {text}" for k in range(4)]
            with stack.client(timeout_s=60) as c:
                status = c.post("/v1/embed", json={"input": texts}).status_code
            return sent, time.monotonic(), status

        pid = min(before)  # asking the replicas now would queue behind the burst
        with ThreadPoolExecutor(burst) as pool:
            futures = [pool.submit(one, i) for i in range(burst)]
            time.sleep(0.3)
            killed_at = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            answers = [f.result() for f in futures]
        in_flight = [status for sent, done, status in answers if sent < killed_at < done]
        return {"pid": pid, "in_flight": len(in_flight), "in_flight_ok": in_flight.count(200)}

    result = _load(stack, duration_s, rate, [(kill_at, "SIGKILL one Embedder replica", burst_and_kill)])

    def replaced() -> bool:
        status = serve.status().applications[stack.app_name].deployments["Embedder"]
        pids = stack.replica_pids()
        return status.status == "HEALTHY" and len(pids) >= len(before) and pids != before

    back = _wait(replaced, 120, every_s=1)
    killed = _event(result, "SIGKILL one Embedder replica")
    summary = result.summary()
    errors = [s for s in result.samples if not s.ok]
    return _outcome(
        "embedder",
        result,
        {
            "errors only around the kill": all(kill_at - 1 <= s.due_s <= kill_at + 15 for s in errors),
            "errors bounded (at most 5 % of requests)": len(errors) <= max(1, 0.05 * len(result.samples)),
            "requests in flight at the kill answered": killed.get("in_flight", 0) > 0
            and killed.get("in_flight_ok") == killed.get("in_flight"),
            "replica replaced": back is not None,
        },
        replicas_before=sorted(before),
        in_flight_at_kill=killed.get("in_flight"),
        in_flight_ok=killed.get("in_flight_ok"),
        recovery_s=back,
        recovery_note="after the load: Serve reports the replacement HEALTHY",
        error_count=summary["total"]["errors"],
    )


def ingress_replica_killed(stack: Stack, duration_s: float, rate: float) -> dict[str, Any]:
    """The only Ingress replica, the HTTP server behind the app's port, is SIGKILLed at 1/3: Serve
    starts another, and the requests sent meanwhile wait for it (HAProxy's backup, Serve's own
    proxy, holds them; with ``serve.ingress: proxy`` that proxy's router does) instead of failing.
    A request the dead process was already handling has no one left to answer it: its connection
    closes without a response (a transport error the client sees), and only such requests may
    fail."""
    from ray import serve

    kill_at = duration_s / 3

    def ingress_pids() -> set[int]:
        return set(stack.process_tree().get("ray: Ingress", []))

    before = ingress_pids()

    def kill() -> dict[str, Any]:
        for pid in before:
            os.kill(pid, signal.SIGKILL)
        return {"pids": sorted(before)}

    result = _load(stack, duration_s, rate, [(kill_at, "SIGKILL the Ingress replica", kill)])

    def replaced() -> bool:
        status = serve.status().applications[stack.app_name].deployments["Ingress"]
        pids = ingress_pids()
        return status.status == "HEALTHY" and bool(pids) and not pids & before

    back = _wait(replaced, 120, every_s=1)
    summary = result.summary()
    errors = [s for s in result.samples if not s.ok]
    return _outcome(
        "ingress",
        result,
        {
            "one Ingress replica to kill": len(before) == 1,
            "errors only for requests the killed process held (sent 1 s before to 0.5 s after "
            "the kill, a closed connection)": all(
                kill_at - 1 <= s.due_s <= kill_at + 0.5 and s.status == TRANSPORT for s in errors
            ),
            "replica replaced": back is not None,
        },
        replicas_before=sorted(before),
        recovery_s=back,
        recovery_note="after the load: Serve reports the replacement HEALTHY",
        slowest_ms=summary["total"]["max"],
        error_count=summary["total"]["errors"],
    )


def _corpus(path: Path, n: int, version: str) -> None:
    """``n`` documents of three paragraphs (three chunks of at most 700 characters), each chunk
    marked with the version."""
    lines = []
    for i in range(n):
        mark = f"ingest-{version}-{i}"
        paragraphs = [
            f"{mark}: 設定ファイルの項目{i}は再起動なしで反映されます。変更は監査ログに記録され、"
            f"ロールバックは管理画面から行います。反映までの時間は最大{i % 7 + 1}秒です。" * 4,
            f"{mark}: Item {i} of the configuration applies without a restart. Changes are written to the "
            f"audit log and can be rolled back from the admin console within {i % 5 + 1} minutes. " * 3,
            f"{mark}: 項目{i}の既定値は {i * 10} です。The default of item {i} is {i * 10} ({version}).",
        ]
        row = {"_id": f"ik/{i}", "title": f"設定 {i}", "text": "\n\n".join(paragraphs)}
        lines.append(json.dumps(row, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _ingest_env(stack: Stack) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPECRAG_")}
    env.update(
        SPECRAG_MILVUS_URI=stack.milvus.uri,
        SPECRAG_MILVUS__COLLECTION=stack.settings.milvus.collection,
        SPECRAG_MODEL_PATH=str(stack.settings.model.name_or_path),
        SPECRAG_INGEST__STATUS_EVERY_S="0.2",
    )
    return env


class _Job:
    """A job in its own process group, its output in a file (a pipe nobody reads could fill up
    and stall it); ``finish`` kills the whole group if it overruns, so nothing outlives a scenario."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.out, self.err = log.with_suffix(".out"), log.with_suffix(".err")
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, *args], env=env, stdout=out, stderr=err, start_new_session=True
            )

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def finish(self, timeout_s: float) -> int:
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def stdout(self) -> str:
        return self.out.read_text(encoding="utf-8", errors="replace")

    def tail(self, n: int = 2000) -> str:
        return (self.err.read_text(encoding="utf-8", errors="replace") + self.stdout())[-n:]


def _ingest(path: Path, env: dict[str, str], batch: int = 4) -> _Job:
    args = ["-m", "serve_app.cli", "ingest", str(path), "--batch-size", str(batch)]
    return _Job(args, env, path.parent / f"ingest-{time.monotonic_ns()}")


def ingest_interrupted(stack: Stack, duration_s: float, rate: float, docs: int = 48) -> dict[str, Any]:
    """``specrag ingest`` of new versions SIGKILLed mid-way while searches run: every document is
    served whole in its old or its new version, never a mix or a part; the re-run completes."""
    from serve_app.core.store import MilvusStore

    ids = [f"ik/{i}" for i in range(docs)]
    env = _ingest_env(stack)
    with (
        tempfile.TemporaryDirectory() as tmp,
        stack.client() as client,
        contextlib.closing(MilvusStore(stack.milvus.uri, stack.settings.milvus.collection, 1)) as store,
    ):
        v1, v2 = Path(tmp) / "v1.jsonl", Path(tmp) / "v2.jsonl"
        _corpus(v1, docs, "v1")
        _corpus(v2, docs, "v2")
        first = _ingest(v1, env)
        if first.finish(600) != 0:
            raise RuntimeError(f"the first ingest failed:\n{first.tail()}")
        base = {d: client.get(f"/v1/documents/{d}").json() for d in ids}

        def moved_on() -> bool:  # one query for all documents, straight from Milvus
            current = store.doc_versions(ids)
            return sum(current[d][0] > base[d]["version"] for d in ids) >= 2

        job = _ingest(v2, env)
        started = time.monotonic()
        moved = _wait(moved_on, 300, 0.05)
        job.kill()
        killed_after = round(time.monotonic() - started, 1)
        state = {d: client.get(f"/v1/documents/{d}").json() for d in ids}
        new = [d for d in ids if state[d]["version"] > base[d]["version"]]
        served: dict[str, list[str]] = {}
        for d in ids:
            marker = "v2" if d in new else "v1"
            body = {"query": f"ingest {marker} {d}", "top_k": 10, "rerank": False, "expand": False}
            body["filters"] = {"doc_ids": [d]}
            served[d] = [r["text"] for r in client.post("/v1/search", json=body).json()["results"]]
        # Searches keep answering while the re-run writes the rest.
        rerun = _ingest(v2, env)
        during = _load(stack, min(duration_s, 20), rate, mix=Mix(search=1, embed=0, ingest=0))
        rerun_rc = rerun.finish(600)
        final = {d: client.get(f"/v1/documents/{d}").json() for d in ids}
    # Whole: the served version has all its chunks (as many as that version has once complete)
    # and every chunk a search returns belongs to it.
    mixed = []
    for d in ids:
        marker, complete_count = ("v2", final[d]["chunks"]) if d in new else ("v1", base[d]["chunks"])
        texts = served[d]
        if (
            state[d]["chunks"] != complete_count
            or not texts
            or not all(f"ingest-{marker}-" in t for t in texts)
        ):
            mixed.append({"doc_id": d, "version": marker, "chunks": state[d]["chunks"], "of": complete_count})
    whole = docs - len(mixed)
    complete = all(final[d]["version"] > base[d]["version"] for d in ids)
    return _outcome(
        "ingest-kill",
        during,
        {
            "killed mid-way (some documents new, some old)": moved is not None and 0 < len(new) < docs,
            "every document served whole in one version": not mixed,
            "re-run completes": rerun_rc == 0 and complete,
            "no search error during the re-run": during.summary()["total"]["errors"] == 0,
        },
        documents=docs,
        new_at_kill=len(new),
        killed_after_s=killed_after,
        whole_documents=whole,
        mixed=mixed[:5],
    )


def reembed_interrupted(stack: Stack, duration_s: float, rate: float) -> dict[str, Any]:
    """The weekly re-embed job SIGKILLed mid-build under search load: the alias stays on the live
    collection, searches keep answering; a re-run resumes, validates and switches."""
    from serve_app.core.meta import MetaStore
    from serve_app.core.store import MilvusStore

    alias = stack.settings.milvus.collection
    env = _ingest_env(stack)
    env["SPECRAG_REINDEX__LEASE_S"] = "2"
    args = ["-m", "jobs.reembed", "--local", "--batch-size", "4"]
    with (
        tempfile.TemporaryDirectory() as tmp,
        contextlib.closing(MilvusStore(stack.milvus.uri, alias, 1)) as store,
    ):
        meta = MetaStore(store)
        original = store.resolve()

        def building() -> bool:
            state = meta.get("reindex", alias) or {}
            return state.get("phase") == "building" and state.get("done", 0) >= 8

        first = _Job(args, env, Path(tmp) / "first.log")
        reached = _wait(building, 300, 0.1)
        first.kill()
        alias_kept = store.resolve() == original
        during = _load(stack, min(duration_s, 20), rate, mix=Mix(search=1, embed=0, ingest=0))
        time.sleep(2.5)  # the killed job's lease runs out
        second = _Job(args, env, Path(tmp) / "second.log")
        rc = second.finish(900)
        lines = second.stdout().strip().splitlines()
        last: dict[str, Any] = {}
        if rc == 0 and lines:
            with contextlib.suppress(json.JSONDecodeError):
                last = json.loads(lines[-1])
        switched = store.resolve() != original
        after = _load(stack, 10, rate, mix=Mix(search=1, embed=0, ingest=0), seed=1)
        job_error = second.tail(500) if rc else None
    embedded, chunks = last.get("embedded"), last.get("chunks")
    return _outcome(
        "reembed-kill",
        during,
        {
            "killed mid-build": reached is not None,
            "alias untouched by the killed job": alias_kept,
            "searches answer during the outage of the job": during.summary()["total"]["errors"] == 0,
            "re-run resumes (re-embeds fewer than all chunks)": isinstance(embedded, int)
            and isinstance(chunks, int)
            and embedded < chunks,
            "re-run completes and switches": last.get("phase") == "done" and switched,
            "searches answer after the switch": after.summary()["total"]["errors"] == 0,
        },
        resumed_embedded=embedded,
        chunks=chunks,
        validation=last.get("validation"),
        job_error=job_error,
    )


SCENARIOS: dict[str, Callable[[Stack, float, float], dict[str, Any]]] = {
    "baseline": baseline,
    "redis": redis_outage,
    "milvus": milvus_outage,
    "expander": expander_faults,
    "embedder": embedder_replica_killed,
    "ingress": ingress_replica_killed,
    "ingest-kill": ingest_interrupted,
    "reembed-kill": reembed_interrupted,
}
