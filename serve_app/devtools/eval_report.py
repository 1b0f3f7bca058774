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
    if sig := report.get("significance", {}).get("against"):
        lines += [
            "",
            f"Default (`{report['significance']['default']}`) against each baseline, paired per query:",
        ]
        lines += [
            f"- {b}: Δ nDCG@10 {t['delta']:+.4f} over {t['queries']} queries,"
            f" p = {_p(t['p_ttest'])} (t-test), {_p(t['p_randomization'])} (randomisation)"
            for b, t in sig.items()
        ]
    if (ident := report.get("identifiers")) and "error" in ident:
        lines += ["", f"Identifier set: not measured ({ident['error']})."]
    elif ident:
        shapes = ", ".join(f"{k} {v['rank1']:.2f}" for k, v in ident["by_shape"].items())
        lines += [
            "",
            f"Identifier set (seed {ident['seed']}): the planted chunk at rank 1 for {ident['rank1']:.3f} of"
            f" {ident['queries']} identifier queries (top 10: {ident['top10']:.3f}; written just before their"
            f" search: {ident['written_before_search']['rank1']:.3f}); by shape: {shapes}.",
        ]
    lines.append(f"<!-- eval:{name}:end -->")
    return "\n".join(lines)


def len_queries(report: dict[str, Any]) -> int:
    return max((r["queries"] for r in report["configs"].values()), default=0)


def _p(value: float) -> str:
    """A p-value as read: the report rounds to 4 decimals, so 0 means below 0.0001 (the
    randomisation test with 10,000 resamples cannot go lower than ~0.0001 either)."""
    return "<0.0001" if value < 1e-4 else f"{value:.2g}"


def summary_section(reports: Sequence[dict[str, Any]]) -> str:
    """All collections on one table: the three baselines, the default pipeline, its gain over the
    best baseline with paired p-values, and the identifier set."""
    lines = [
        "<!-- eval:summary:start -->",
        "nDCG@10 on every dev query. Default = what `/v1/search` does with no options; p = two-sided"
        " paired t-test / randomisation test of default vs the best baseline (10,000 resamples).",
        "",
        "| collection | queries | BM25 | dense | dense100+colbert100 | default | vs best baseline"
        " | p (t / rand.) | identifiers @1 |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for rep in sorted(reports, key=lambda r: r["dataset"]):
        cfg = rep["configs"]
        default = cfg.get(rep.get("significance", {}).get("default", "full"))
        if not default:
            continue
        sig = rep.get("significance", {})
        best = sig.get("best_baseline")
        test = sig.get("against", {}).get(best) if best else None
        ident = rep.get("identifiers") if "rank1" in rep.get("identifiers", {}) else None

        def cell(name: str, cfg: dict[str, Any] = cfg) -> str:
            return _f(cfg[name]["ndcg@10"]) if name in cfg else ""

        gain = f"{test['delta']:+.3f} ({best})" if test else ""
        p_values = f"{_p(test['p_ttest'])} / {_p(test['p_randomization'])}" if test else ""
        stale = "" if "significance" in rep else " (previous pipeline, not re-measured)"
        lines.append(
            f"| {rep['dataset']}{stale} | {default['queries']} | {cell('bm25')} | {cell('dense')}"
            f" | {cell('dense100+colbert100')} | {_f(default['ndcg@10'])} | {gain} | {p_values}"
            f" | {_f(ident['rank1']) if ident else ''} |"
        )
    lines.append("<!-- eval:summary:end -->")
    return "\n".join(lines)


def leave_one_out(reports: Sequence[dict[str, Any]], candidates: Sequence[str]) -> list[dict[str, Any]]:
    """Leave-one-collection-out choice among candidate configurations.

    For each collection, the candidate with the best mean nDCG@10 over the *other* collections
    (each collection weighs the same) is picked and scored on the held-out one: what choosing a
    default on four collections is worth on a fifth. Only candidates measured on every collection
    compete.
    """
    reports = [r for r in reports if "significance" in r]  # reports of the current pipeline only
    usable = [c for c in candidates if all(c in r["configs"] for r in reports)]
    rows = []
    for held in reports:
        others = [r for r in reports if r is not held]
        if not others or not usable:
            continue
        fitted = {c: sum(r["configs"][c]["ndcg@10"] for r in others) / len(others) for c in usable}
        pick = max(usable, key=lambda c: (fitted[c], c))
        rows.append(
            {
                "held_out": held["dataset"],
                "picked": pick,
                "fitted_mean": round(fitted[pick], 4),
                "held_out_ndcg@10": held["configs"][pick]["ndcg@10"],
                "best_on_held_out": max(usable, key=lambda c: held["configs"][c]["ndcg@10"]),
            }
        )
    return rows


def loco_section(reports: Sequence[dict[str, Any]], candidates: Sequence[str]) -> str:
    rows = leave_one_out(reports, candidates)
    lines = [
        "<!-- eval:loco:start -->",
        f"Candidates: {', '.join(f'`{c}`' for c in candidates)}. Each row picks the candidate with the best"
        " mean nDCG@10 over the other collections and scores it on the held-out one.",
        "",
        "| held-out collection | picked on the others | their mean | held-out nDCG@10 | best on held-out |",
        "|---|---|---:|---:|---|",
    ]
    lines += [
        f"| {r['held_out']} | {r['picked']} | {_f(r['fitted_mean'])} | {_f(r['held_out_ndcg@10'])}"
        f" | {r['best_on_held_out']} |"
        for r in rows
    ]
    lines.append("<!-- eval:loco:end -->")
    return "\n".join(lines)
