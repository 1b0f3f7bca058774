"""Fan-out benchmark: the same searches one after another, concurrently, and as Milvus hybrid_search.

Each request has the production shape: 5 query variants x (dense + sparse) = 10 ANN searches.
With no LLM here, the 4 rewrites are stood in for by other dev queries of the set (the cost of
an ANN search does not depend on what the vector means). The modes run interleaved request by
request, so drift of a noisy machine hits all of them alike.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from serve_app.core.retrieval import Retriever
from serve_app.devtools.common import machine_description, percentile, replace_section

MARK_START = "<!-- bench:search:start -->"
MARK_END = "<!-- bench:search:end -->"
MODES = ("sequential", "gather", "hybrid_search")


def _pct(values: list[float], q: float) -> float:
    """``common.percentile`` (linear interpolation) of a mode's timings, which are never empty."""
    value = percentile(values, q)
    if value is None:
        raise ValueError("no timings recorded")
    return value


async def _hybrid(
    retriever: Retriever, pool: ThreadPoolExecutor, variants: list[dict[str, Any]], limit: int
) -> int:
    """One Milvus hybrid_search (dense + sparse fused by its RRFRanker) per variant, concurrently."""
    loop = asyncio.get_running_loop()
    s = retriever.settings
    calls = [
        loop.run_in_executor(
            pool,
            lambda v=v: retriever.store.hybrid_search(
                v["dense"],
                v["sparse"],
                limit=limit,
                rrf_k=s.rrf_k,
                weights_dense_sparse=(1.0, s.sparse_weight),
            ),
        )
        for v in variants
    ]
    return sum(len(h) for h in await asyncio.gather(*calls))


def run_search_bench(
    retriever: Retriever,
    vectors: list[dict[str, Any]],
    *,
    requests: int,
    variants: int = 5,
    top_k: int = 20,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Latency per request (ms) of each mode over the same ``requests`` requests."""
    pool = ThreadPoolExecutor(max_workers=32)
    limit = top_k * retriever.settings.overfetch
    times: dict[str, list[float]] = {m: [] for m in MODES}
    stage1: dict[str, list[float]] = {m: [] for m in MODES}
    stage2: list[float] = []  # gather: versions + filters + fusion

    async def one(mode: str, batch: list[dict[str, Any]]) -> None:
        t0 = time.perf_counter()
        if mode == "hybrid_search":
            await _hybrid(retriever, pool, batch, limit)
            ms = (time.perf_counter() - t0) * 1000
            stage1[mode].append(ms)
        else:
            fan = await retriever.search(batch, top_k=top_k, limit=top_k, parallel=mode == "gather")
            timings = fan.timings_ms
            ms = (time.perf_counter() - t0) * 1000
            stage1[mode].append(timings["search"])
            if mode == "gather":
                stage2.append(timings["versions"] + timings["fuse"])
        times[mode].append(ms)

    async def run_all() -> None:
        for i in range(requests + 2):
            batch = [vectors[(i * variants + j) % len(vectors)] for j in range(variants)]
            for mode in MODES if i % 2 else reversed(MODES):
                await one(mode, batch)
            if i == 1:  # the first two rounds warm connections and caches
                stage2.clear()
                for m in MODES:
                    times[m].clear()
                    stage1[m].clear()
            if i and i % 20 == 0:
                echo(f"{i}/{requests} requests")

    asyncio.run(run_all())
    pool.shutdown()
    report: dict[str, Any] = {
        "requests": requests,
        "variants": variants,
        "searches_per_request": 2 * variants,
    }
    for m in MODES:
        report[m] = {
            "mean_ms": round(statistics.fmean(times[m]), 2),
            "p50_ms": round(_pct(times[m], 50), 2),
            "p95_ms": round(_pct(times[m], 95), 2),
            "stage1_p50_ms": round(_pct(stage1[m], 50), 2),
        }
    # Stage 1 is what the modes do differently; hybrid_search has no stage 2 of its own.
    report["sequential_over_gather"] = round(
        report["sequential"]["stage1_p50_ms"] / report["gather"]["stage1_p50_ms"], 2
    )
    report["hybrid_over_gather"] = round(
        report["hybrid_search"]["stage1_p50_ms"] / report["gather"]["stage1_p50_ms"], 2
    )
    report["gather_stage2_p50_ms"] = round(_pct(stage2, 50), 2)
    report["machine"] = machine_description()
    report["date"] = time.strftime("%Y-%m-%d")
    return report


def format_table(report: dict[str, Any]) -> str:
    lines = [f"{'mode':14} {'ANN stage p50':>14} {'request p50':>12} {'request p95':>12}"]
    for m in MODES:
        r = report[m]
        lines.append(f"{m:14} {r['stage1_p50_ms']:>14} {r['p50_ms']:>12} {r['p95_ms']:>12}")
    lines.append(
        f"ANN stage, sequential / gather: {report['sequential_over_gather']}x; "
        f"hybrid_search / gather: {report['hybrid_over_gather']}x; "
        f"gather's stage 2 (versions, filters, fusion) p50 {report['gather_stage2_p50_ms']} ms"
    )
    return "\n".join(lines)


def write_markdown(report: dict[str, Any], markdown: Path, json_path: Path) -> None:
    notes = {
        "sequential": "the same searches one after another",
        "gather": "concurrently (`asyncio.gather` over a thread pool): **the service's mode**",
        "hybrid_search": "one Milvus `hybrid_search` per variant (dense + sparse fused by Milvus' RRFRanker)",
    }
    rows = [
        f"| {m} | {notes[m]} | {report[m]['stage1_p50_ms']} | {report[m]['p50_ms']} | {report[m]['p95_ms']} |"
        for m in MODES
    ]
    faster = report["hybrid_over_gather"] >= 1
    section = "\n".join(
        [
            MARK_START,
            f"### Fan-out: {report['dataset']}, {report['requests']} requests"
            f" x {report['searches_per_request']} ANN searches",
            "",
            f"`{report['command']}` on {report['machine']}, {report['date']}, against {report['milvus']}."
            f" Modes interleaved request by request. Raw: `{json_path}`.",
            "",
            "| mode | what | ANN stage p50 ms | request p50 ms | request p95 ms |",
            "|---|---|---:|---:|---:|",
            *rows,
            "",
            f"**ANN stage, sequential / concurrent: {report['sequential_over_gather']}x**;"
            f" hybrid_search / concurrent: {report['hybrid_over_gather']}x. Stage 2 of the concurrent mode"
            " (versions, filters, fusion) adds"
            f" {report['gather_stage2_p50_ms']} ms at the median;"
            " hybrid_search has no stage 2 of its own (it would need the same one). The service keeps the"
            " concurrent fan-out: "
            + ("it is faster, and it is " if faster else "")
            + "the only mode that knows which variant and channel found each result (`explain`) and"
            " weighs each list on its own (per-channel, per-variant and query-adaptive sparse weights).",
            MARK_END,
        ]
    )
    markdown.write_text(replace_section(markdown.read_text() if markdown.exists() else "", section))
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
