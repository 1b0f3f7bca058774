"""``serve run serve_config.local.yaml``: the local config deploys the app as an operator would.

The config is copied with free ports (and this session's Milvus Lite server) and run by Serve's
own CLI in a separate process with its own Ray; then /readyz, an ingest and a search go through
HTTP, and SIGTERM stops it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from serve_app.devtools.local_stack import LOCAL_RAY_ENV, free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parents[2]


def test_serve_run_with_the_local_config(tmp_path: Path, milvus: dict, model_dir: Path):
    serve = shutil.which("serve", path=str(Path(sys.executable).parent)) or shutil.which("serve")
    assert serve, "Ray's serve CLI should be installed with ray[serve]"
    config = yaml.safe_load((ROOT / "serve_config.local.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    args = config["applications"][0]["args"]
    args["milvus"]["uri"] = milvus["uri"]
    args["milvus"]["collection"] = "local_config"
    args["model"] = {"name_or_path": str(model_dir)}
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, **LOCAL_RAY_ENV, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [serve, "run", "--address", "local", str(path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        ready = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"serve run exited ({proc.returncode}):\n{proc.stderr.read()[-3000:]}")
            try:
                ready = httpx.get(f"{base}/readyz", timeout=10)
                if ready.json().get("status") in ("healthy", "not_initialized", "degraded"):
                    break
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(1)
        assert ready is not None and ready.json()["checks"]["model"]["status"] == "ok", ready and ready.text
        doc = {
            "doc_id": "local/config.md",
            "text": "# Local config\n\nThe local config binds 127.0.0.1 only.",
        }
        written = httpx.post(f"{base}/v1/documents", json={"documents": [doc]}, timeout=120)
        assert written.status_code == 200 and written.json()["added"] == 1, written.text
        assert httpx.get(f"{base}/readyz", timeout=30).json()["status"] == "healthy"
        found = httpx.post(
            f"{base}/v1/search", json={"query": "Which address does the local config bind?"}, timeout=120
        )
        assert found.status_code == 200 and found.json()["results"][0]["doc_id"] == "local/config.md"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
