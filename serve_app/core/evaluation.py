"""Retrieval evaluation on a BEIR-layout collection: nDCG@10, Recall@10/100, MRR@10.

Runs the same engines the Serve graph wraps (encoder, Retriever, rerank) in-process, so a
figure here is the service's ranking without HTTP in between.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve_app.core.embedding import EmbeddingService, EmbedItem
from serve_app.core.expansion import QueryExpansion
from serve_app.core.fusion import Candidate
from serve_app.core.retrieval import Retriever, passage_text, rerank

log = logging.getLogger(__name__)

# One row of the matrix each: which channels, ColBERT rerank or not, expansion or not. "full" is
# the default /v1/search pipeline. Overrides of search settings ride along (e.g. language balance).
CONFIGS: dict[str, dict[str, Any]] = {
    "dense": {"channels": ("dense",)},
    "sparse": {"channels": ("sparse",)},
    "sparse-no-idf": {"channels": ("sparse",), "idf": False},
    "dense+sparse": {"channels": ("dense", "sparse")},
    "dense+sparse+balance": {"channels": ("dense", "sparse"), "search": {"language_balance": True}},
    "dense+sparse+expansion": {"channels": ("dense", "sparse"), "expand": True},
    "dense+sparse+colbert": {"channels": ("dense", "sparse"), "rerank": True},
    "full": {"channels": ("dense", "sparse"), "rerank": True, "expand": True},
}
DEFAULT_CONFIGS = (
    "dense",
    "sparse",
    "dense+sparse",
    "dense+sparse+expansion",
    "dense+sparse+colbert",
    "full",
)


@dataclass
class Query:
    qid: str
    text: str
    lang: str
    type: str


def load_queries(root: Path, split: str) -> tuple[list[Query], dict[str, dict[str, int]]]:
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    qrels_path = root / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        raise ValueError(f"{qrels_path} not found: is {root} a BEIR-layout collection?")
    with qrels_path.open(encoding="utf-8") as fh:
        for line in fh:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3 or not parts[2].lstrip("-").isdigit():
                continue  # header or blank
            qrels[parts[0]][parts[1]] = int(parts[2])
    queries = []
    with (root / "queries.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if str(row["_id"]) in qrels:
                queries.append(
                    Query(str(row["_id"]), row["text"], row.get("lang", "?"), row.get("type", "?"))
                )
    return queries, dict(qrels)


def metrics(ranked_docs: Sequence[str], relevant: dict[str, int]) -> dict[str, float]:
    rel = {d for d, g in relevant.items() if g > 0}
    if not rel:
        return {}
    dcg = sum((2 ** relevant.get(d, 0) - 1) / math.log2(i + 2) for i, d in enumerate(ranked_docs[:10]))
    ideal = sorted((g for g in relevant.values() if g > 0), reverse=True)[:10]
    idcg = sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(ideal))
    mrr = next((1.0 / (i + 1) for i, d in enumerate(ranked_docs[:10]) if d in rel), 0.0)
    return {
        "ndcg@10": dcg / idcg if idcg else 0.0,
        "recall@10": len(rel & set(ranked_docs[:10])) / len(rel),
        "recall@100": len(rel & set(ranked_docs[:100])) / len(rel),
        "mrr@10": mrr,
    }


def _doc_ranking(candidates: Sequence[Candidate]) -> list[str]:
    seen: dict[str, None] = {}
    for c in candidates:
        seen.setdefault(c.fields["doc_id"], None)
    return list(seen)


def _mean(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    if not rows:
        return {}
    return {k: round(sum(r[k] for r in rows) / len(rows), 4) for k in rows[0]}


def _bias(
    ranked: Sequence[Candidate], query: Query, relevant: dict[str, int], doc_langs: dict[str, str]
) -> dict[str, float]:
    """Language bias: share of the top 10 in the query's language; recall@10 per answer language."""
    top = ranked[:10]
    out: dict[str, float] = {}
    if top:
        out["same_lang@10"] = sum(c.fields.get("lang") == query.lang for c in top) / len(top)
    found = set(_doc_ranking(top))
    for lang in ("ja", "en"):
        rel = {d for d, g in relevant.items() if g > 0 and doc_langs.get(d) == lang}
        if rel:
            out[f"recall@10_{lang}_answers"] = len(rel & found) / len(rel)
    return out


