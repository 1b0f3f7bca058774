"""The freshness and formats benchmarks' reports: percentiles, sections, and the git source they drive."""

from __future__ import annotations

from pathlib import Path

from serve_app.devtools.bench import formats, freshness
from serve_app.devtools.common import replace_section


def test_percentiles_and_freshness_section() -> None:
    pcts = freshness._pcts([100.0, 200.0, 300.0, 400.0])
    assert pcts["n"] == 4 and pcts["p50_ms"] == 250.0 and pcts["max_ms"] == 400.0
    assert pcts["p95_ms"] is not None and pcts["p99_ms"] is not None
    empty = freshness._pcts([])
    report = {
        "command": "specrag bench freshness",
        "machine": "2 CPUs",
        "post_documents": pcts,
        "git_increment": {
            "files_per_commit": 10,
            "all_files": pcts,
            "per_file": pcts,
            "beyond_embedding": empty,
            "sync_recorded": pcts,
        },
        "load": {"rate": 1.5, "duration_s": 150.0, "requests": 225, "errors": 0},
    }
    text = freshness.section(report, "docs/benchmarks/freshness.json")
    assert text.startswith(freshness.MARK_START) and text.endswith(freshness.MARK_END)
    assert "| `POST /v1/documents`, one document | 4 | 250.0 |" in text
    assert "225 requests, 0 errors" in text and "(benchmarks/freshness.json)" in text
    assert replace_section(replace_section("# B\n", text), text).count(freshness.MARK_START) == 1


def test_git_source_repo_commits_every_page(tmp_path: Path) -> None:
    repo = freshness.Repo.create(tmp_path / "repo", files=3)
    head = repo.commit([11111, 22222, 33333])
    pages = sorted((tmp_path / "repo" / "runbook").glob("*.md"))
    assert len(pages) == 3 and "22222" in pages[1].read_text()
    assert repo.git("rev-parse", "HEAD") == head


def test_formats_section_lists_every_row_and_the_glyph_line() -> None:
    rows = [
        {
            "document": "a.xlsx",
            "path": "markitdown",
            "strings": "3/11",
            "trails": "0/2",
            "title_ok": False,
            "chars": 2289,
            "ms": 47.0,
        },
        {
            "document": "a.xlsx",
            "path": "chosen",
            "strings": "11/11",
            "trails": "2/2",
            "title_ok": True,
            "chars": 441,
            "ms": 9.0,
        },
        {"document": "b.docx", "path": "markitdown", "error": "Could not find the body element"},
    ]
    report = {
        "command": "specrag bench formats",
        "documents": rows,
        "speed": [{"size": "10 rows", "path": "chosen", "seconds": 0.1}],
        "pdf_glyphs": {
            "characters": 10,
            "pdfplumber_found": 9,
            "pypdfium2_found": 10,
            "lone_kanji_page": {"pdfplumber": "型", "pypdfium2": ""},
        },
    }
    text = formats.section(report, "docs/benchmarks/formats.json")
    assert "| a.xlsx | chosen | 11/11 | 2/2 | yes | 441 | 9.0 |" in text
    assert "error: Could not find the body element" in text and "pdfplumber 9/10" in text
