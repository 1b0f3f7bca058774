"""The Markdown and tables the eval command writes, and the BM25 line a collection's README gives."""

from __future__ import annotations

from pathlib import Path

from serve_app.devtools.eval_report import baseline_from_readme, markdown_section, summary_section


def test_baseline_and_markdown(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("* BM25: dev R@10 0.949 / MRR 0.842; holdout 0.963 / 0.857.\n")
    assert baseline_from_readme(tmp_path) == {"recall@10": 0.949, "mrr@10": 0.842}
    assert baseline_from_readme(tmp_path / "missing") is None
    row = {"queries": 4, "ndcg@10": 0.5, "recall@10": 0.6, "recall@100": 0.9, "mrr@10": 0.4}
    full = {**row, "queries": 2, "recall@10": 0.99, "mrr@10": 0.9, "same_queries_without_rerank": row}
    report = {
        "dataset": "toy",
        "command": "specrag eval toy",
        "machine": "m",
        "date": "d",
        "model": "e5",
        "bm25": {"recall@10": 0.949, "mrr@10": 0.842},
        "configs": {
            "dense": {**row, "rerank_subset": {**row, "recall@10": 0.7, "mrr@10": 0.5}},
            "full": full,
        },
    }
    section = markdown_section(report, Path("docs/benchmarks/eval-toy.json"))
    assert section.startswith("<!-- eval:toy:start -->") and section.endswith("<!-- eval:toy:end -->")
    assert "| full | 2 | 0.500 | 0.990 | 0.900 | 0.900 |" in section and "BM25" in section
    summary = summary_section([report])
    # A report without per-query tests is an older pipeline's: shown as such, no gain claimed.
    assert "| toy (previous pipeline, not re-measured) | 2 |  | 0.500 |  | 0.500 |  |  |  |" in summary
    report["configs"]["bm25"] = {**row, "ndcg@10": 0.3}
    report["significance"] = {
        "default": "full",
        "against": {
            "bm25": {"queries": 2, "delta": 0.2, "p_ttest": 0.01, "p_randomization": 0.02},
            "dense": {"queries": 2, "delta": 0.0, "p_ttest": 1.0, "p_randomization": 1.0},
        },
        "best_baseline": "dense",
    }
    report["identifiers"] = {
        "queries": 8,
        "rank1": 0.875,
        "top10": 1.0,
        "seed": 0,
        "by_shape": {"ticket": {"queries": 8, "rank1": 0.875, "top10": 1.0}},
        "written_before_search": {"queries": 4, "rank1": 0.75, "top10": 1.0},
        "misses": [],
    }
    summary = summary_section([report])
    assert "| toy | 2 | 0.300 | 0.500 |  | 0.500 | +0.000 (dense) | 1 / 1 | 0.875 |" in summary
    section = markdown_section(report, Path("docs/benchmarks/eval-toy.json"))
    assert "- bm25: Δ nDCG@10 +0.2000 over 2 queries, p = 0.01 (t-test), 0.02 (randomisation)" in section
    assert "rank 1 for 0.875 of 8 identifier queries" in section and "ticket 0.88" in section


def test_leave_one_collection_out_picks_on_the_others() -> None:
    from serve_app.devtools.eval_report import leave_one_out, loco_section

    def rep(name: str, a: float, b: float) -> dict:
        return {"dataset": name, "configs": {"a": {"ndcg@10": a}, "b": {"ndcg@10": b}, "c": {"ndcg@10": 1.0}}}

    reports = [rep("x", 0.9, 0.1), rep("y", 0.2, 0.4), rep("z", 0.3, 0.5)]
    for r in reports:
        r["significance"] = {}
    reports.append({"dataset": "old", "configs": {"a": {"ndcg@10": 0.0}}})  # an older pipeline's: left out
    reports[2]["configs"].pop("c")  # measured on two collections only: does not compete
    rows = {r["held_out"]: r for r in leave_one_out(reports, ["a", "b", "c"])}
    assert rows["x"]["picked"] == "b" and rows["x"]["held_out_ndcg@10"] == 0.1  # b wins on y and z
    assert rows["y"]["picked"] == "a" and rows["y"]["best_on_held_out"] == "b"
    assert "| x | b | 0.450 | 0.100 | a |" in loco_section(reports, ["a", "b", "c"])
