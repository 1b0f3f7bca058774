"""``specrag bench reembed``: the Ray Data re-embed path vs the same model in this process, one run.

Both phases embed the same rows (every chunk of a BEIR corpus) with the same ``EmbedWriter``
and write them into a fresh collection each, on a private Milvus Lite server; the model load is
inside both timings, as a job pays it. The source collection's vectors come from the hash test
double (a re-embed reads only texts), so setting it up costs seconds, not a third model pass.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve_app.devtools.common import machine_description, replace_section
from serve_app.settings import Settings

MARK_START = "<!-- bench:reembed:start -->"
MARK_END = "<!-- bench:reembed:end -->"


@dataclass(slots=True)
class ReembedBenchOptions:
    data: Path
    limit: int | None = None
    batch_size: int = 64
    actors: int = 1
    segments: int = 4
    out: Path = Path("docs/benchmarks/reembed.json")
    markdown: Path = Path("docs/BENCHMARKS.md")
    command: str = "specrag bench reembed DATA"


def _timed(outputs: Iterator[dict[str, Any]], total: int, echo: Callable[[str], None], name: str) -> dict:
    t0 = time.perf_counter()
    first = None
    written = failed = 0
    last = t0
    for out in outputs:
        if first is None:
            first = time.perf_counter()
        written += sum(out["written"])
        failed += sum(len(f) for f in out["failed"])
        if time.perf_counter() - last > 30:
            last = time.perf_counter()
            echo(f"  {name}: {written}/{total} chunks, {written / (last - t0):.1f}/s")
    end = time.perf_counter()
    seconds = end - t0
    return {
        "chunks": written,
        "failed": failed,
        "seconds": round(seconds, 2),
        "chunks_per_s": round(written / seconds, 2) if seconds else 0.0,
        "startup_s": round((first or end) - t0, 2),
    }


def _total(parts: list[dict], extra_s: float = 0.0) -> dict:
    chunks = sum(p["chunks"] for p in parts)
    seconds = sum(p["seconds"] for p in parts) + extra_s
    return {
        "chunks": chunks,
        "failed": sum(p["failed"] for p in parts),
        "seconds": round(seconds, 2),
        "chunks_per_s": round(chunks / seconds, 2) if seconds else 0.0,
        "startup_s": round(sum(p["startup_s"] for p in parts) + extra_s, 2),
        "segments": parts,
    }


def run_reembed_bench(settings: Settings, options: ReembedBenchOptions, echo: Callable[[str], None]) -> dict:
    from serve_app.core.embedding import EmbeddingService
    from serve_app.core.ingest import Ingestor, iter_documents
    from serve_app.core.reindex import EmbedWriter, embed_ray, model_settings, newest_rows
    from serve_app.core.store import make_store
    from serve_app.devtools.local_stack import free_port, local_ray, milvus_lite_server
    from serve_app.testing.doubles import HashEncoder

    probe = EmbeddingService.from_settings(model_settings(settings, None))
    dim, model = probe.dim, probe.model_id
    del probe
    with (
        tempfile.TemporaryDirectory(prefix="specrag-bench-") as tmp,
        milvus_lite_server(Path(tmp) / "milvus", port=free_port()) as uri,
    ):
        run_settings = model_settings(
            settings.model_copy(
                update={"milvus": settings.milvus.model_copy(update={"uri": uri, "collection": "bench"})}
            ),
            None,
        )
        store = make_store(run_settings, dim)
        docs = list(iter_documents(options.data))[: options.limit]
        hashed = EmbeddingService(HashEncoder(dim))
        t0 = time.perf_counter()
        Ingestor(hashed.embed_texts, store, settings.chunk, model_key="bench-source").ingest(docs)
        source = store.resolve()
        rows = list(newest_rows(store, source))
        echo(f"source: {len(docs)} documents, {len(rows)} chunks in {time.perf_counter() - t0:.0f} s")

        # Interleaved segments: machine noise drifts over an hour; each path sees the same drift.
        # The in-process writer loads its model once; every Ray segment starts a new actor pool
        # and loads the model again (so Ray pays the start-up once per segment).
        segments = [rows[i :: options.segments] for i in range(options.segments)]
        local_target, ray_target = store.create_physical(), store.create_physical()
        phases: dict[str, list[dict]] = {"in_process": [], "ray_data": []}
        with local_ray():
            t_load = time.perf_counter()
            writer = EmbedWriter(run_settings, local_target)
            load_s = time.perf_counter() - t_load
            for n, seg in enumerate(segments, start=1):
                echo(f"segment {n}/{len(segments)}: in-process ...")
                batches = (
                    writer(seg[i : i + options.batch_size]) for i in range(0, len(seg), options.batch_size)
                )
                phases["in_process"].append(_timed(batches, len(seg), echo, "in-process"))
                echo(f"  {phases['in_process'][-1]}")
                echo(f"segment {n}/{len(segments)}: Ray Data ...")
                outputs = embed_ray(
                    run_settings,
                    seg,
                    ray_target,
                    batch_size=options.batch_size,
                    actors=options.actors,
                    num_gpus=0.0,
                )
                phases["ray_data"].append(_timed(outputs, len(seg), echo, "ray"))
                echo(f"  {phases['ray_data'][-1]}")
        local = _total(phases["in_process"], extra_s=load_s)
        ray_phase = _total(phases["ray_data"])
    report = {
        "dataset": options.data.name,
        "documents": len(docs),
        "chunks": len(rows),
        "model": model,
        "batch_size": options.batch_size,
        "actors": options.actors,
        "segments": options.segments,
        "in_process": local,
        "ray_data": ray_phase,
        "ratio": round(ray_phase["chunks_per_s"] / local["chunks_per_s"], 3)
        if local["chunks_per_s"]
        else None,
        "machine": machine_description(),
        "date": time.strftime("%Y-%m-%d"),
        "command": options.command,
    }
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(report, indent=2) + "\n")
    if options.markdown.exists():
        options.markdown.write_text(
            replace_section(options.markdown.read_text(), markdown_section(report, options.out))
        )
    echo(format_table(report))
    return report


def steady_ratio(local: dict[str, Any], ray_phase: dict[str, Any]) -> float | None:
    """Ratio after the first batch of every segment (model loads and actor start-ups left out)."""

    def rate(p: dict[str, Any]) -> float:
        parts = p.get("segments") or [p]
        secs = sum(s["seconds"] - s["startup_s"] for s in parts)
        return sum(s["chunks"] for s in parts) / secs if secs > 0 else 0.0

    base = rate(local)
    return round(rate(ray_phase) / base, 3) if base else None


def format_table(report: dict[str, Any]) -> str:
    rows = [("in-process", report["in_process"]), ("Ray Data", report["ray_data"])]
    lines = [f"{'path':12} {'chunks':>7} {'seconds':>8} {'chunks/s':>9} {'startup s':>10}"]
    for name, r in rows:
        lines.append(
            f"{name:12} {r['chunks']:>7} {r['seconds']:>8} {r['chunks_per_s']:>9} {r['startup_s']:>10}"
        )
    lines.append(
        f"ratio Ray Data / in-process: {report['ratio']} (after start-up: {report.get('steady_ratio')})"
    )
    return "\n".join(lines)


def markdown_section(report: dict[str, Any], json_path: Path) -> str:
    loc, ray_ = report["in_process"], report["ray_data"]
    return "\n".join(
        [
            MARK_START,
            f"### Re-embed throughput: {report['dataset']} ({report['documents']} passages,"
            f" {report['chunks']} chunks)",
            "",
            f"`{report['command']}` on {report['machine']}, {report['date']}; model {report['model']},"
            f" {report['batch_size']} chunks per call, {report['actors']} actor(s); the two paths alternate"
            f" over {report['segments']} interleaved segments. Raw: `{json_path}`.",
            "",
            "| Path | Chunks | Seconds | Chunks/s | Start-up s (to first batch, all segments) |",
            "|---|---|---|---|---|",
            f"| in-process (`EmbedWriter` in the driver) | {loc['chunks']} | {loc['seconds']} |"
            f" {loc['chunks_per_s']} | {loc['startup_s']} |",
            f"| Ray Data actor pool (`jobs.reembed`) | {ray_['chunks']} | {ray_['seconds']} |"
            f" {ray_['chunks_per_s']} | {ray_['startup_s']} |",
            "",
            f"**Ratio Ray Data / in-process: {report['ratio']}** (both include loading the model and writing"
            f" to Milvus; Ray starts its actor pool once per segment). After each segment's first batch:"
            f" {report.get('steady_ratio')}.",
            MARK_END,
        ]
    )