def _mean_keys(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean per key over the rows that have it (bias keys exist only for some queries)."""
    keys = dict.fromkeys(k for r in rows for k in r)
    return {k: round(sum(r[k] for r in rows if k in r) / sum(k in r for r in rows), 4) for k in keys}


def _spread(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``n`` (a subset that keeps every query type)."""
    if k >= n:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)}) if k > 1 else [0]


def evaluate(
    service: EmbeddingService,
    retriever: Retriever,
    queries: Sequence[Query],
    qrels: dict[str, dict[str, int]],
    *,
    configs: Sequence[str] = DEFAULT_CONFIGS,
    rerank_queries: int = 100,
    expansion: QueryExpansion | None = None,
    doc_langs: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Per configuration: overall means, breakdowns by query lang and type, and language bias."""
    doc_langs = doc_langs or {}
    report: dict[str, Any] = {"configs": {}}
    vectors: dict[str, dict[str, Any]] = {}  # query text -> Embedder output (dense, sparse)
    passages: dict[str, dict[str, Any]] = {}  # chunk id -> output with ColBERT (shared by rerank configs)
    colbert_queries: dict[str, dict[str, Any]] = {}

    def encode(texts: Sequence[str]) -> None:
        todo = list(dict.fromkeys(t for t in texts if t not in vectors))
        for start in range(0, len(todo), 32):
            batch = todo[start : start + 32]
            for text, out in zip(
                batch, service.embed_items([EmbedItem(t, "query") for t in batch]), strict=True
            ):
                vectors[text] = out

    started = time.perf_counter()
    encode([q.text for q in queries])
    report["encode_queries_s"] = round(time.perf_counter() - started, 2)
    variants: dict[str, list[dict[str, Any]]] = {}
    if any(CONFIGS[c].get("expand") for c in configs):
        if expansion is None:
            raise ValueError("an expansion config needs a QueryExpansion")
        t0 = time.perf_counter()
        for q in queries:
            variants[q.qid] = asyncio.run(expansion.expand(q.text))["variants"]
        encode([v["text"] for vs in variants.values() for v in vs])
        expanded = sum(len(v) > 1 for v in variants.values())
        report["expansion"] = {
            "queries_with_variants": expanded,
            "variants": sum(len(v) - 1 for v in variants.values()),
            "origins": dict(Counter(v["origin"] for vs in variants.values() for v in vs[1:])),
            "glossary_pairs": len(expansion.glossary),
            "seconds": round(time.perf_counter() - t0, 2),
        }

    def plan(q: Query, expand: bool) -> list[dict[str, Any]]:
        chosen = variants[q.qid] if expand else [{"text": q.text, "lang": q.lang, "origin": "original"}]
        return [
            {"dense": vectors[v["text"]]["dense"], "sparse": vectors[v["text"]]["sparse"], **v}
            for v in chosen
            if not vectors[v["text"]].get("error")
        ]

    async def run_all(r: Retriever, cfg: dict[str, Any], subset: Sequence[int]) -> list[list[Candidate]]:
        sem = asyncio.Semaphore(8)

        async def one(i: int) -> list[Candidate]:
            async with sem:
                q = queries[i]
                cands, _ = await r.search(
                    plan(q, bool(cfg.get("expand"))), top_k=100, channels=cfg["channels"], limit=100
                )
                return cands

        return await asyncio.gather(*(one(i) for i in subset))

    def rerank_head(q: Query, head: list[Candidate]) -> list[Candidate]:
        if q.text not in colbert_queries:
            colbert_queries[q.text] = service.embed_items([EmbedItem(q.text, "query", colbert=True)])[0]
        todo = [c for c in head if c.chunk_id not in passages]
        outs = service.embed_items([EmbedItem(passage_text(c.fields), "passage", colbert=True) for c in todo])
        passages.update({c.chunk_id: o for c, o in zip(todo, outs, strict=True)})
        return rerank(colbert_queries[q.text], [passages[c.chunk_id] for c in head], head, retriever.settings)

    rerank_subset = _spread(len(queries), rerank_queries)
    for name in configs:
        cfg = CONFIGS[name]
        r = Retriever(
            retriever.store,
            retriever.settings.model_copy(update=cfg.get("search", {})),
            idf=retriever.idf if cfg.get("idf", True) else None,
        )
        subset = rerank_subset if cfg.get("rerank") else list(range(len(queries)))
        t0 = time.perf_counter()
        ranked = asyncio.run(run_all(r, cfg, subset))
        if cfg.get("rerank"):
            n = retriever.settings.rerank_candidates
            for pos, i in enumerate(subset):
                if pos and pos % 25 == 0:
                    log.info("%s rerank: %d/%d queries", name, pos, len(subset))
                ranked[pos] = rerank_head(queries[i], ranked[pos][:n]) + ranked[pos][n:]
        elapsed = time.perf_counter() - t0
        rows, by_lang, by_type = [], defaultdict(list), defaultdict(list)
        for pos, i in enumerate(subset):
            q = queries[i]
            m = metrics(_doc_ranking(ranked[pos]), qrels[q.qid])
            if not m:
                continue
            m.update(_bias(ranked[pos], q, qrels[q.qid], doc_langs))
            rows.append(m)
            by_lang[q.lang].append(m)
            by_type[q.type].append(m)
        log.info("%s: %d queries in %.1f s", name, len(subset), elapsed)
        report["configs"][name] = {
            "queries": len(rows),
            **_mean_keys(rows),
            "by_lang": {k: {"queries": len(v), **_mean_keys(v)} for k, v in sorted(by_lang.items())},
            "by_type": {k: {"queries": len(v), **_mean_keys(v)} for k, v in sorted(by_type.items())},
            "seconds": round(elapsed, 2),
        }
        if (
            not cfg.get("rerank")
            and len(rerank_subset) < len(queries)
            and any(CONFIGS[c].get("rerank") for c in configs)
        ):
            # The same metrics on the rerank configs' subset, so every row can be compared with them.
            picked = set(rerank_subset)
            on_subset = [
                metrics(_doc_ranking(ranked[pos]), qrels[queries[i].qid])
                for pos, i in enumerate(subset)
                if i in picked
            ]
            report["configs"][name]["rerank_subset"] = _mean([m for m in on_subset if m])
        if cfg.get("rerank") and len(subset) < len(queries):
            # The same subset without rerank, so the rerank figure has a fair comparison.
            base_cfg = {k: v for k, v in cfg.items() if k != "rerank"}
            base = [
                metrics(_doc_ranking(c), qrels[queries[i].qid])
                for c, i in zip(asyncio.run(run_all(r, base_cfg, subset)), subset, strict=True)
            ]
            report["configs"][name]["same_queries_without_rerank"] = _mean([b for b in base if b])
    return report


def collection_name(dataset: Path) -> str:
    return "eval_" + re.sub(r"[^A-Za-z0-9_]", "_", dataset.resolve().name)[:60]


def format_table(dataset: str, report: dict[str, Any]) -> str:
    lines = [
        f"{dataset}",
        f"{'config':24} {'n':>5} {'nDCG@10':>8} {'R@10':>7} {'R@100':>7} {'MRR@10':>7}",
    ]
    for name, r in report["configs"].items():
        lines.append(
            f"{name:24} {r['queries']:>5} {r['ndcg@10']:>8.3f} {r['recall@10']:>7.3f} "
            f"{r['recall@100']:>7.3f} {r['mrr@10']:>7.3f}"
            + (f"  same-lang@10 {r['same_lang@10']:.2f}" if "same_lang@10" in r else "")
        )
        if "same_queries_without_rerank" in r:
            b = r["same_queries_without_rerank"]
            lines.append(
                f"{'  (same, no rerank)':24} {r['queries']:>5} {b['ndcg@10']:>8.3f} {b['recall@10']:>7.3f} "
                f"{b['recall@100']:>7.3f} {b['mrr@10']:>7.3f}"
            )
    return "\n".join(lines)


_BM25 = re.compile(r"dev R@10 ([0-9.]+) / MRR(?:@10)? ([0-9.]+)")


def baseline_from_readme(dataset: Path) -> dict[str, float] | None:
    """The BM25 dev figures a collection's README states ("dev R@10 x / MRR y"), if it states them."""
    readme = dataset / "README.md"
    match = _BM25.search(readme.read_text(encoding="utf-8")) if readme.is_file() else None
    return {"recall@10": float(match.group(1)), "mrr@10": float(match.group(2))} if match else None


def _f(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def markdown_section(report: dict[str, Any], json_path: Path) -> str:
    """One collection: every configuration, language bias, expansion, and the BM25 line."""
    name = report["dataset"]
    lines = [
        f"<!-- eval:{name}:start -->",
        f"### {name} (dev)",
        "",
        f"`{report.get('command', 'specrag eval')}` — {report['machine']}, {report['date']}, model"
        f" {report['model']}. Raw: `{json_path}`.",
        "",
        "| configuration | queries | nDCG@10 | R@10 | R@100 | MRR@10 | same-lang@10 | R@10 en answers"
        " | R@10 ja answers |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for config, r in report["configs"].items():
        lines.append(
            f"| {config} | {r['queries']} | {_f(r['ndcg@10'])} | {_f(r['recall@10'])} | {_f(r['recall@100'])}"
            f" | {_f(r['mrr@10'])} | {_f(r.get('same_lang@10'))} | {_f(r.get('recall@10_en_answers'))}"
            f" | {_f(r.get('recall@10_ja_answers'))} |"
        )
        if (b := r.get("same_queries_without_rerank")) is not None:
            lines.append(
                f"| — same {r['queries']} queries, no rerank | {r['queries']} | {_f(b['ndcg@10'])}"
                f" | {_f(b['recall@10'])} | {_f(b['recall@100'])} | {_f(b['mrr@10'])} | | | |"
            )
    if bm25 := report.get("bm25"):
        lines.append(
            f"| BM25 (the collection's README) | all | | {_f(bm25['recall@10'])} | |"
            f" {_f(bm25['mrr@10'])} | | | |"
        )
    if exp := report.get("expansion"):
        lines += [
            "",
            f"Expansion: {exp['glossary_pairs']} glossary term pairs learned from the corpus;"
            f" {exp['queries_with_variants']} of {len_queries(report)} queries got variants"
            f" ({', '.join(f'{k}: {v}' for k, v in exp['origins'].items()) or 'none'}).",
        ]
    lines.append(f"<!-- eval:{name}:end -->")
    return "\n".join(lines)


def len_queries(report: dict[str, Any]) -> int:
    return max((r["queries"] for r in report["configs"].values()), default=0)


def summary_section(reports: Sequence[dict[str, Any]]) -> str:
    """All collections on one table: BM25, dense only, and the full pipeline."""
    lines = [
        "<!-- eval:summary:start -->",
        "| collection | BM25 R@10 / MRR@10 | dense R@10 / MRR@10 | full pipeline R@10 / MRR@10 (queries)"
        " | full vs BM25 | full vs dense |",
        "|---|---|---|---|---|---|",
    ]
    for rep in sorted(reports, key=lambda r: r["dataset"]):
        cfg, bm25 = rep["configs"], rep.get("bm25")
        dense, full = cfg.get("dense"), cfg.get("full")
        if not dense or not full:
            continue
        # the rerank configs may run on a spread subset: compare dense on those same queries
        base = dense.get("rerank_subset") if full["queries"] < dense["queries"] else None
        ref = base or dense
        versus_bm25 = (
            f"{full['recall@10'] - bm25['recall@10']:+.3f} / {full['mrr@10'] - bm25['mrr@10']:+.3f}"
            if bm25
            else ""
        )
        lines.append(
            f"| {rep['dataset']} | {_f(bm25 and bm25['recall@10'])} / {_f(bm25 and bm25['mrr@10'])}"
            f" | {_f(dense['recall@10'])} / {_f(dense['mrr@10'])}"
            f" | {_f(full['recall@10'])} / {_f(full['mrr@10'])} ({full['queries']})"
            f" | {versus_bm25} | {full['recall@10'] - ref['recall@10']:+.3f} /"
            f" {full['mrr@10'] - ref['mrr@10']:+.3f}{' (same queries)' if base else ''} |"
        )
    lines.append("<!-- eval:summary:end -->")
    return "\n".join(lines)
