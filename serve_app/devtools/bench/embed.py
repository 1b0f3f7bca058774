"""``specrag bench embed``: the Embedder through Serve's HTTP endpoint against the same model in-process.

One run on one machine: the in-process baseline first (Ray not started, so the two never share
the cores), then a local Ray + Serve app driven over HTTP at several concurrency levels, one text
per request like independent clients. Two in-process reference rows say where the gap between
the two comes from: the engine fed one text per call (the batching a lone request gets; no Ray),
and the baseline again in this process while Ray and the Serve app run idle beside it (what Ray's
own processes take from a model that shares their cores). Texts are unique per phase (a ``#NN``
tag), so no cache tier in the Embedder can answer them. Pure helpers (workload, deltas, tables, Markdown; the
percentiles and the section swap are ``devtools.common``'s) sit apart from the runners that need
the model or Ray, and are unit-tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import os
import random
import re
import shlex
import shutil
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from serve_app.core.chunking import detect_lang, split_sentences
from serve_app.devtools.common import latency_summary, machine_facts, percentile, replace_section
from serve_app.settings import Settings

log = logging.getLogger("specrag.bench")

SHORT_CHARS = (10, 60)  # query-like
LONG_CHARS = (400, 2000)  # passage-like
TAG_CHARS = 4  # " #NN": every phase embeds its own copy of the workload
APP_NAME = "bench"
DEPLOYMENT = "Embedder"
MARK_START = "<!-- bench:embed:start -->"
MARK_END = "<!-- bench:embed:end -->"


def markers(texts_per_request: int = 1, model_shape: ModelShape = "configured") -> tuple[str, str]:
    """Section markers; runs with several texts per request, or with another model's shape, keep
    a section of their own."""
    name = "embed" + (f"-x{texts_per_request}" if texts_per_request != 1 else "")
    name += f"-{model_shape}-shape" if model_shape != "configured" else ""
    return f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"


# ``--model-shape``: the configured model, or random weights in a production model's shape (its
# cost per token, without its weights, which an offline machine cannot download).
ModelShape = Literal["configured", "bge-m3"]
SHAPE_TITLES = {"bge-m3": "BGE-M3's shape (random weights)"}


def default_out(model_shape: ModelShape = "configured") -> Path:
    """Where a run's raw figures go unless ``--out`` says: a model shape keeps its own file."""
    suffix = "" if model_shape == "configured" else f"-{model_shape}-shape"
    return Path(f"docs/benchmarks/embed{suffix}.json")


# Phase tags: in-process warm-up / timed, Serve warm-up, level j = 10 + j, cache checks 90+.
PHASE_WARM, PHASE_IN_PROCESS, PHASE_SERVE_WARM, PHASE_LEVEL0 = 0, 1, 2, 10
PHASE_SERVE_CACHE, PHASE_ENGINE_CACHE = 90, 91
PHASE_ONE_PER_CALL, PHASE_BESIDE_STACK = 3, 4
REFERENCE_LABELS = {
    "one_per_call": "in-process, 1 text per call",
    "beside_idle_stack": "in-process beside idle Ray + Serve",
}

# --------------------------------------------------------------------------------------------------
# Workload (pure)

_MD_PREFIX = re.compile(r"^\s*(?:#{1,6}\s+|[-*+]\s+|\d+[.)]\s+|>\s*)+")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class Workload:
    """Texts in the order they are sent, with each one's kind (short/long) and language."""

    texts: list[str]
    kinds: list[str]
    langs: list[str]
    source: str

    def describe(self) -> dict[str, Any]:
        def mean_chars(kind: str | None) -> float | None:
            sizes = [len(t) for t, k in zip(self.texts, self.kinds, strict=True) if kind in (None, k)]
            return round(statistics.fmean(sizes), 1) if sizes else None

        return {
            "source": self.source,
            "texts": len(self.texts),
            "short": self.kinds.count("short"),
            "long": self.kinds.count("long"),
            "langs": dict(sorted(Counter(self.langs).items())),
            "short_chars": list(SHORT_CHARS),
            "long_chars": list(LONG_CHARS),
            "mean_chars": mean_chars(None),
            "mean_chars_short": mean_chars("short"),
            "mean_chars_long": mean_chars("long"),
        }


def clean_sentence(sentence: str) -> str:
    """Markdown list/heading/quote markers and table pipes off, whitespace collapsed."""
    text = _MD_PREFIX.sub("", sentence.replace("|", " "))
    return _SPACES.sub(" ", text).strip()


def _usable(sentence: str) -> bool:
    return len(sentence) >= SHORT_CHARS[0] and sum(ch.isalpha() for ch in sentence) >= 5


def sentence_streams(docs: Sequence[str]) -> dict[str, list[str]]:
    """Usable sentences of all documents in order, split by language ("ja" / "en")."""
    streams: dict[str, list[str]] = {"ja": [], "en": []}
    for doc in docs:
        for raw in split_sentences(doc):
            if raw.lstrip().startswith(("```", "~~~")):
                continue
            sentence = clean_sentence(raw)
            if _usable(sentence):
                streams[detect_lang(sentence)].append(sentence)
    return streams


