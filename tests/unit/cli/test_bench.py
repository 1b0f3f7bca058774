"""``specrag bench ...``: option checks before anything loads, and the command line each records."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import serve_app.cli.bench as cli_bench
from serve_app.cli import app
from serve_app.devtools.bench import embed as bench

runner = CliRunner()


def test_bench_embed_rejects_bad_levels_before_loading_anything() -> None:
    result = CliRunner().invoke(app, ["bench", "embed", "--concurrency", "0,8"])
    assert result.exit_code == 2
    assert "concurrency" in result.output


def test_bench_group_lists_embed() -> None:
    result = CliRunner().invoke(app, ["bench", "--help"])
    assert result.exit_code == 0 and "embed" in result.output


@pytest.fixture
def embed_options(monkeypatch) -> list[bench.EmbedBenchOptions]:
    """``bench embed`` with the model check and the run itself replaced: the options it would run with."""
    seen: list[bench.EmbedBenchOptions] = []
    monkeypatch.setattr(cli_bench, "ensure_model", lambda settings: None)
    monkeypatch.setattr(bench, "run_embed_bench", lambda settings, options, echo: seen.append(options))
    return seen


def test_bench_embed_records_the_command_as_typed(embed_options, monkeypatch, tmp_path: Path) -> None:
    args = ["bench", "embed", "--texts", "12", "--concurrency", "1,4", "--out", str(tmp_path / "e.json")]
    monkeypatch.setattr("sys.argv", ["/venv/bin/specrag", *args])
    assert runner.invoke(app, args).exit_code == 0
    (options,) = embed_options
    assert options.command == f"specrag bench embed --texts 12 --concurrency 1,4 --out {tmp_path / 'e.json'}"
    assert options.texts == 12 and options.concurrency == [1, 4] and options.source == cli_bench.SAMPLE_DOCS


@pytest.mark.parametrize("form", [["--redis-url", "redis://:pw@h:1/0"], ["--redis-url=redis://:pw@h:1/0"]])
def test_bench_embed_never_records_the_redis_url(embed_options, monkeypatch, form: list[str]) -> None:
    args = ["bench", "embed", "--texts", "12", *form]
    monkeypatch.setattr("sys.argv", ["/venv/bin/specrag", *args])
    assert runner.invoke(app, args).exit_code == 0
    (options,) = embed_options
    assert options.redis_url == "redis://:pw@h:1/0"
    assert "pw" not in options.command and options.command == bench.reconstruct_command(options)
    assert "--redis-url REDIS_URL" in options.command


def test_bench_embed_in_bge_m3_shape_writes_its_own_figures(embed_options, monkeypatch) -> None:
    monkeypatch.setattr("sys.argv", ["pytest"])
    assert runner.invoke(app, ["bench", "embed", "--model-shape", "bge-m3"]).exit_code == 0
    assert runner.invoke(app, ["bench", "embed"]).exit_code == 0
    shaped, configured = embed_options
    assert shaped.model_shape == "bge-m3" and shaped.out == Path("docs/benchmarks/embed-bge-m3-shape.json")
    assert "--model-shape bge-m3" in shaped.command
    assert configured.model_shape == "configured" and configured.out == Path("docs/benchmarks/embed.json")
    assert "--model-shape" not in configured.command
    bad = runner.invoke(app, ["bench", "embed", "--model-shape", "bge-m4"])
    assert bad.exit_code == 2 and "bge-m4" in bad.output


def test_bench_embed_in_a_shape_without_a_local_tokenizer_is_a_usage_error(monkeypatch) -> None:
    monkeypatch.setattr(cli_bench, "ensure_model", lambda settings: None)
    monkeypatch.setenv("SPECRAG_MODEL__NAME_OR_PATH", "BAAI/bge-m3")
    result = runner.invoke(app, ["bench", "embed", "--model-shape", "bge-m3"])
    assert result.exit_code == 2 and "is not one" in result.output  # the reason, not a traceback


def test_bench_embed_can_skip_the_reference_runs(embed_options, monkeypatch) -> None:
    monkeypatch.setattr("sys.argv", ["pytest"])
    assert runner.invoke(app, ["bench", "embed", "--no-references"]).exit_code == 0
    assert runner.invoke(app, ["bench", "embed"]).exit_code == 0
    skipped, default = embed_options
    assert not skipped.references and "--no-references" in skipped.command
    assert default.references and "--no-references" not in default.command


def test_bench_embed_outside_the_script_records_the_equivalent_command(embed_options, monkeypatch) -> None:
    monkeypatch.setattr("sys.argv", ["pytest"])
    assert runner.invoke(app, ["bench", "embed", "--no-cache-check"]).exit_code == 0
    (options,) = embed_options
    assert options.command == bench.reconstruct_command(options) and "--no-cache-check" in options.command


def test_bench_load_rejects_a_bad_mix_or_a_remote_url_before_starting_anything(monkeypatch) -> None:
    monkeypatch.setattr(cli_bench, "local_stack", lambda *a: (_ for _ in ()).throw(AssertionError("started")))
    monkeypatch.setattr(cli_bench, "ensure_model", lambda s: (_ for _ in ()).throw(AssertionError("loaded")))
    assert runner.invoke(app, ["bench", "load", "--mix", "search=x"]).exit_code == 2
    result = runner.invoke(app, ["bench", "load", "--url", "http://192.0.2.1:8000"])
    assert result.exit_code == 2 and "loopback" in result.output


def test_bench_search_and_reembed_need_their_data(tmp_path: Path) -> None:
    assert runner.invoke(app, ["bench", "search", str(tmp_path / "missing")]).exit_code == 2
    assert runner.invoke(app, ["bench", "reembed", str(tmp_path / "missing")]).exit_code == 2
