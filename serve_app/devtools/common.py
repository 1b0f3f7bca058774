"""What the dev tools (benchmarks, reliability suite, ``specrag eval``) share when they record figures:
percentiles, the Markdown section swap, the recorded command line and the machine's description.

Each existed in several places with small differences; this is the one copy of each. Launchers
(Milvus Lite, Redis, local Ray, Serve) live in :mod:`serve_app.devtools.local_stack`.
"""

from __future__ import annotations

import math
import os
import platform
import shlex
import statistics
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------------------------------
# Percentiles


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by linear interpolation between closest ranks; None for no values.

    The one definition for every recorded figure: numpy's default (``method="linear"``), so a p95
    here equals ``numpy.percentile(values, 95)``, and p50 is the median (``statistics.median``).
    It replaced a nearest-rank variant in the fan-out benchmark (``ordered[int(q * n)]``), which
    took the upper of the two middle values for an even count and so reported p50s above the median.
    """
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo = math.floor(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def latency_summary(seconds: Sequence[float]) -> dict[str, float | None]:
    """p50 / p95 / p99 / mean / max of latencies in seconds, in milliseconds rounded to 0.1."""

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 1)

    return {
        "p50": ms(percentile(seconds, 50)),
        "p95": ms(percentile(seconds, 95)),
        "p99": ms(percentile(seconds, 99)),
        "mean": ms(statistics.fmean(seconds)) if seconds else None,
        "max": ms(max(seconds)) if seconds else None,
    }


# --------------------------------------------------------------------------------------------------
# Markdown sections


def replace_section(document: str, section: str) -> str:
    """Swap the section marked like ``section`` (markers included), or append it when absent.

    A section's first line is its start marker and its last line its end marker (e.g.
    ``<!-- bench:embed:start -->`` … ``<!-- bench:embed:end -->``); text around it is kept.
    """
    mark_start, mark_end = section.split("\n", 1)[0], section.rstrip("\n").rsplit("\n", 1)[-1]
    start, end = document.find(mark_start), document.find(mark_end)
    if start < 0 and end < 0:
        return document.rstrip("\n") + ("\n\n" if document.strip() else "") + section + "\n"
    if start < 0 or end < start:
        raise ValueError(f"unbalanced {mark_start} / {mark_end} markers")
    return document[:start] + section + document[end + len(mark_end) :]


# --------------------------------------------------------------------------------------------------
# The command line recorded with the figures


def command_line(
    default: str, *, secret_options: Iterable[str] = (), argv: Sequence[str] | None = None
) -> str:
    """How this command was invoked, for the figures it writes.

    The ``specrag ...`` line exactly as typed when run through the ``specrag`` script; ``default``
    otherwise (``python -m``, tests, a job) and whenever the line carries one of ``secret_options``
    (``--redis-url`` may hold a password: the caller's ``default`` then names it without its value).
    """
    argv = sys.argv if argv is None else argv
    if not argv or Path(argv[0]).name != "specrag":
        return default
    secret = tuple(secret_options)
    if any(a == opt or a.startswith(f"{opt}=") for a in argv[1:] for opt in secret):
        return default
    return shlex.join(["specrag", *argv[1:]])


# --------------------------------------------------------------------------------------------------
# The machine the figures were taken on


def machine_facts() -> dict[str, Any]:
    """Platform, architecture, Python and CPU count: the part of every machine record that is this host's."""
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }


def machine_description(suffix: str = "") -> str:
    """``x86_64 cpus=2`` plus ``suffix`` verbatim: the machine line of eval, bench and reliability reports.

    One format for the four reports that record a line (the embed benchmark records a dict:
    :func:`machine_facts` plus its model and load figures).
    """
    return f"{platform.machine()} cpus={os.cpu_count()}{suffix}"
