"""``specrag reliability run|soak|fuzz``: the scenario choice, and what ``run`` records, on a fake stack."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import serve_app.cli.reliability as cli_reliability
from serve_app.cli import app
from serve_app.devtools.common import machine_description
from serve_app.devtools.reliability import scenarios

runner = CliRunner()


def test_reliability_group_lists_its_commands() -> None:
    result = runner.invoke(app, ["reliability", "--help"])
    assert result.exit_code == 0
    assert all(name in result.output for name in ("run", "soak", "fuzz"))


def test_unknown_scenario_is_refused_before_the_stack_starts(monkeypatch) -> None:
    monkeypatch.setattr(
        cli_reliability, "local_stack", lambda *a: (_ for _ in ()).throw(AssertionError("up"))
    )
    result = runner.invoke(app, ["reliability", "run", "-s", "baseline", "-s", "nope"])
    assert result.exit_code == 2
    assert "nope" in result.output and "baseline" in result.output


def _outcome(name: str, passed: bool) -> dict:
    return {
        "scenario": name,
        "passed": passed,
        "checks": {"no errors": passed},
        "requests": 10,
        "errors": 0 if passed else 2,
        "by_status": {} if passed else {"503": 2},
        "recovery_s": None,
        "acknowledged_writes": 0,
        "lost": [],
    }


@pytest.fixture
def fake_stack(monkeypatch) -> list[tuple[Path, object]]:
    started: list[tuple[Path, object]] = []

    @contextlib.contextmanager
    def stack(home: Path, settings):
        started.append((home, settings))
        yield "STACK"

    monkeypatch.setattr(cli_reliability, "local_stack", stack)
    monkeypatch.setattr(cli_reliability, "ensure_model", lambda settings: None)
    return started


def test_run_records_each_scenario_with_machine_and_command(fake_stack, monkeypatch, tmp_path: Path) -> None:
    ran = []

    def fake(name: str, passed: bool):
        def scenario(stack, duration, rate):
            ran.append((name, stack, duration, rate))
            return _outcome(name, passed)

        return scenario

    monkeypatch.setattr(
        scenarios, "SCENARIOS", {"baseline": fake("baseline", True), "redis": fake("redis", False)}
    )
    out, md = tmp_path / "rel.json", tmp_path / "REL.md"
    earlier = _outcome("redis", True) | {
        "machine": "an earlier run",
        "command": "specrag reliability run -s redis",
    }
    out.write_text(json.dumps({"scenarios": {"redis": earlier}, "soak": {"kept": 1}}))
    args = ["reliability", "run", "-s", "baseline", "--duration", "6", "--rate", "2"]
    result = runner.invoke(
        app, [*args, "--home", str(tmp_path / "home"), "--out", str(out), "--markdown", str(md)]
    )
    assert result.exit_code == 0, result.output
    assert ran == [("baseline", "STACK", 6.0, 2.0)] and fake_stack[0][0] == tmp_path / "home"
    raw = json.loads(out.read_text())
    assert raw["soak"] == {"kept": 1} and raw["scenarios"]["redis"] == earlier  # other parts kept
    assert list(raw["scenarios"]) == ["baseline", "redis"]  # in the suite's order
    baseline = raw["scenarios"]["baseline"]
    assert baseline["machine"] == machine_description(cli_reliability.STACK_MACHINE)
    assert baseline["machine"].endswith(", no GPU (Milvus Lite server, local Ray)")
    assert baseline["command"] == "specrag reliability run -s baseline --duration 6 --rate 2"
    assert "<!-- reliability:scenarios:start -->" in md.read_text() and "**pass**" in md.read_text()


def test_run_exits_1_when_a_scenario_fails(fake_stack, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(scenarios, "SCENARIOS", {"redis": lambda stack, d, r: _outcome("redis", False)})
    paths = [
        "--home",
        str(tmp_path / "h"),
        "--out",
        str(tmp_path / "r.json"),
        "--markdown",
        str(tmp_path / "R.md"),
    ]
    result = runner.invoke(app, ["reliability", "run", *paths])
    assert result.exit_code == 1
    assert "redis: FAIL ['no errors']" in result.output
