"""``specrag reliability ...`` and ``specrag bench load``: the reliability suite's commands.

Each starts the real local stack on loopback (fresh data under ``--home``), runs, prints a table
and rewrites its own section of ``docs/RELIABILITY.md`` (or ``docs/BENCHMARKS.md``) plus its
part of the raw JSON.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
from pathlib import Path
from typing import Annotated

import typer

from serve_app.settings import DEFAULT_HOME

reliability_app = typer.Typer(
    no_args_is_help=True, help="Fault injection, fuzzing and soak runs against the real local stack."
)
HomeOpt = Annotated[Path, typer.Option(help="Scratch data for the stack (wiped first).")]
OutOpt = Annotated[Path, typer.Option(help="Raw figures (JSON; only this command's part is replaced).")]
MdOpt = Annotated[Path, typer.Option(help="Markdown whose section this command rewrites.")]
RAW = Path("docs/benchmarks/reliability.json")
DOC = Path("docs/RELIABILITY.md")


def _prepare(verbose: bool) -> None:
    from serve_app.cli import _ensure_model, _logging, _settings
    from serve_app.devtools.local_stack import apply_local_env

    _logging(verbose)
    apply_local_env()
    _ensure_model(_settings())


def _stack(home: Path):
    from serve_app.cli import _settings
    from serve_app.devtools.reliability.stack import local_stack

    return local_stack(home, _settings())


def _machine() -> str:
    return f"{os.cpu_count()} CPU, {platform.machine()}, no GPU (Milvus Lite server, local Ray)"


@reliability_app.command("run")
def run(
    scenario: Annotated[
        list[str] | None, typer.Option("--scenario", "-s", help="Run only these (repeatable); default all.")
    ] = None,
    duration: Annotated[float, typer.Option(min=5, help="Seconds of load per scenario.")] = 45.0,
    rate: Annotated[float, typer.Option(min=0.1, help="Requests per second (open loop).")] = 1.5,
    home: HomeOpt = DEFAULT_HOME / "reliability",
    out: OutOpt = RAW,
    markdown: MdOpt = DOC,
    verbose: bool = False,
) -> None:
    """Fault-injection scenarios under the mixed load; exits 1 if any scenario fails."""
    from serve_app.devtools.reliability.report import merge_json, scenario_command, scenarios_section, write
    from serve_app.devtools.reliability.scenarios import SCENARIOS

    names = scenario or list(SCENARIOS)
    if unknown := [n for n in names if n not in SCENARIOS]:
        raise typer.BadParameter(
            f"unknown {unknown}; choose from {', '.join(SCENARIOS)}", param_hint="--scenario"
        )
    _prepare(verbose)
    previous = json.loads(out.read_text()).get("scenarios", {}) if out.exists() else {}
    results: dict[str, dict] = {}
    with _stack(home) as stack:
        for name in names:
            typer.echo(f"--- {name}")
            result = SCENARIOS[name](stack, duration, rate)
            result.update(duration_s=duration, rate=rate, machine=_machine())
            result["command"] = scenario_command(name, result)
            results[name] = result
            failed = [c for c, ok in result["checks"].items() if not ok]
            typer.echo(
                f"{name}: {'pass' if result['passed'] else 'FAIL ' + str(failed)} "
                f"requests={result['requests']} errors={result['errors']} {result['by_status']} "
                f"recovery_s={result.get('recovery_s')} acked={result['acknowledged_writes']} "
                f"lost={len(result['lost'])}"
            )
    merged = {**previous, **results}
    ordered = {n: merged[n] for n in SCENARIOS if n in merged}
    merge_json(out, "scenarios", ordered)
    write(markdown, scenarios_section(ordered))
    typer.echo(f"written: {out}, {markdown}")
    if not all(r["passed"] for r in results.values()):
        raise typer.Exit(1)


@reliability_app.command("soak")
def soak_cmd(
    minutes: Annotated[float, typer.Option(min=0.5, help="Length of the run.")] = 10.0,
    rate: Annotated[float, typer.Option(min=0.1, help="Requests per second (open loop).")] = 1.0,
    sample_s: Annotated[float, typer.Option(min=1, help="Seconds between RSS samples.")] = 15.0,
    warmup_s: Annotated[float, typer.Option(min=0, help="Growth is measured after this.")] = 120.0,
    home: HomeOpt = DEFAULT_HOME / "reliability",
    out: OutOpt = RAW,
    markdown: MdOpt = DOC,
    verbose: bool = False,
) -> None:
    """A steady mixed load for ``--minutes`` with RSS (by process group) and latency sampled."""
    from serve_app.cli import _command_line
    from serve_app.devtools.reliability.report import merge_json, soak_section, write
    from serve_app.devtools.reliability.soak import soak

    _prepare(verbose)
    with _stack(home) as stack:
        report = soak(stack, minutes, rate, sample_s, warmup_s)
    report["machine"] = _machine()
    merge_json(out, "soak", report)
    write(markdown, soak_section(report, _command_line("specrag reliability soak")))
    for role, m in report["memory"].items():
        typer.echo(
            f"{role:8} RSS {m['after_warmup_mib']} → {m['end_mib']} MiB ({m['slope_mib_per_min']} MiB/min)"
        )
    typer.echo(json.dumps(report["summary"]["total"]))
    typer.echo(f"written: {out}, {markdown}")
    if not report["passed"]:
        raise typer.Exit(1)


@reliability_app.command("fuzz")
def fuzz_cmd(
    max_examples: Annotated[
        int, typer.Option(min=1, help="schemathesis cases per operation and phase.")
    ] = 100,
    home: HomeOpt = DEFAULT_HOME / "reliability",
    out: OutOpt = RAW,
    markdown: MdOpt = DOC,
    verbose: bool = False,
) -> None:
    """Bad input: fixed hostile cases, then schemathesis over the OpenAPI schema (no 5xx, no hang)."""
    from serve_app.cli import _command_line
    from serve_app.devtools.reliability.fuzz import bad_inputs, schemathesis_run
    from serve_app.devtools.reliability.report import badinput_section, fuzz_section, merge_json, write

    _prepare(verbose)
    with _stack(home) as stack:
        bad = bad_inputs(stack.base_url, stack.model_name, body_limit=stack.settings.limits.max_body_bytes)
        fuzz = schemathesis_run(stack.base_url, max_examples, home / "schemathesis")
    command = _command_line("specrag reliability fuzz")
    merge_json(out, "bad_input", bad)
    merge_json(out, "fuzz", fuzz)
    write(markdown, badinput_section(bad, command))
    write(markdown, fuzz_section(fuzz, command))
    typer.echo(bad["summary"])
    typer.echo(f"schemathesis: {fuzz['cases']} cases, {fuzz['server_errors']} 5xx, {fuzz['hangs']} hangs")
    typer.echo(f"written: {out}, {markdown}")
    if not (bad["passed"] and fuzz["passed"]):
        raise typer.Exit(1)


def bench_load(
    duration: Annotated[float, typer.Option(min=5, help="Seconds of load.")] = 120.0,
    rate: Annotated[float, typer.Option(min=0.1, help="Requests per second (open loop).")] = 1.5,
    mix: Annotated[
        str, typer.Option(help="Shares, e.g. search=6,embed=3,ingest=1.")
    ] = "search=6,embed=3,ingest=1",
    url: Annotated[
        str | None, typer.Option(help="A running service on loopback; default: start the local stack.")
    ] = None,
    home: HomeOpt = DEFAULT_HOME / "reliability",
    out: OutOpt = Path("docs/benchmarks/load.json"),
    markdown: MdOpt = Path("docs/BENCHMARKS.md"),
    verbose: bool = False,
) -> None:
    """Mixed load (searches ja/en/mixed, embeddings, writes): throughput, p50/p95/p99, errors."""
    import contextlib
    from dataclasses import asdict

    from serve_app.cli import _command_line
    from serve_app.devtools.bench.embed import replace_section
    from serve_app.devtools.reliability.load import LoadRun, Mix
    from serve_app.devtools.reliability.report import load_rows, load_section

    try:
        shares = Mix.parse(mix)
        if url:
            LoadRun(url)  # refuses anything but loopback before any work
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    _prepare(verbose)
    with contextlib.ExitStack() as stack_ctx:
        base = url or stack_ctx.enter_context(_stack(home)).base_url
        result = asyncio.run(LoadRun(base, duration_s=duration, rate=rate, mix=shares, timeout_s=60.0).run())
    report = {
        "rate": rate,
        "duration_s": duration,
        "mix": asdict(shares),
        "summary": result.summary(),
        "verify": result.verify,
        "machine": _machine(),
        "command": _command_line("specrag bench load"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    text = markdown.read_text(encoding="utf-8") if markdown.exists() else ""
    markdown.write_text(replace_section(text, load_section(report, str(out))), encoding="utf-8")
    typer.echo("\n".join(load_rows(report["summary"])))
    typer.echo(f"written: {out}, {markdown}")


logging.getLogger("httpx").setLevel(logging.WARNING)
