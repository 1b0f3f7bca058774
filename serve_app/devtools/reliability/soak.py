"""A soak run: the mixed load at a steady rate for many minutes, with every process's RSS and the
latency sampled, so a leak shows as a trend instead of a guess."""

from __future__ import annotations

import asyncio
import statistics
from typing import Any

from serve_app.devtools.reliability.load import LoadRun, Mix
from serve_app.devtools.reliability.stack import Stack


def rss_mib(pids: list[int]) -> float:
    """Resident memory of these processes together (MiB); gone processes count 0."""
    import psutil

    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            continue
    return round(total / 2**20, 1)


def slope_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MiB) in MiB per minute."""
    if len(points) < 3:
        return None
    return round(statistics.linear_regression([t for t, _ in points], [v for _, v in points]).slope * 60, 2)


def memory_trend(readings: list[dict[str, Any]], warmup_s: float) -> dict[str, dict[str, Any]]:
    """Per role: RSS first after warm-up, last, max, growth and the slope over the run after warm-up.

    Warm-up is left out because caches (embedding LRU, Milvus segments, Python allocators) fill
    there by design; a leak is growth that continues after it."""
    out: dict[str, dict[str, Any]] = {}
    roles = sorted({role for r in readings for role in r["rss_mib"]})
    for role in roles:
        points = [(r["t_s"], r["rss_mib"][role]) for r in readings if role in r["rss_mib"]]
        steady = [p for p in points if p[0] >= warmup_s] or points
        out[role] = {
            "start_mib": points[0][1],
            "after_warmup_mib": steady[0][1],
            "end_mib": steady[-1][1],
            "max_mib": max(v for _, v in points),
            "growth_after_warmup_mib": round(steady[-1][1] - steady[0][1], 1),
            "slope_mib_per_min": slope_per_min(steady),
            # A leak keeps its slope; a cache that fills flattens out by the last third.
            "last_third_slope_mib_per_min": slope_per_min(steady[len(steady) * 2 // 3 :]),
        }
    return out


def soak(stack: Stack, minutes: float, rate: float, sample_s: float = 15.0, warmup_s: float = 120.0) -> dict:
    """Run the load for ``minutes``; sample RSS by role every ``sample_s``; summarise per minute."""

    def sample(t: float) -> dict[str, Any]:
        groups = stack.process_tree()
        rss = {group: rss_mib(pids) for group, pids in groups.items()}
        rss["ray (all)"] = round(sum(v for k, v in rss.items() if k.startswith("ray")), 1)
        return {"t_s": round(t, 1), "rss_mib": rss}

    run = LoadRun(
        stack.base_url,
        duration_s=minutes * 60,
        rate=rate,
        mix=Mix(),
        headers=stack.headers,
        timeout_s=60.0,
        monitor=sample,
        monitor_every_s=sample_s,
    )
    result = asyncio.run(run.run())
    summary = result.summary()
    windows = result.windows(60.0)
    p99s = [w["p99"] for w in windows if w["p99"] is not None]
    return {
        "minutes": minutes,
        "rate": rate,
        "summary": summary,
        "verify": result.verify,
        "minutes_table": windows,
        "memory": memory_trend(result.readings, warmup_s),
        "readings": result.readings,
        "p99_first_last_min_ms": [p99s[0], p99s[-1]] if p99s else None,
        "passed": summary["total"]["errors"] == 0 and not (result.verify or {}).get("lost"),
    }
