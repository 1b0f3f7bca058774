"""``specrag eval``: what it refuses before loading the model, and the corpus languages it reads."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from serve_app.cli import app
from serve_app.cli.evaluate import _corpus_langs

runner = CliRunner()


def test_unknown_configs_are_refused_before_anything_loads(tmp_path: Path, monkeypatch) -> None:
    import serve_app.cli.evaluate as evaluate

    monkeypatch.setattr(evaluate, "ensure_model", lambda s: (_ for _ in ()).throw(AssertionError("loaded")))
    result = runner.invoke(app, ["eval", str(tmp_path), "--configs", "dense,bogus"])
    assert result.exit_code == 2
    assert "bogus" in result.output


def test_eval_needs_an_existing_folder(tmp_path: Path) -> None:
    assert runner.invoke(app, ["eval", str(tmp_path / "missing")]).exit_code == 2
    (tmp_path / "file").write_text("x")
    assert runner.invoke(app, ["eval", str(tmp_path / "file")]).exit_code == 2


def test_corpus_langs_maps_passages_that_name_a_language(tmp_path: Path) -> None:
    rows = [
        {"_id": 1, "text": "a", "lang": "ja"},
        {"_id": "p2", "text": "b"},
        {"_id": "p3", "text": "c", "lang": "en"},
    ]
    (tmp_path / "corpus.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    assert _corpus_langs(tmp_path) == {"1": "ja", "p3": "en"}