def clip(text: str, limit: int, floor: int) -> str:
    """At most ``limit`` characters, cut at a space when that keeps ``floor`` (Japanese: at ``limit``)."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    if space >= floor:
        cut = cut[:space].rstrip()
    return cut if len(cut) >= floor else text[:limit]


def _long_text(stream: list[str], start: int, target: int, sep: str) -> str:
    parts: list[str] = []
    size, i = 0, start
    while size < target:  # a tiny corpus wraps around; every sentence has >= 10 characters
        sentence = stream[i % len(stream)]
        parts.append(sentence)
        size += len(sentence) + len(sep)
        i += 1
    return clip(sep.join(parts), target, LONG_CHARS[0])


def _unique(text: str, seen: set[str], limit: int) -> str:
    k = 1
    candidate = text
    while candidate in seen:
        suffix = f" ({k})"
        candidate = text[: limit - len(suffix)] + suffix
        k += 1
    seen.add(candidate)
    return candidate


def build_workload(
    docs: Sequence[str], n: int, *, seed: int = 0, long_share: float = 1 / 3, source: str = ""
) -> Workload:
    """``n`` unique texts, about ``long_share`` passage-like, ja/en alternating, in a shuffled order.

    Short texts are single sentences clipped to 10-56 characters; long ones run consecutive
    sentences of one language to a log-uniform target of 400-1996 characters (most passages sit
    near the chunker's 700). Both leave room for the 4-character phase tag.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    streams = sentence_streams(docs)
    langs = [lang for lang in ("ja", "en") if streams[lang]]
    if not langs:
        raise ValueError("no usable sentences in the source documents")
    rng = random.Random(seed)
    n_long = round(n * long_share)
    kinds = ["long"] * n_long + ["short"] * (n - n_long)
    rng.shuffle(kinds)
    orders = {lang: rng.sample(range(len(streams[lang])), len(streams[lang])) for lang in langs}
    short_max, long_max = SHORT_CHARS[1] - TAG_CHARS, LONG_CHARS[1] - TAG_CHARS
    seen: set[str] = set()
    texts: list[str] = []
    text_langs: list[str] = []
    counts = Counter[str]()  # texts so far per kind, and per (kind, lang)
    for kind in kinds:
        lang = langs[counts[kind] % len(langs)]
        nth = counts[f"{kind}:{lang}"]
        counts.update([kind, f"{kind}:{lang}"])
        stream = streams[lang]
        if kind == "short":
            sentence = stream[orders[lang][nth % len(stream)]]
            cut = rng.randint(20, short_max) if len(sentence) > short_max else short_max
            text, limit = clip(sentence, cut, SHORT_CHARS[0]), short_max
        else:
            target = round(math.exp(rng.uniform(math.log(LONG_CHARS[0]), math.log(long_max))))
            text = _long_text(stream, rng.randrange(len(stream)), target, "" if lang == "ja" else " ")
            limit = long_max
        texts.append(_unique(text, seen, limit))
        text_langs.append(lang)
    return Workload(texts, kinds, text_langs, source)


def tag(texts: Sequence[str], phase: int) -> list[str]:
    """The phase's own copy of the texts (`` #NN``), so no cache tier serves one phase from another."""
    if not 0 <= phase <= 99:
        raise ValueError("phase must be 0-99")
    return [f"{t} #{phase:02d}" for t in texts]


def read_source(path: Path, max_docs: int = 5000) -> tuple[list[str], str]:
    """Texts to cut the workload from: a BEIR ``corpus.jsonl`` (or its folder) or a folder of .md/.txt."""
    import json

    from serve_app.core.ingest import read_folder

    path = Path(path)
    with contextlib.suppress(ValueError):  # the report names the source relative to the repository
        path = path.resolve().relative_to(Path.cwd())
    corpus = path / "corpus.jsonl" if path.is_dir() else path
    if corpus.is_file() and corpus.suffix == ".jsonl":
        texts: list[str] = []
        with corpus.open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    text = str(json.loads(line).get("text") or "")
                    if text.strip():
                        texts.append(text)
                if len(texts) >= max_docs:
                    break
        return texts, f"BEIR {corpus} (first {len(texts)} passages)"
    if path.is_dir():
        docs = [d.text for d in read_folder(path)]
        return docs, f"{path} ({len(docs)} documents)"
    raise ValueError(f"{path}: expected a BEIR corpus.jsonl, a folder holding one, or a folder of .md/.txt")


def parse_levels(spec: str) -> list[int]:
    """``"1,8,32,64"`` → ``[1, 8, 32, 64]``; positive, unique, at most 1024."""
    try:
        levels = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"concurrency levels must be integers: {spec!r}") from None
    if not levels or any(not 1 <= c <= 1024 for c in levels) or len(set(levels)) != len(levels):
        raise ValueError(f"concurrency levels must be unique integers in 1-1024: {spec!r}")
    return levels


# --------------------------------------------------------------------------------------------------
# Figures (pure)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def numeric_delta(before: Any, after: Any) -> Any:
    """``after - before`` through nested dicts of numbers; histogram buckets that did not move are dropped.

    A dict whose keys all look like integers (``{batch size: calls}``) is a histogram; other
    values that are not numbers are reported as they are after.
    """
    if isinstance(after, Mapping):
        base = before if isinstance(before, Mapping) else {}
        out = {str(k): numeric_delta(base.get(k), v) for k, v in after.items()}
        if after and all(str(k).lstrip("-").isdigit() for k in after):
            out = {k: v for k, v in out.items() if v != 0}
        return out
    if _is_number(after):
        return after - before if _is_number(before) else after
    return after


def histogram_mean(hist: Mapping[Any, float] | None) -> float | None:
    """Weighted mean of a ``{size: count}`` histogram (keys may be strings)."""
    if not hist:
        return None
    total = sum(float(c) for c in hist.values())
    if total <= 0:
        return None
    return sum(float(k) * float(c) for k, c in hist.items()) / total


