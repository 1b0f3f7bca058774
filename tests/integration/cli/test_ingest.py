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


def _run(args: list[str], milvus: dict, model_dir: Path, monkeypatch, code: int = 0) -> dict:
    monkeypatch.setenv("SPECRAG_MILVUS_URI", milvus["uri"])
    monkeypatch.setenv("SPECRAG_MODEL_PATH", str(model_dir))
    result = CliRunner().invoke(app, ["ingest", *args, "--collection", "cli_git"])
    assert result.exit_code == code, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_git_checkout_is_read_by_commit_and_increments(
    tmp_path: Path, milvus: dict, model_dir: Path, monkeypatch
):
    """`specrag ingest REPO` records the commit; the next run reads only what changed, and the
    same source registered in ingest.sources (what a Ray job or the HTTP trigger syncs) continues
    from the commit that run recorded. An unreadable file fails alone with its reason."""
    import os
    import subprocess

    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x"}
    env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x"}

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(repo), *args], check=True, env=env, capture_output=True)

    repo = tmp_path / "repo"
    repo.mkdir()
    git("init", "-q", "-b", "main")
    (repo / "a.md").write_text("# A\nAlpha is the first letter.\n")
    (repo / "b.md").write_text("# B\nBeta is the second letter.\n")
    git("add", "-A")
    git("commit", "-qm", "one")
    first = _run([str(repo), "--source", "letters"], milvus, model_dir, monkeypatch)
    assert first["mode"] == "full" and first["files"]["added"] == 2 and first["recorded"]

    (repo / "b.md").write_text("# B\nBeta is still the second letter.\n")
    (repo / "old.xls").write_bytes(b"\xd0\xcf\x11\xe0legacy")
    git("add", "-A")
    git("commit", "-qm", "two")
    monkeypatch.setenv("SPECRAG_INGEST__SOURCES", json.dumps({"letters": {"repo": str(repo)}}))
    second = _run(["--source", "letters"], milvus, model_dir, monkeypatch, code=4)
    assert second["mode"] == "increment" and second["files"]["modified"] == 1
    assert second["ingest"]["chunks_embedded"] == 1 and second["recorded"], (
        "an unreadable file does not hold it"
    )
    assert [f["doc_id"] for f in second["ingest"]["failed"]] == ["old.xls"]
    assert "legacy binary Office format" in second["ingest"]["failed"][0]["error"]
