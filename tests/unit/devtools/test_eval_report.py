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
    # full vs dense compares the same queries (the rerank subset)
    assert (
        "| toy | 0.949 / 0.842 | 0.600 / 0.400 | 0.990 / 0.900 (2) | +0.041 / +0.058 | +0.290 / +0.400"
        in summary
    )