def batch_from_stats(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> dict[str, Any]:
    """A level's batch figures from two ``Embedder.stats()`` results (``batch_sizes`` and the rest)."""
    d = numeric_delta(before or {}, after)
    hist = d.get("batch_sizes") if isinstance(d.get("batch_sizes"), dict) else None
    return {
        "source": "stats",
        "mean": _round(histogram_mean(hist)),
        "batches": int(sum(hist.values())) if hist else 0,
        "batch_sizes": hist,
        "forward_batches": d.get("forward_batches"),
        "other_stats": {k: v for k, v in d.items() if k not in ("batch_sizes", "forward_batches")},
    }


def _round(v: float | None, digits: int = 2) -> float | None:
    return None if v is None else round(v, digits)


def best_level(levels: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The level with the highest throughput (where Serve saturates)."""
    ran = [lv for lv in levels if lv.get("texts_per_s")]
    return max(ran, key=lambda lv: lv["texts_per_s"]) if ran else None


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


TABLE_HEADER = (
    "path",
    "concurrency",
    "texts/s",
    "tokens/s",
    "× in-process",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "errors",
    "mean batch",
    "model ms/text",
)


def model_ms_per_text(seconds: Any, texts: Any) -> float | None:
    """Model time per text: the in-process run's time, or the Embedder's time in model steps
    (``busy_s``) for a Serve level; against each other they show what the replica's model
    steps lose to the request path sharing the cores."""
    return round(seconds * 1000 / texts, 1) if _is_number(seconds) and texts else None


def busy_s(level: Mapping[str, Any]) -> Any:
    """The Embedder's seconds in model steps during a level (``Embedder.stats`` delta)."""
    return ((level.get("batch") or {}).get("other_stats") or {}).get("busy_s")


def table_rows(report: Mapping[str, Any]) -> list[list[str]]:
    """One row for the in-process baseline, one per reference run, one per Serve concurrency level."""

    def in_process_row(label: str, figures: Mapping[str, Any], ratio: Any) -> list[str]:
        per_text = model_ms_per_text(figures.get("seconds"), figures.get("texts"))
        head = [label, "–", _fmt(figures["texts_per_s"]), _fmt(figures["tokens_per_s"], 0), _fmt(ratio, 2)]
        return [*head, "–", "–", "–", "0", _fmt(figures.get("mean_batch")), _fmt(per_text)]

    rows = [in_process_row("in-process", report["in_process"], 1.0)]
    for key, ref in (report.get("references") or {}).items():
        rows.append(in_process_row(REFERENCE_LABELS.get(key, key), ref, ref.get("ratio")))
    for lv in report["serve"]["levels"]:
        lat = lv["latency_ms"]
        errors = str(lv["errors"]) + (" (stopped)" if lv.get("stopped_early") else "")
        rows.append(
            [
                "Serve HTTP",
                str(lv["concurrency"]),
                _fmt(lv["texts_per_s"]),
                _fmt(lv["tokens_per_s"], 0),
                _fmt(lv["ratio"], 2),
                _fmt(lat["p50"]),
                _fmt(lat["p95"]),
                _fmt(lat["p99"]),
                errors,
                _fmt((lv.get("batch") or {}).get("mean")),
                _fmt(model_ms_per_text(busy_s(lv), lv.get("texts"))),
            ]
        )
    return rows


def format_table(report: Mapping[str, Any]) -> str:
    """Fixed-width table for the terminal."""
    rows = [list(TABLE_HEADER), *table_rows(report)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(TABLE_HEADER))]
    lines = [
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(report: Mapping[str, Any]) -> str:
    header = "| " + " | ".join(TABLE_HEADER) + " |"
    align = "|" + "|".join(["---"] * 2 + ["---:"] * (len(TABLE_HEADER) - 2)) + "|"
    body = ["| " + " | ".join(row) + " |" for row in table_rows(report)]
    return "\n".join([header, align, *body])


def summary_line(report: Mapping[str, Any]) -> str:
    best = report["serve"].get("best")
    ip = report["in_process"]
    if not best:
        return f"in-process {ip['texts_per_s']:.1f} texts/s; no Serve level completed"
    return (
        f"best Serve level: concurrency {best['concurrency']} at {best['texts_per_s']:.1f} texts/s = "
        f"{best['ratio']:.2f} × in-process ({ip['texts_per_s']:.1f} texts/s, "
        f"{ip['tokens_per_s']:.0f} tokens/s)"
    )


def cache_line(report: Mapping[str, Any]) -> str:
    cache = report.get("cache_hit") or {}
    parts = []
    serve_hit = cache.get("serve") or {}
    if serve_hit.get("hit_ms") is not None:
        parts.append(
            f"Serve HTTP, repeated text: p50 {serve_hit['hit_ms']['p50']} ms "
            f"(first request p50 {serve_hit['miss_ms']['p50']} ms)"
        )
    else:
        parts.append(f"Serve HTTP: not measured ({serve_hit.get('reason', 'skipped')})")
    engine = cache.get("engine") or {}
    if engine.get("latency_ms") is not None:
        text = f"engine embed_items: median {engine['latency_ms']} ms over {engine['repeats']} calls"
        if engine.get("redis_tier_ms") is not None:
            text += f" (Redis tier with the in-process LRU cleared: {engine['redis_tier_ms']} ms)"
        parts.append(text)
    else:
        parts.append(f"engine: not measured ({engine.get('reason', 'skipped')})")
    return "cache hit — " + "; ".join(parts)


def markdown_section(report: Mapping[str, Any], json_path: str) -> str:
    """The BENCHMARKS.md section, markers included."""
    m = report["machine"]
    w = report["workload"]
    s = report["settings"]
    tokens = f", mean {w['mean_tokens']} tokens" if w.get("mean_tokens") is not None else ""
    langs = " / ".join(f"{count} {lang}" for lang, count in w["langs"].items())
    per_request = s.get("texts_per_request", 1)
    shape = s.get("model_shape", "configured")
    start, end = markers(per_request, shape)
    lines = [
        start,
        "## Embedding throughput — Serve HTTP vs in-process"
        + ("" if per_request == 1 else f", {per_request} texts per request")
        + (f", {SHAPE_TITLES[shape]}" if shape in SHAPE_TITLES else ""),
        "",
        f"Model `{report['model']['id']}` on {m['device']} ({m['dtype']}), {m['cpu_count']} CPUs, "
        f"torch {m['torch']}, Ray {m['ray']}; {report['timestamp']}. Workload: {w['texts']} unique texts "
        f"({w['short']} short {SHORT_CHARS[0]}-{SHORT_CHARS[1]} chars, {w['long']} long "
        f"{LONG_CHARS[0]}-{LONG_CHARS[1]} chars; {langs}; mean {w['mean_chars']} chars{tokens}) "
        f"from {w['source']}. In-process: `EmbeddingService.embed_items` in chunks of {s['max_batch_size']} "
        f"with {s['torch_threads']} torch threads, no cache. Serve: `POST /v1/embed`, "
        f"{s.get('texts_per_request', 1)} text(s) per request, "
        f"each level its own copy of the texts; @serve.batch max {s['max_batch_size']}, wait "
        f"{s['batch_wait_timeout_s']} s; no cache.",
        *(
            [
                "",
                "Reference rows, to say where the gap comes from: the same engine fed one text per "
                "call (the batching a lone request gets; Ray not started), and the baseline again in "
                "the benchmark's process while Ray and the Serve app run idle beside it (what Ray's "
                "own processes take from a model on the same cores).",
            ]
            if report.get("references")
            else []
        ),
        "",
        "```bash",
        report["command"],
        "```",
        "",
        markdown_table(report),
        "",
        summary_line(report) + ".",
        "",
        cache_line(report) + ".",
        "",
        *[f"Note: {note}." for note in report.get("notes", [])],
        *([""] if report.get("notes") else []),
        f"Raw figures: `{json_path}`.",
        end,
    ]
    return "\n".join(lines)


def contention_notes(
    in_process: Mapping[str, Any], levels: Sequence[Mapping[str, Any]], limit: float = 0.15
) -> list[str]:
    """A note for every phase where other processes or the hypervisor took a noticeable CPU share."""
    phases = [("in-process", in_process.get("cpu"))]
    phases += [(f"concurrency {lv['concurrency']}", lv.get("cpu")) for lv in levels]
    notes = []
    for name, cpu in phases:
        if cpu and (cpu.get("other", 0) > limit or cpu.get("steal", 0) > limit):
            notes.append(
                f"{name}: {cpu['other']:.0%} of the CPUs busy outside this benchmark, "
                f"{cpu['steal']:.0%} stolen; its figures are skewed"
            )
    return notes


def build_report(
    *,
    command: str,
    machine: Mapping[str, Any],
    model: Mapping[str, Any],
    settings: Mapping[str, Any],
    workload: Mapping[str, Any],
    in_process: Mapping[str, Any],
    levels: Sequence[Mapping[str, Any]],
    cache_hit: Mapping[str, Any],
    notes: Sequence[str] = (),
    timestamp: str | None = None,
    references: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The JSON document: every level and reference run gets its ratio to the in-process rate, the
    best level is named."""
    base = in_process.get("texts_per_s") or 0.0
    refs = {}
    for key, ref in (references or {}).items():
        ref = dict(ref)
        ref["ratio"] = round(ref["texts_per_s"] / base, 3) if base and ref.get("texts_per_s") else None
        refs[key] = ref
    shaped = []
    for lv in levels:
        lv = dict(lv)
        lv["ratio"] = round(lv["texts_per_s"] / base, 3) if base and lv.get("texts_per_s") else None
        shaped.append(lv)
    best = best_level(shaped)
    return {
        "benchmark": "embed",
        "timestamp": timestamp or datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "machine": dict(machine),
        "model": dict(model),
        "settings": dict(settings),
        "workload": dict(workload),
        "in_process": dict(in_process),
        "references": refs,
        "serve": {
            "levels": shaped,
            "best": {k: best[k] for k in ("concurrency", "texts_per_s", "ratio")} if best else None,
            "batch_sizes": {
                str(lv["concurrency"]): {
                    k: (lv.get("batch") or {}).get(k) for k in ("source", "mean", "batches", "batch_sizes")
                }
                for lv in shaped
            },
        },
        "cache_hit": dict(cache_hit),
        "notes": list(notes),
    }


def reconstruct_command(options: EmbedBenchOptions) -> str:
    """The ``specrag bench embed`` line equivalent to ``options`` (when argv is not ours to quote)."""
    parts = ["specrag", "bench", "embed", "--texts", str(options.texts)]
    parts += ["--concurrency", ",".join(map(str, options.concurrency))]
    if options.data is not None:
        parts += ["--data", str(options.data)]
    if options.redis_url:
        parts += ["--redis-url", "REDIS_URL"]
    if not options.cache_check:
        parts.append("--no-cache-check")
    if options.model_shape != "configured":
        parts += ["--model-shape", options.model_shape]
    if not options.references:
        parts.append("--no-references")
    parts += ["--out", str(options.out), "--markdown", str(options.markdown)]
    return shlex.join(parts)


# --------------------------------------------------------------------------------------------------
# Runners (model, Ray, HTTP)


@dataclass
class EmbedBenchOptions:
    source: Path  # sample docs folder, or --data
    texts: int = 384
    concurrency: list[int] = field(default_factory=lambda: [1, 8, 32, 64])
    data: Path | None = None
    out: Path = Path("docs/benchmarks/embed.json")
    markdown: Path | None = Path("docs/BENCHMARKS.md")
    redis_url: str | None = None
    cache_check: bool = True
    max_seconds: float = 90.0  # per level
    request_timeout_s: float = 120.0
    warmup: int = 8
    texts_per_request: int = 1
    model_shape: ModelShape = "configured"
    references: bool = True  # the in-process reference runs (1 text per call; beside the idle stack)
    seed: int = 0
    command: str = ""


def parse_cpu_line(proc_stat: str) -> tuple[int, int, int]:
    """(busy, steal, total) jiffies of all CPUs from /proc/stat; idle and iowait count as not busy."""
    fields = [int(v) for v in proc_stat.splitlines()[0].split()[1:9]]
    fields += [0] * (8 - len(fields))
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    busy = user + nice + system + irq + softirq
    return busy, steal, busy + steal + idle + iowait


def parse_pid_stat(text: str) -> tuple[int, int, int]:
    """(ppid, own jiffies, waited-for children's jiffies) from /proc/PID/stat (``comm`` may hold spaces)."""
    rest = text[text.rindex(")") + 2 :].split()
    return int(rest[1]), int(rest[11]) + int(rest[12]), int(rest[13]) + int(rest[14])


class CpuMeter:
    """How busy the machine was during a phase, and how much of that was not this process tree.

    Other work on a small machine (a test suite, a build) skews every figure here; the report
    carries ``other`` (busy CPU share outside this process and its descendants, approximate:
    descendants that exit mid-phase count as other) and ``steal`` (taken by the hypervisor).
    """

    def __init__(self) -> None:
        self.start = self._read()

    @staticmethod
    def _own_tree() -> int:
        me = os.getpid()
        parents: dict[int, int] = {}
        ticks: dict[int, int] = {}
        own_children = 0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid, own, children = parse_pid_stat((entry / "stat").read_text())
            except (OSError, ValueError, IndexError):
                continue
            pid = int(entry.name)
            parents[pid], ticks[pid] = ppid, own
            if pid == me:
                own_children = children
        total = ticks.get(me, 0) + own_children
        for pid in ticks:
            p, seen = parents.get(pid), 0
            while p and p != me and seen < 64:
                p, seen = parents.get(p), seen + 1
            if p == me and pid != me:
                total += ticks[pid]
        return total

    def _read(self) -> tuple[int, int, int, int] | None:
        try:
            busy, steal, total = parse_cpu_line(Path("/proc/stat").read_text())
            return busy, steal, total, self._own_tree()
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> dict[str, float] | None:
        end = self._read()
        if self.start is None or end is None or end[2] <= self.start[2]:
            return None
        busy, steal, total, own = (b - a for a, b in zip(self.start, end, strict=True))
        return {
            "busy": round(busy / total, 3),
            "other": round(max(busy - own, 0) / total, 3),
            "steal": round(steal / total, 3),
        }


def cpu_busy_fraction(interval_s: float = 1.0) -> float | None:
    """Share of all CPUs busy over ``interval_s`` (Linux /proc/stat); None elsewhere."""
    meter = CpuMeter()
    time.sleep(interval_s)
    figures = meter.stop()
    return None if figures is None else figures["busy"]


def _with(settings: Settings, *, redis_url: str | None, threads: int | None = None) -> Settings:
    from pydantic import SecretStr

    update: dict[str, Any] = {
        "redis": settings.redis.model_copy(update={"url": SecretStr(redis_url) if redis_url else None})
    }
    if threads is not None:
        update["model"] = settings.model.model_copy(update={"num_threads": threads})
    return settings.model_copy(update=update)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def load_in_process(settings: Settings) -> tuple[Any, dict[str, Any]]:
    """``EmbeddingService(load_encoder(settings))`` without cache, and what the report says of it.
    One load serves the baseline and the reference runs."""
    import torch

    from serve_app.core.compute_threads import on_torch_thread
    from serve_app.core.embedding import EmbeddingService, load_encoder

    t0 = time.perf_counter()
    service = EmbeddingService(load_encoder(settings))
    load_s = time.perf_counter() - t0
    encoder = service.encoder
    model_info = {
        "id": service.model_id,
        "path": settings.model.name_or_path,
        "dim": service.dim,
        "max_length": getattr(encoder, "max_length", settings.model.max_length),
        "device": str(getattr(encoder, "device", settings.model.device)),
        "dtype": str(getattr(encoder, "dtype", settings.model.dtype)),
        "torch_threads": on_torch_thread(torch.get_num_threads),
        "load_s": round(load_s, 2),
    }
    return service, model_info


def time_in_process(
    service: Any, workload: Workload, warmup: int, *, per_call: int, phase: int = PHASE_IN_PROCESS
) -> dict[str, Any]:
    """The workload through ``service.embed_items`` in calls of ``per_call`` texts (max_batch_size:
    the baseline), its texts tagged for ``phase`` so no earlier run's cache entry answers them."""
    from serve_app.core.embedding import EmbedItem

    warm = tag(workload.texts[:warmup], PHASE_WARM)
    for chunk in _chunks(warm, per_call):
        service.embed_items([EmbedItem(t, "passage") for t in chunk])
    texts = tag(workload.texts, phase)
    results: list[dict[str, Any]] = []
    meter = CpuMeter()
    start = time.perf_counter()
    for chunk in _chunks(texts, per_call):
        results.extend(service.embed_items([EmbedItem(t, "passage") for t in chunk]))
    seconds = time.perf_counter() - start
    cpu = meter.stop()
    tokens = [int(r["tokens"]) for r in results]
    return {
        "texts": len(texts),
        "seconds": round(seconds, 3),
        "texts_per_s": round(len(texts) / seconds, 2),
        "tokens": sum(tokens),
        "tokens_per_s": round(sum(tokens) / seconds, 1),
        "chunk_size": per_call,
        "mean_batch": round(len(texts) / math.ceil(len(texts) / per_call), 1),  # texts per embed_items call
        "cached_results": sum(bool(r.get("cached")) for r in results),
        "cpu": cpu,
        "token_counts": tokens,
    }


def _reference(figures: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in figures.items() if k != "token_counts"}


def measure_engine_cache_hit(settings: Settings, text: str, repeats: int = 50) -> dict[str, Any]:
    """Median ``embed_items`` time for a text already cached, through ``EmbeddingService.from_settings``.

    Anything about the cache API that differs from expectations gives ``latency_ms: None`` and a reason.
    """
    from serve_app.core.embedding import EmbeddingService, EmbedItem

    try:
        service = EmbeddingService.from_settings(settings)
    except Exception as exc:
        return {"latency_ms": None, "reason": f"EmbeddingService.from_settings: {_reason(exc)}"}
    try:
        cache = getattr(service, "cache", None)
        if cache is None:
            return {"latency_ms": None, "reason": "EmbeddingService.from_settings built no cache"}
        items = [EmbedItem(text, "passage")]
        t0 = time.perf_counter()
        service.embed_items(items)
        miss_s = time.perf_counter() - t0
        times = []
        out: list[dict[str, Any]] = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = service.embed_items(items)
            times.append(time.perf_counter() - t0)
        if not out or not out[0].get("cached"):
            return {"latency_ms": None, "reason": "the repeated call was not served from the cache"}
        result: dict[str, Any] = {
            "latency_ms": round(statistics.median(times) * 1000, 3),
            "p95_ms": round((percentile(times, 95) or 0) * 1000, 3),
            "miss_ms": round(miss_s * 1000, 1),
            "repeats": repeats,
            "redis_tier_ms": None,
        }
        lru = getattr(cache, "_lru", None)  # two-tier cache: time Redis alone by emptying the LRU
        if lru is not None and hasattr(lru, "clear"):
            redis_times = []
            for _ in range(repeats):
                lru.clear()
                t0 = time.perf_counter()
                out = service.embed_items(items)
                redis_times.append(time.perf_counter() - t0)
            if out[0].get("cached"):
                result["redis_tier_ms"] = round(statistics.median(redis_times) * 1000, 3)
        stats = getattr(cache, "stats", None)
        if hasattr(stats, "as_dict"):
            result["cache_stats"] = stats.as_dict()
        return result
    except Exception as exc:
        return {"latency_ms": None, "reason": _reason(exc)}
    finally:
        del service
        gc.collect()


def _reason(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first[:300]}"


@dataclass
class LevelResult:
    concurrency: int
    planned: int
    latencies: list[float] = field(default_factory=list)
    texts: int = 0  # texts answered (a request may carry several)
    tokens: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    stopped_early: bool = False

    def as_dict(self) -> dict[str, Any]:
        ok = len(self.latencies)
        return {
            "concurrency": self.concurrency,
            "planned": self.planned,
            "requests": ok + sum(self.errors.values()),
            "texts": self.texts,
            "ok": ok,
            "errors": sum(self.errors.values()),
            "error_kinds": dict(self.errors),
            "seconds": round(self.seconds, 3),
            "texts_per_s": round(self.texts / self.seconds, 2) if self.seconds > 0 and ok else None,
            "tokens_per_s": round(self.tokens / self.seconds, 1) if self.seconds > 0 and ok else None,
            "latency_ms": latency_summary(self.latencies),
            "stopped_early": self.stopped_early,
        }


async def drive(
    url: str,
    texts: Sequence[str],
    concurrency: int,
    *,
    timeout_s: float,
    max_seconds: float,
    per_request: int = 1,
    transport: Any = None,
) -> LevelResult:
    """``concurrency`` clients, each posting ``per_request`` texts at a time until texts or time run out."""
    import httpx

    result = LevelResult(concurrency, len(texts))
    pending = iter(range(0, len(texts), per_request))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=timeout_s, transport=transport) as client:
        start = time.perf_counter()
        deadline = start + max_seconds

        async def client_loop() -> None:
            for i in pending:
                if time.perf_counter() > deadline:
                    result.stopped_early = True
                    return
                t0 = time.perf_counter()
                try:
                    batch = list(texts[i : i + per_request])
                    resp = await client.post(url, json={"input": batch, "input_type": "passage"})
                except httpx.HTTPError as exc:
                    result.errors[type(exc).__name__] += 1
                    continue
                if resp.status_code != 200:
                    result.errors[f"HTTP {resp.status_code}"] += 1
                    continue
                result.latencies.append(time.perf_counter() - t0)
                result.texts += len(batch)
                result.tokens += int(resp.json().get("usage", {}).get("prompt_tokens", 0))

        try:
            await asyncio.wait_for(
                asyncio.gather(*(client_loop() for _ in range(concurrency))), max_seconds + timeout_s + 10
            )
        except TimeoutError:
            result.stopped_early = True
        result.seconds = time.perf_counter() - start
    return result


def embedder_stats() -> dict[str, Any]:
    """Batch histograms and cache counters from the Embedder replica (``Embedder.stats``)."""
    from ray import serve

    return serve.get_deployment_handle(DEPLOYMENT, app_name=APP_NAME).stats.remote().result(timeout_s=30)


def _deploy(settings: Settings) -> None:
    from serve_app.devtools.local_stack import QUIET_SERVE_LOGS, deploy_app

    deploy_app(settings, APP_NAME, logging_config=QUIET_SERVE_LOGS)


def _wait_ready(url: str, text: str, timeout_s: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            resp = httpx.post(url, json={"input": [text], "input_type": "passage"}, timeout=60)
            if resp.status_code == 200:
                return
            last = f"HTTP {resp.status_code}: {resp.text[:200]}"
        except httpx.HTTPError as exc:
            last = _reason(exc)
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer 200 in {timeout_s:.0f} s ({last})")


def measure_serve_cache_hit(url: str, texts: Sequence[str]) -> dict[str, Any]:
    """Each text twice in a row: the second request's latency is the end-to-end cache hit."""
    import httpx

    first, second, tokens = [], [], []
    with httpx.Client(timeout=120) as client:
        for text in texts:
            pair = []
            for _ in range(2):
                t0 = time.perf_counter()
                resp = client.post(url, json={"input": [text], "input_type": "passage"})
                pair.append(time.perf_counter() - t0)
                resp.raise_for_status()
            first.append(pair[0])
            second.append(pair[1])
            tokens.append(int(resp.json().get("usage", {}).get("prompt_tokens", 0)))
    return {
        "pairs": len(texts),
        "hit_ms": latency_summary(second),
        "miss_ms": latency_summary(first),
        "tokens_reported_on_hit": tokens,  # 0 when the engine marks a cached result
    }


def _machine(
    model_info: Mapping[str, Any], busy_before: float | None, load_before: list[float] | None
) -> dict[str, Any]:
    import ray
    import torch

    return {
        **machine_facts(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "device": model_info.get("device"),
        "dtype": model_info.get("dtype"),
        "torch_threads": model_info.get("torch_threads"),
        "cpu_busy_before_run": busy_before,
        "loadavg_before_run": load_before,
    }


class ShapeWithoutTokenizer(ValueError):
    """``--model-shape`` needs the configured model's tokenizer on disk."""


def run_embed_bench(
    settings: Settings, options: EmbedBenchOptions, echo: Callable[[str], None] = print
) -> dict[str, Any]:
    """The whole benchmark; returns the report and writes ``options.out`` (and the Markdown section).

    With ``options.model_shape`` other than ``configured``, both paths run a random-weight model of
    that shape (built in a temporary directory with the configured model's tokenizer)."""
    if options.model_shape == "configured":
        return _run_embed_bench(settings, options, echo)
    from serve_app.devtools.bench.gpu import LARGE
    from serve_app.devtools.model_build import build_random_model

    tokenizer_dir = Path(settings.model.name_or_path)
    if not (tokenizer_dir / "config.json").exists():
        raise ShapeWithoutTokenizer(
            f"takes the tokenizer of a local model directory (model.name_or_path); {tokenizer_dir} is not one"
        )
    with tempfile.TemporaryDirectory(prefix=f"specrag-{options.model_shape}-shape-") as tmp:
        echo(f"building a model of {options.model_shape}'s shape with random weights in {tmp} ...")
        build_random_model(
            Path(tmp),
            shape=LARGE,
            tokenizer_dir=tokenizer_dir,
            name=f"{options.model_shape}-shape-random-weights",
            max_length=settings.model.max_length,
        )
        model = settings.model.model_copy(update={"name_or_path": tmp})
        return _run_embed_bench(settings.model_copy(update={"model": model}), options, echo)


def _run_embed_bench(
    settings: Settings, options: EmbedBenchOptions, echo: Callable[[str], None]
) -> dict[str, Any]:
    import json

    from serve_app.devtools.local_stack import (
        QUIET_SERVE_LOGS,
        free_port,
        local_ray,
        serve_http,
        temporary_redis,
    )

    notes: list[str] = []
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    docs, source = read_source(options.source)
    workload = build_workload(docs, options.texts, seed=options.seed, source=source)
    threads = os.cpu_count() or 1
    plain = _with(settings, redis_url=None, threads=threads)
    load = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    busy = cpu_busy_fraction()
    if busy is not None and busy > 0.25:
        notes.append(f"{busy:.0%} of the CPUs were busy before the run: other work skews these figures")
        echo(f"warning: {busy:.0%} of the CPUs are busy with something else; figures will be skewed")

    with contextlib.ExitStack() as stack:
        redis_url, cache_reason = options.redis_url, None
        if options.cache_check and not redis_url:
            if binary := shutil.which("redis-server"):
                try:
                    redis_url = stack.enter_context(temporary_redis(binary))
                except RuntimeError as exc:
                    cache_reason = str(exc)
            else:
                cache_reason = "no --redis-url and no redis-server on PATH"
        elif not options.cache_check:
            cache_reason = "--no-cache-check"
        cached = _with(settings, redis_url=redis_url, threads=threads) if redis_url else None

        echo(f"workload: {len(workload.texts)} texts from {source}; in-process baseline ...")
        service, model_info = load_in_process(plain)
        per_call = settings.batch.max_batch_size
        in_process = time_in_process(service, workload, options.warmup, per_call=per_call)
        echo(f"  in-process: {in_process['texts_per_s']} texts/s, {in_process['tokens_per_s']} tokens/s")
        references: dict[str, dict[str, Any]] = {}
        if options.references:
            echo("in-process, 1 text per call ...")
            references["one_per_call"] = _reference(
                time_in_process(service, workload, options.warmup, per_call=1, phase=PHASE_ONE_PER_CALL)
            )
        else:  # nothing measures it beside the stack: free its memory before Ray starts
            service = None
            gc.collect()
        engine_cache: dict[str, Any] = {"latency_ms": None, "reason": cache_reason}
        if cached is not None:
            echo("engine cache hit ...")
            probe_text = tag(workload.texts[:1], PHASE_ENGINE_CACHE)[0] + f" {time.time_ns()}"
            engine_cache = measure_engine_cache_hit(cached, probe_text)
            gc.collect()

        levels: list[dict[str, Any]] = []
        serve_cache: dict[str, Any] = {"hit_ms": None, "reason": cache_reason}
        http_port = free_port()
        url = f"http://127.0.0.1:{http_port}/v1/embed"
        echo(f"starting Ray + Serve on 127.0.0.1:{http_port} ...")
        with local_ray(ingress=settings.serve.ingress), serve_http("127.0.0.1", http_port, QUIET_SERVE_LOGS):
            _deploy(plain)
            warm = tag(workload.texts[: options.warmup], PHASE_SERVE_WARM)
            _wait_ready(url, warm[0])
            asyncio.run(
                drive(url, warm[1:], min(8, len(warm)), timeout_s=options.request_timeout_s, max_seconds=60)
            )
            if options.references:
                echo("in-process beside the idle Ray + Serve app ...")
                references["beside_idle_stack"] = _reference(
                    time_in_process(
                        service, workload, options.warmup, per_call=per_call, phase=PHASE_BESIDE_STACK
                    )
                )
                service = None
                gc.collect()
            for j, concurrency in enumerate(options.concurrency):
                before = embedder_stats()
                meter = CpuMeter()
                result = asyncio.run(
                    drive(
                        url,
                        tag(workload.texts, PHASE_LEVEL0 + j),
                        concurrency,
                        timeout_s=options.request_timeout_s,
                        max_seconds=options.max_seconds,
                        per_request=options.texts_per_request,
                    )
                )
                level = result.as_dict() | {
                    "cpu": meter.stop(),
                    "texts_per_request": options.texts_per_request,
                }
                level["batch"] = batch_from_stats(before, embedder_stats())
                levels.append(level)
                echo(
                    f"  concurrency {concurrency}: {level['texts_per_s']} texts/s, p50 "
                    f"{level['latency_ms']['p50']} ms, errors {level['errors']}, "
                    f"mean batch {level['batch'].get('mean')}"
                )
            if cached is not None:
                echo("Serve cache hit (redeploying with Redis) ...")
                try:
                    _deploy(cached)
                    nonce = str(time.time_ns())
                    texts = [f"{t} {nonce}" for t in tag(workload.texts[:10], PHASE_SERVE_CACHE)]
                    _wait_ready(url, f"warm {nonce}")
                    serve_cache = measure_serve_cache_hit(url, texts)
                except Exception as exc:
                    serve_cache = {"hit_ms": None, "reason": _reason(exc)}

    notes += contention_notes(in_process, levels)
    tokens = in_process.pop("token_counts")
    wl = workload.describe()
    wl["mean_tokens"] = round(statistics.fmean(tokens), 1)
    for kind in ("short", "long"):
        kt = [t for t, k in zip(tokens, workload.kinds, strict=True) if k == kind]
        wl[f"mean_tokens_{kind}"] = round(statistics.fmean(kt), 1) if kt else None
    b = settings.batch
    report = build_report(
        command=options.command or reconstruct_command(options),
        machine=_machine(model_info, busy, load),
        model={k: model_info[k] for k in ("id", "path", "dim", "max_length", "load_s")},
        settings={
            "max_batch_size": b.max_batch_size,
            "batch_wait_timeout_s": b.batch_wait_timeout_s,
            "encode_batch_size": b.encode_batch_size,
            "torch_threads": model_info["torch_threads"],
            "texts_per_request": options.texts_per_request,
            "model_shape": options.model_shape,
            "embedder_replicas": settings.serve.embedder_replicas,
            "embedder_num_cpus": settings.serve.embedder_num_cpus,
            "max_seconds_per_level": options.max_seconds,
            "request_timeout_s": options.request_timeout_s,
            "serve_log_level": "WARNING",
        },
        workload=wl,
        in_process=in_process,
        levels=levels,
        cache_hit={"serve": serve_cache, "engine": engine_cache},
        notes=notes,
        references=references,
    )
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    echo("")
    echo(format_table(report))
    echo(summary_line(report))
    echo(cache_line(report))
    for note in report["notes"]:
        echo(f"note: {note}")
    echo(f"raw figures: {options.out}")
    if options.markdown is not None:
        path = options.markdown
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            replace_section(current, markdown_section(report, str(options.out))), encoding="utf-8"
        )
        echo(f"section written to {path}")
    return report
