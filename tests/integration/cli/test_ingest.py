"""`specrag ingest` against a real Milvus Lite server with the offline model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from serve_app.cli import app
from serve_app.core.store import MilvusStore

pytestmark = pytest.mark.integration


def _ingest(folder: Path, milvus: dict, model_dir: Path, monkeypatch) -> dict:
    monkeypatch.setenv("SPECRAG_MILVUS_URI", milvus["uri"])
    monkeypatch.setenv("SPECRAG_MODEL_PATH", str(model_dir))
    result = CliRunner().invoke(app, ["ingest", str(folder), "--collection", "cli_ingest"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_ingest_folder_versions_and_skips_unchanged(
    tmp_path: Path, milvus: dict, model_dir: Path, monkeypatch
):
    (tmp_path / "rate.md").write_text(
        "---\ndoc_id: rate\nkind: spec\n---\n# Rate limit\n600 requests per minute.\n"
    )
    (tmp_path / "ja.md").write_text("# 在庫\n引当は30分で解放されます。\n")
    first = _ingest(tmp_path, milvus, model_dir, monkeypatch)
    assert first["documents"] == 2 and first["chunks_written"] >= 2

    again = _ingest(tmp_path, milvus, model_dir, monkeypatch)
    assert again["unchanged"] == 2 and again["chunks_written"] == 0

    (tmp_path / "rate.md").write_text(
        "---\ndoc_id: rate\nkind: spec\n---\n# Rate limit\n900 requests per minute.\n"
    )
    third = _ingest(tmp_path, milvus, model_dir, monkeypatch)
    assert third["unchanged"] == 1 and third["chunks_written"] >= 1 and third["chunks_deleted"] >= 1

    store = MilvusStore(milvus["uri"], "cli_ingest", 384)
    rows = store.query('doc_id == "rate"', fields=["version", "text", "is_current"])
    assert {r["version"] for r in rows} == {2}, "only the new version remains"
    assert all("900" in r["text"] for r in rows if "requests" in r["text"])
