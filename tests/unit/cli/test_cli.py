"""The root ``specrag`` app: every group and command registered once, in the order of ``--help``, and
the entry points (console script, ``python -m serve_app.cli``, the Ray jobs) reach it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from serve_app.cli import app, main

runner = CliRunner()

COMMANDS = ["ingest", "delete", "reindex", "rollback", "eval", "settings", "up", "openapi"]
GROUPS = {
    "model": ["build-offline"],
    "lexicon": ["build"],
    "keys": ["create"],
    "bench": ["embed", "reembed", "search", "latency", "load", "freshness", "formats"],
    "reliability": ["run", "soak", "fuzz"],
    "deploy": ["kuberay"],
    "cluster": ["up", "down", "bench"],
}


def test_root_registers_commands_then_groups_in_help_order() -> None:
    root = typer.main.get_command(app)
    assert list(root.commands) == [*COMMANDS, *GROUPS]
    for group, commands in GROUPS.items():
        assert list(root.commands[group].commands) == commands, group


def test_every_command_has_help() -> None:
    for path in [[c] for c in COMMANDS] + [[g, c] for g, cs in GROUPS.items() for c in cs]:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output


def test_no_arguments_shows_help() -> None:
    result = runner.invoke(app, [])
    assert "Usage:" in result.output and "reliability" in result.output
    for group in GROUPS:
        assert "Usage:" in runner.invoke(app, [group]).output


def test_jobs_run_the_same_app() -> None:
    import jobs.ingest
    import jobs.reembed

    assert jobs.ingest.app is app and jobs.reembed.app is app


def test_main_is_the_console_script(monkeypatch) -> None:
    monkeypatch.setattr("sys.argv", ["specrag", "--help"])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 0


def test_python_dash_m_runs_the_cli() -> None:
    """The reliability suite's ingest job runs ``python -m serve_app.cli ingest ...``."""
    done = subprocess.run(
        [sys.executable, "-m", "serve_app.cli", "ingest", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "--retry-only" in done.stdout


def test_importing_the_cli_loads_no_engine() -> None:
    """``specrag --help`` stays fast: Ray, torch and the deployments load only inside commands."""
    heavy = ("ray", "torch", "deployments", "httpx", "serve_app.core.store")
    code = f"import sys, serve_app.cli; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
