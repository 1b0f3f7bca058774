"""``specrag reindex`` / ``rollback``: the job state as ``--status`` prints it, and the options."""

from __future__ import annotations

import os
import signal

import pytest
from typer.testing import CliRunner

from serve_app.cli import app
from serve_app.cli.reindex import JobStopped, _format_reindex, _stopped_by_sigterm

runner = CliRunner()


def test_format_without_a_job() -> None:
    assert _format_reindex(None) == "no re-embed job recorded"
    assert _format_reindex({}) == "no re-embed job recorded"


def test_format_a_running_job() -> None:
    state = {
        "job_id": "j1",
        "phase": "embedding",
        "total": 200,
        "done": 50,
        "failed": 2,
        "rate": 12.5,
        "eta_s": 12,
        "source": "docs_a",
        "target": "docs_b",
        "model_key": "m3:abc",
    }
    assert _format_reindex(state).splitlines() == [
        "job j1 embedding: 50/200 chunks (25%), 2 failed, 12.5 chunks/s, eta 12 s",
        "  docs_a -> docs_b (model m3:abc)",
    ]


def test_format_a_finished_job_with_validation_and_message() -> None:
    state = {
        "job_id": "j2",
        "phase": "done",
        "total": 0,
        "done": 0,
        "validation": {"top1_agreement": 0.98},
        "message": "alias switched",
    }
    lines = _format_reindex(state).splitlines()
    assert lines[0] == "job j2 done: 0/0 chunks, 0 failed, 0 chunks/s"
    assert lines[2] == '  validation: {"top1_agreement": 0.98}' and lines[3] == "  alias switched"


def test_reindex_options() -> None:
    result = runner.invoke(app, ["reindex", "--help"])
    assert result.exit_code == 0
    for option in ("--ray", "--local", "--restart", "--status", "--watch", "--failed", "--eval"):
        assert option in result.output
    assert runner.invoke(app, ["reindex", "--batch-size", "0"]).exit_code == 2


def test_rollback_takes_a_collection() -> None:
    result = runner.invoke(app, ["rollback", "--help"])
    assert result.exit_code == 0 and "--collection" in result.output


def test_sigterm_stops_the_job_like_ctrl_c_and_the_handler_is_restored() -> None:
    """``ray job stop`` sends SIGTERM: inside the job it raises (the Reindexer records "interrupted")."""
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(JobStopped, match="stopped by signal 15"), _stopped_by_sigterm():
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next line
        raise AssertionError("SIGTERM did not stop the job")
    assert signal.getsignal(signal.SIGTERM) is before
