from __future__ import annotations

import json

from typer.testing import CliRunner

from serve_app.cli import app

runner = CliRunner()


def test_settings_prints_redacted_tree(monkeypatch) -> None:
    monkeypatch.setenv("SPECRAG_REDIS_URL", "redis://:s3cret@cache:6380/0")
    result = runner.invoke(app, ["settings"])
    assert result.exit_code == 0
    tree = json.loads(result.output)
    assert tree["redis"]["url"] == "**********" and "s3cret" not in result.output


def test_invalid_settings_exit_2_naming_the_field(monkeypatch) -> None:
    monkeypatch.setenv("SPECRAG_SEARCH__RRF_K", "zero")
    result = runner.invoke(app, ["settings"])
    assert result.exit_code == 2
    assert "search.rrf_k" in result.output
