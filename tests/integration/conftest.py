"""Real components for integration tests: Milvus Lite server, redis-server, the offline model, Ray.

Each is started once per test session on free loopback ports outside Ray's worker range and
stopped at the end; a missing redis-server or model build fails loudly instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from serve_app.local_stack import free_port, milvus_lite_server, port_open, stop_process
from serve_app.model_build import SIDECAR, build_offline_model
from serve_app.settings import ModelSettings


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline M3 model: SPECRAG_TEST_MODEL_DIR, else the default location (built if missing)."""
    path = Path(os.environ.get("SPECRAG_TEST_MODEL_DIR") or ModelSettings().name_or_path)
    if not (path / SIDECAR).exists():
        build_offline_model(path)
    return path


@pytest.fixture(scope="session")
def milvus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A Milvus Lite server; the dict lets a test stop and restart it (``restart()``)."""
    data = tmp_path_factory.mktemp("milvus")
    port = free_port()
    state: dict = {"uri": f"http://127.0.0.1:{port}", "port": port, "data": data}
    ctx = milvus_lite_server(data, port=port)
    ctx.__enter__()
    state["ctx"] = ctx

    def stop() -> None:
        state["ctx"].__exit__(None, None, None)

    def start() -> None:
        state["ctx"] = milvus_lite_server(data, port=port)
        state["ctx"].__enter__()

    state["stop"], state["start"] = stop, start
    yield state
    state["ctx"].__exit__(None, None, None)


def _start_redis(exe: str, port: int, workdir: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 15
    while not port_open("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"redis-server did not start on port {port}")
        time.sleep(0.1)
    return proc


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A real redis-server; ``kill()`` and ``start()`` let a test take it away and bring it back."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed (apt-get install -y redis-server); .ci/run installs it")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    state: dict = {"url": f"redis://127.0.0.1:{port}/0", "proc": _start_redis(exe, port, workdir)}
    state["kill"] = lambda: state["proc"].kill() or state["proc"].wait(5)
    state["start"] = lambda: state.update(proc=_start_redis(exe, port, workdir))
    yield state
    stop_process(state["proc"])


@pytest.fixture(scope="session")
def redis_url(redis_server: dict) -> str:
    return redis_server["url"]


@pytest.fixture(scope="session")
def ray_local() -> Iterator[dict]:
    """Local Ray; the dict names its Prometheus export port (custom metrics appear there)."""
    import ray

    metrics_port = free_port()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=256 * 1024 * 1024,
        _node_ip_address="127.0.0.1",
        _metrics_export_port=metrics_port,
        logging_level="WARNING",
    )
    yield {"metrics_url": f"http://127.0.0.1:{metrics_port}/metrics"}
    from ray import serve

    serve.shutdown()
    ray.shutdown()
