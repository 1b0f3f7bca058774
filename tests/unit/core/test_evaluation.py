"""Evaluation helpers: metrics, language bias, subsets, the Markdown the eval command writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.core.contracts import ScoredResult
from serve_app.core.evaluation import Query, _bias, _spread, metrics
from serve_app.core.fusion import Candidate
from serve_app.devtools.eval_report import baseline_from_readme, markdown_section, summary_section


def test_metrics_on_a_known_ranking() -> None:
    m = metrics(["x", "a", "y", "b"], {"a": 1, "b": 1})
    assert m["mrr@10"] == pytest.approx(0.5)
    assert m["recall@10"] == 1.0
    ideal = 1 + 1 / 1.584962500721156
    assert m["ndcg@10"] == pytest.approx((1 / 1.584962500721156 + 1 / 2.321928094887362) / ideal)
    assert metrics(["x"], {"a": 0}) == {}, "a query without a relevant document is skipped"


def test_language_bias_and_recall_by_answer_language() -> None:
    ranked = [
        ScoredResult(1, Candidate("1", {"doc_id": "ja1", "lang": "ja"}), 0.9),
        ScoredResult(2, Candidate("2", {"doc_id": "en9", "lang": "en"}), 0.5),
    ]
    q = Query("q", "質問", "ja", "faq")
    out = _bias(ranked, q, {"ja1": 1, "en1": 1}, {"ja1": "ja", "en1": "en"})
    assert out == {"same_lang@10": 0.5, "recall@10_ja_answers": 1.0, "recall@10_en_answers": 0.0}


def test_spread_keeps_both_ends_and_is_exact() -> None:
    assert _spread(10, 3) == [0, 4, 9] or _spread(10, 3) == [0, 5, 9]
    assert _spread(5, 10) == [0, 1, 2, 3, 4]
    assert len(_spread(703, 200)) == 200


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
