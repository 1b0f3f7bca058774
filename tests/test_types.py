"""The typed internal contracts, checked by mypy inside `make test`.

What is checked and how lives in pyproject.toml (``[tool.mypy]``: the engines, the test doubles,
the settings, the HTTP layer, the Serve glue and the deployments); the contracts themselves are
``serve_app/core/contracts.py`` and the ports of ``serve_app/core/pipeline.py``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_is_clean() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
