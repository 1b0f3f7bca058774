"""Markdown for ``docs/RELIABILITY.md`` and the load section of ``docs/BENCHMARKS.md``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from serve_app.devtools.common import replace_section

INJECTED = {
    "baseline": "nothing (reference)",
    "redis": "redis-server SIGKILLed at 1/3, restarted empty at 2/3",
    "milvus": "milvus-lite server SIGKILLed at 1/3, restarted at 2/3",
    "expander": "LLM endpoint down, then 5 s slow, then garbage, then back",
    "embedder": "one of two Embedder replicas SIGKILLed at 1/3, a burst of 8 embeddings in flight",
    "ingress": "the only Ingress replica (the app's HTTP server) SIGKILLed at 1/3",
    "ingest-kill": "`specrag ingest` of new versions SIGKILLed mid-way, then re-run",
    "reembed-kill": "re-embed job SIGKILLed mid-build, then re-run",
}


def _section(name: str, body: str) -> str:
    return f"<!-- reliability:{name}:start -->\n{body.rstrip()}\n<!-- reliability:{name}:end -->"


def write(path: Path, section: str) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else "# Reliability\n"
    path.write_text(replace_section(text, section).rstrip() + "\n", encoding="utf-8")


def merge_json(path: Path, key: str, value: Any) -> dict[str, Any]:
    """Keep one JSON file of raw figures; each command replaces only its own part."""
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    return data


def _statuses(by_status: dict[str, int]) -> str:
    names = {"-1": "timeout", "0": "transport", "-2": "2xx not JSON"}
    return ", ".join(f"{n}× {names.get(k, k)}" for k, n in by_status.items()) or "none"


def _data_checked(r: dict[str, Any]) -> str:
    """What the scenario read back: the load's acknowledged writes, or the job's own check."""
    parts = []
    if r["acknowledged_writes"]:
        parts.append(
            f"{r['acknowledged_writes']} acked writes, {r['documents_checked']} docs read back / "
            f"{len(r['lost'])} lost"
        )
    if "whole_documents" in r:
        parts.append(
            f"killed after {r['killed_after_s']} s with {r['new_at_kill']}/{r['documents']} docs at the new "
            f"version; {r['whole_documents']}/{r['documents']} served whole in one version"
        )
    if r.get("in_flight_at_kill") is not None:
        ok, total = r["in_flight_ok"], r["in_flight_at_kill"]
        parts.append(f"{ok}/{total} embeddings in flight at the kill answered")
    if r.get("slowest_ms") is not None:
        parts.append(f"slowest answer {r['slowest_ms'] / 1000:.1f} s (waited for the new replica)")
    if "resumed_embedded" in r:
        v, checks = r.get("validation") or {}, r["checks"]
        kept = checks.get("alias untouched by the killed job")
        parts.append(
            ("alias untouched by the kill" if kept else "ALIAS MOVED")
            + f"; the re-run re-embedded {r['resumed_embedded']} of {r['chunks']} chunks, "
            f"validation top-1 agreement {v.get('top1_agreement')}, "
            + ("switched" if checks.get("re-run completes and switches") else "NOT switched")
        )
    return "; ".join(parts) or "searches only"


def scenario_command(name: str, result: dict[str, Any]) -> str:
    """The command that reproduces one scenario's row (its own load length and rate)."""
    return result.get("command") or (
        f"specrag reliability run -s {name} --duration {result['duration_s']:g} --rate {result['rate']:g}"
    )


