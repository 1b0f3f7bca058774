"""What the commands share: settings, logging, the model check, collections, the progress bar."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import typer

from serve_app.cli import common
from serve_app.settings import ModelSettings, Settings


def test_load_settings_exits_2_naming_the_field(monkeypatch, capsys) -> None:
    monkeypatch.setenv("SPECRAG_SEARCH__RRF_K", "zero")
    with pytest.raises(typer.Exit) as done:
        common.load_settings()
    assert done.value.exit_code == 2
    assert "invalid settings" in capsys.readouterr().err


def test_prepare_sets_up_logging_env_and_settings(monkeypatch) -> None:
    monkeypatch.delenv("RAY_USAGE_STATS_ENABLED", raising=False)
    settings = common.prepare(False)
    assert isinstance(settings, Settings)
    import os

    assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0"  # apply_local_env ran
    assert logging.getLogger("httpx").level == logging.WARNING  # a line per request otherwise


def test_host_port() -> None:
    assert common.host_port("http://127.0.0.1:29530") == ("127.0.0.1", 29530)
    assert common.host_port("milvus.internal") == ("milvus.internal", 19530)
    assert common.host_port("localhost:1234") == ("localhost", 1234)
    assert common.host_port("https://m.example", default_port=443) == ("m.example", 443)


def test_with_collection_leaves_the_settings_alone_without_one() -> None:
    settings = Settings()
    assert common.with_collection(settings, None) is settings
    other = common.with_collection(settings, "docs_v2")
    assert other.milvus.collection == "docs_v2" and settings.milvus.collection != "docs_v2"
    assert other.milvus.uri == settings.milvus.uri


def test_milvus_down_exits_3_with_a_hint(capsys) -> None:
    exit_ = common.milvus_down(RuntimeError("connection refused"))
    assert isinstance(exit_, typer.Exit) and exit_.exit_code == 3
    err = capsys.readouterr().err
    assert "connection refused" in err and "specrag up" in err and "SPECRAG_MILVUS_URI" in err


def test_ensure_model_builds_only_the_embedded_default(monkeypatch, tmp_path: Path) -> None:
    import serve_app.devtools.model_build as model_build

    built: list[Path] = []
    monkeypatch.setattr(model_build, "build_offline_model", built.append)
    common.ensure_model(Settings(model={"name_or_path": str(tmp_path / "elsewhere")}))
    assert built == []  # a production path is never built
    default = Path(ModelSettings().name_or_path)
    common.ensure_model(Settings())
    assert built == ([] if (default / model_build.SIDECAR).exists() else [default])


def test_progress_logs_off_a_terminal(caplog) -> None:
    bar = common.Progress(10, every_s=0.0)
    assert bar.bar is None  # pytest's stderr is no terminal
    report = SimpleNamespace(
        documents=4, total=10, chunks_embedded=7, chunks_reused=2, unchanged=1, failed=["x"]
    )
    with caplog.at_level(logging.INFO, logger="specrag"):
        bar(report)
    bar.close()
    assert (
        "ingest: 4/10 documents, 7 chunks embedded, 2 reused, 1 unchanged documents, 1 failed" in caplog.text
    )


def test_progress_logs_at_most_every_interval(caplog) -> None:
    bar = common.Progress(None, every_s=3600)
    bar.last = time.monotonic() - 3600  # the last line is an interval old: the next call logs
    report = SimpleNamespace(
        documents=1, total=None, chunks_embedded=1, chunks_reused=0, unchanged=0, failed=[]
    )
    with caplog.at_level(logging.INFO, logger="specrag"):
        bar(report)
        bar(report)
    assert caplog.text.count("ingest: 1 documents") == 1
