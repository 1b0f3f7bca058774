"""The helpers every dev tool records its figures with: percentiles, Markdown sections, the command
line, the machine."""

from __future__ import annotations

import os
import platform
import random
import statistics

import numpy as np
import pytest

from serve_app.devtools import common

MARK_START = "<!-- bench:embed:start -->"
MARK_END = "<!-- bench:embed:end -->"

# --------------------------------------------------------------------------------------------------
# Percentiles (moved from test_bench.py, plus the checks that pin the one definition)


def test_percentile_matches_linear_interpolation() -> None:
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert common.percentile(values, 50) == 3.0
    assert common.percentile(values, 0) == 1.0 and common.percentile(values, 100) == 5.0
    assert common.percentile(values, 95) == pytest.approx(4.8)
    assert common.percentile([7.0], 99) == 7.0
    assert common.percentile([], 50) is None


@pytest.mark.parametrize("n", [1, 2, 3, 4, 10, 101, 1000])
@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 95, 99, 99.9, 100])
def test_percentile_is_numpys_default(n: int, q: float) -> None:
    values = [random.Random(n).expovariate(1 / 40) for _ in range(n)]
    assert common.percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-12)


def test_p50_is_the_median_also_for_an_even_count() -> None:
    """The nearest-rank variant the fan-out benchmark had took the upper middle value (3 here)."""
    assert common.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5 == statistics.median([1.0, 2.0, 3.0, 4.0])
    values = [random.Random(7).uniform(0, 100) for _ in range(64)]
    assert common.percentile(values, 50) == pytest.approx(statistics.median(values))


def test_latency_summary_in_milliseconds() -> None:
    summary = common.latency_summary([0.010, 0.020, 0.030])
    assert summary["p50"] == 20.0 and summary["max"] == 30.0 and summary["mean"] == 20.0
    assert common.latency_summary([]) == {"p50": None, "p95": None, "p99": None, "mean": None, "max": None}


def test_latency_summary_percentiles_interpolate() -> None:
    summary = common.latency_summary([0.01 * i for i in range(1, 11)])  # 10, 20, ... 100 ms
    assert summary == {"p50": 55.0, "p95": 95.5, "p99": 99.1, "mean": 55.0, "max": 100.0}


# --------------------------------------------------------------------------------------------------
# Markdown sections (moved from test_bench.py)


def test_replace_section_appends_then_replaces_in_place() -> None:
    doc = "# Benchmarks\n\n## Retrieval\n\ntext\n"
    first = common.replace_section(doc, f"{MARK_START}\nv1\n{MARK_END}")
    assert first.startswith(doc.rstrip("\n") + "\n\n" + MARK_START) and first.endswith(MARK_END + "\n")
    tail = "\n## Later section\nkept\n"
    second = common.replace_section(first + tail, f"{MARK_START}\nv2\n{MARK_END}")
    assert "v1" not in second and "v2" in second
    assert second.startswith(doc.rstrip("\n")) and second.endswith(tail)
    assert second.count(MARK_START) == 1
    assert common.replace_section("", "S") == "S\n"
    with pytest.raises(ValueError):
        common.replace_section(f"{MARK_END}\n{MARK_START}", f"{MARK_START}\nS\n{MARK_END}")


def test_replace_section_refuses_a_start_marker_without_its_end() -> None:
    with pytest.raises(ValueError, match="unbalanced"):
        common.replace_section(f"# Doc\n{MARK_START}\nold\n", f"{MARK_START}\nnew\n{MARK_END}")


def test_bench_and_reliability_modules_share_the_one_replace_section() -> None:
    from serve_app.devtools.bench import embed, reembed, search
    from serve_app.devtools.reliability import report

    assert (
        embed.replace_section is reembed.replace_section is search.replace_section is common.replace_section
    )
    assert report.replace_section is common.replace_section


# --------------------------------------------------------------------------------------------------
# The recorded command line


def test_command_line_quotes_what_was_typed_through_specrag() -> None:
    argv = ["/venv/bin/specrag", "bench", "search", "eval/jaquad ret", "--requests", "5"]
    assert common.command_line("fallback", argv=argv) == "specrag bench search 'eval/jaquad ret' --requests 5"


@pytest.mark.parametrize(
    "argv",
    [
        ["/venv/bin/python", "-m", "serve_app.cli", "eval", "x"],
        ["pytest", "-q"],
        ["/x/jobs/ingest.py"],
        [],
    ],
)
def test_command_line_falls_back_when_not_run_as_specrag(argv: list[str]) -> None:
    assert common.command_line("specrag eval DATA", argv=argv) == "specrag eval DATA"


@pytest.mark.parametrize(
    "argv",
    [
        ["specrag", "bench", "embed", "--redis-url", "redis://:pw@h:1/0"],
        ["specrag", "bench", "embed", "--redis-url=redis://:pw@h:1/0"],
    ],
)
def test_command_line_never_records_a_secret_option(argv: list[str]) -> None:
    line = common.command_line(
        "specrag bench embed --redis-url REDIS_URL", secret_options=["--redis-url"], argv=argv
    )
    assert line == "specrag bench embed --redis-url REDIS_URL" and "pw" not in line


def test_command_line_reads_sys_argv_by_default(monkeypatch) -> None:
    monkeypatch.setattr("sys.argv", ["/usr/local/bin/specrag", "reliability", "soak", "--minutes", "1"])
    assert common.command_line("x") == "specrag reliability soak --minutes 1"
    monkeypatch.setattr("sys.argv", ["/usr/bin/python3", "-c"])
    assert common.command_line("x") == "x"


# --------------------------------------------------------------------------------------------------
# The machine


def test_machine_description_is_one_line_with_architecture_and_cpus() -> None:
    base = f"{platform.machine()} cpus={os.cpu_count()}"
    assert common.machine_description() == base
    assert common.machine_description(" CPython") == f"{base} CPython"
    assert "\n" not in common.machine_description(", no GPU (Milvus Lite server, local Ray)")


def test_machine_facts_carry_the_host_part_of_the_embed_report() -> None:
    facts = common.machine_facts()
    assert facts == {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
