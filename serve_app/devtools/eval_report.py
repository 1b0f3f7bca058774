"""Reporting of ``specrag eval``: the console table, the Markdown sections of docs/BENCHMARKS.md,
and the BM25 figures a collection's README states."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any


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
