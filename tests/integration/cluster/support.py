"""What every cluster module checks when its cluster is gone, and how it shows its figures."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest

from serve_app.devtools.cluster import process_alive


def check_stopped_and_report(
    processes: Sequence[Any], request: pytest.FixtureRequest, figures: dict[str, Any], title: str
) -> None:
    """``processes`` (read before the stop) are all gone; the module's ``figures`` printed past
    pytest's capture, so a CI log carries them."""
    assert len(processes) > 10  # ray start, GCS, raylets, agents, dashboard, Serve's actors
    assert not [p.pid for p in processes if process_alive(p)], "a node's processes outlived stop()"
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if capture is not None and figures:
        with capture.global_and_fixture_disabled():
            print(f"\n{title}: {json.dumps(figures)}")
