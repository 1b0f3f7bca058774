"""``specrag reliability run|fuzz|soak``: the reliability suite (``devtools.reliability``).

Each starts the real local stack on loopback (fresh data under ``--home``), runs, prints a table
and rewrites its own section of ``docs/RELIABILITY.md`` plus its part of the raw JSON.
``specrag bench load`` (in ``cli.bench``) runs the same stack under the mixed load alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from serve_app.cli.common import ensure_model, prepare
from serve_app.devtools.common import command_line, machine_description
from serve_app.settings import DEFAULT_HOME

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from serve_app.devtools.reliability.stack import Stack
    from serve_app.settings import Settings

reliability_app = typer.Typer(
    no_args_is_help=True, help="Fault injection, fuzzing and soak runs against the real local stack."
)
HomeOpt = Annotated[Path, typer.Option(help="Scratch data for the stack (wiped first).")]
OutOpt = Annotated[Path, typer.Option(help="Raw figures (JSON; only this command's part is replaced).")]
MdOpt = Annotated[Path, typer.Option(help="Markdown whose section this command rewrites.")]
RAW = Path("docs/benchmarks/reliability.json")
DOC = Path("docs/RELIABILITY.md")
# What the reliability figures ran on besides the host (``machine_description``'s suffix).
STACK_MACHINE = ", no GPU (Milvus Lite server, local Ray)"


def local_stack(home: Path, settings: Settings) -> AbstractContextManager[Stack]:
    """``devtools.reliability.stack.local_stack``, imported only when a command runs (it pulls in Ray)."""
    from serve_app.devtools.reliability.stack import local_stack as start

    return start(home, settings)


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
    settings = prepare(verbose)
    ensure_model(settings)
    previous = json.loads(out.read_text()).get("scenarios", {}) if out.exists() else {}
    results: dict[str, dict] = {}
    with local_stack(home, settings) as stack:
        for name in names:
            typer.echo(f"--- {name}")
            result = SCENARIOS[name](stack, duration, rate)
            result.update(duration_s=duration, rate=rate, machine=machine_description(STACK_MACHINE))
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
    from serve_app.devtools.reliability.report import merge_json, soak_section, write
    from serve_app.devtools.reliability.soak import soak

    settings = prepare(verbose)
    ensure_model(settings)
    with local_stack(home, settings) as stack:
        report = soak(stack, minutes, rate, sample_s, warmup_s)
    report["machine"] = machine_description(STACK_MACHINE)
    merge_json(out, "soak", report)
    write(markdown, soak_section(report, command_line("specrag reliability soak")))
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
    ] = 150,
    min_cases: Annotated[
        int, typer.Option(min=0, help="Fail unless schemathesis generated at least this many requests.")
    ] = 2000,
    home: HomeOpt = DEFAULT_HOME / "reliability",
    out: OutOpt = RAW,
    markdown: MdOpt = DOC,
    verbose: bool = False,
) -> None:
    """Bad input: fixed hostile cases, then schemathesis over the OpenAPI schema (no 5xx, no hang,
    every answer as the document declares it: status, content type, headers, schema)."""
    from serve_app.devtools.reliability.fuzz import bad_inputs, schemathesis_run
    from serve_app.devtools.reliability.report import badinput_section, fuzz_section, merge_json, write

    settings = prepare(verbose)
    ensure_model(settings)
    with local_stack(home, settings) as stack:
        bad = bad_inputs(stack.base_url, stack.model_name, body_limit=stack.settings.limits.max_body_bytes)
        fuzz = schemathesis_run(stack.base_url, max_examples, home / "schemathesis")
    command = command_line("specrag reliability fuzz")
    merge_json(out, "bad_input", bad)
    merge_json(out, "fuzz", fuzz)
    write(markdown, badinput_section(bad, command))
    write(markdown, fuzz_section(fuzz, command))
    typer.echo(bad["summary"])
    typer.echo(
        f"schemathesis: {fuzz['cases']} cases, {fuzz['server_errors']} 5xx, {fuzz['hangs']} hangs, "
        f"{fuzz['non_conforming']} not as documented"
    )
    typer.echo(f"written: {out}, {markdown}")
    if fuzz["cases"] < min_cases:
        typer.echo(f"only {fuzz['cases']} cases generated, fewer than --min-cases {min_cases}", err=True)
    if not (bad["passed"] and fuzz["passed"] and fuzz["cases"] >= min_cases):
        raise typer.Exit(1)