def scenarios_section(results: dict[str, dict[str, Any]]) -> str:
    rows = [
        "| scenario | fault injected | requests | errors | recovery | data checked | result | command |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        recovery = "—" if r.get("recovery_s") is None else f"{r['recovery_s']} s"
        if r.get("down_s") is not None:
            recovery += f" (down {r['down_s']} s)"
        errors = f"{r['errors']} ({_statuses(r['by_status'])})" if r["errors"] else "0"
        data = _data_checked(r)
        rows.append(
            f"| {name} | {INJECTED.get(name, '')} | {r['requests']} | {errors} | {recovery} | {data} | "
            f"{'**pass**' if r['passed'] else '**FAIL**'} | `{scenario_command(name, r)}` |"
        )
    checks = []
    for name, r in results.items():
        failed = [c for c, ok in r["checks"].items() if not ok]
        line = "; ".join(c for c in r["checks"]) if not failed else "FAILED: " + "; ".join(failed)
        note = f" Recovery: {r['recovery_note']}." if r.get("recovery_note") else ""
        checks.append(f"- **{name}** checks: {line}.{note}")
    machines = sorted({r["machine"] for r in results.values() if r.get("machine")})
    body = "\n".join(rows) + "\n\n" + "\n".join(checks)
    if machines:
        body += f"\n\nMachine: {'; '.join(machines)}."
    return _section("scenarios", body)


def load_rows(summary: dict[str, Any]) -> list[str]:
    rows = [
        "| operation | requests | ok/s | errors | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in [*summary["ops"].items(), ("all", summary["total"])]:
        rows.append(
            f"| {name} | {s['requests']} | {s['ok_per_s']} | {s['errors']} | {s['p50']} | {s['p95']} | "
            f"{s['p99']} | {s['max']} |"
        )
    return rows


def load_section(report: dict[str, Any], json_path: str) -> str:
    """The ``bench:load`` section of BENCHMARKS.md."""
    s = report["summary"]
    verify = report.get("verify") or {}
    body = [
        "<!-- bench:load:start -->",
        f"Mixed load, open loop at {report['rate']} requests/s for {s['elapsed_s']} s "
        f"(shares search {report['mix']['search']} : embed {report['mix']['embed']} : "
        f"ingest {report['mix']['ingest']}; searches ja / en / mixed, half the embeddings unique). "
        "Latency counts from when a request was due, so queueing shows.",
        "",
        *load_rows(s),
        "",
        "Median server-side split of a search (ms, from its `timings_ms`): "
        + ", ".join(f"{k} {v}" for k, v in s.get("search_stages_p50_ms", {}).items())
        + ". The rest of its latency is queueing in front of the replicas.",
        "",
        f"Acknowledged writes: {verify.get('acknowledged_writes', 0)}, read back "
        f"{verify.get('documents_checked', 0)} documents, lost {len(verify.get('lost', []))}. "
        f"Machine: {report.get('machine', '')}.",
        "",
        f"Command: `{report['command']}` (raw: `{json_path}`)",
        "<!-- bench:load:end -->",
    ]
    return "\n".join(body)


def soak_section(report: dict[str, Any], command: str) -> str:
    s, mem = report["summary"], report["memory"]
    verify = report.get("verify") or {}
    rows = [
        f"{report['minutes']} minutes at {report['rate']} requests/s (mixed load): {s['total']['requests']} "
        f"requests, {s['total']['errors']} errors, {verify.get('acknowledged_writes', 0)} acknowledged "
        f"writes read back, {len(verify.get('lost', []))} lost.",
        "",
        "| process group | RSS start MiB | after warm-up | end | max | growth after warm-up "
        "| slope MiB/min | slope, last third |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for role, m in mem.items():
        rows.append(
            f"| {role} | {m['start_mib']} | {m['after_warmup_mib']} | {m['end_mib']} | {m['max_mib']} | "
            f"{m['growth_after_warmup_mib']:+} | {m['slope_mib_per_min']} | "
            f"{m.get('last_third_slope_mib_per_min')} |"
        )
    rows += ["", "| minute | requests | errors | p50 ms | p95 ms | p99 ms |", "|---|---|---|---|---|---|"]
    for w in report["minutes_table"]:
        rows.append(
            f"| {int(w['from_s'] // 60) + 1} | {w['requests']} | {w['errors']} | {w['p50']} | {w['p95']} | "
            f"{w['p99']} |"
        )
    rows += ["", f"Command: `{command}`"]
    return _section("soak", "\n".join(rows))


def fuzz_section(report: dict[str, Any], command: str) -> str:
    ops = report.get("operations") or {}
    rows = [
        "| operations tested | cases generated | cases with a failure | 5xx | hangs (> limit) "
        "| not as documented | network errors |",
        "|---|---|---|---|---|---|---|",
        f"| {ops.get('tested')} of {ops.get('total')} | {report['cases']} | {report['with_failures']} | "
        f"{report['server_errors']} | {report['hangs']} | {report.get('non_conforming', '—')} | "
        f"{report['network_errors']} |",
    ]
    failures = [f"- {f['title']} ×{f['count']}: {', '.join(f['operations'])}" for f in report["failures"]]
    body = "\n".join(rows + (["", *failures] if failures else []))
    body += (
        f"\n\nschemathesis {report['version']}, phases {report['phases']}, positive and negative data, "
        f"checks {', '.join(report.get('checks') or ['not_a_server_error'])}, "
        f"at most {report['max_examples']} cases per operation and phase, "
        f"{round(report['running_time_s'] or 0)} s."
        f"\n\nCommand: `{command}`"
    )
    return _section("fuzz", body)


def badinput_section(report: dict[str, Any], command: str) -> str:
    rows = ["| input | endpoint | status (documented) | reason |", "|---|---|---|---|"]
    for case in report["cases"]:
        status = str(case["status"])
        if case.get("expected") is not None and case["status"] != case["expected"]:
            status = f"**{status} (expected {case['expected']})**"
        rows.append(f"| {case['case']} | `{case['path']}` | {status} | {case['reason'][:90]} |")
    body = "\n".join(rows) + f"\n\n{report['summary']}\n\nCommand: `{command}`"
    return _section("badinput", body)
