"""Real components for integration tests: Milvus Lite server, redis-server, the offline model, Ray.

Each is started once per test session on free loopback ports outside Ray's worker range and
stopped at the end; a missing redis-server or model build fails loudly instead of skipping.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from serve_app.devtools.local_stack import MilvusProcess, RedisProcess, free_port, ray_for_serve
from serve_app.devtools.model_build import SIDECAR, build_offline_model
from serve_app.settings import ModelSettings, Settings


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline M3 model: SPECRAG_TEST_MODEL_DIR, else the default location (built if missing)."""
    path = Path(os.environ.get("SPECRAG_TEST_MODEL_DIR") or ModelSettings().name_or_path)
    if not (path / SIDECAR).exists():
        build_offline_model(path)
    return path


@pytest.fixture(scope="session")
def milvus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A Milvus Lite server; ``stop()``/``start()`` (and ``process.kill()``) take it away and back."""
    process = MilvusProcess(tmp_path_factory.mktemp("milvus"))
    process.start()
    yield {
        "uri": process.uri,
        "port": process.port,
        "data": process.data_dir,
        "stop": process.stop,
        "start": process.start,
        "process": process,
    }
    process.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A real redis-server; ``kill()`` and ``start()`` let a test take it away and bring it back."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (apt-get install -y redis-server); .ci/run installs it")
    process = RedisProcess(tmp_path_factory.mktemp("redis"))
    process.start()
    yield {"url": process.url, "kill": process.kill, "start": process.start, "process": process}
    process.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: dict) -> str:
    return redis_server["url"]


@pytest.fixture(scope="session")
def ray_local() -> Iterator[dict]:
    """Local Ray; the dict names its Prometheus export port (custom metrics appear there)."""
    metrics_port = free_port()
    # Serve's HTTP entry as the embedded default runs it (``serve.ingress``: Ray's HAProxy).
    with ray_for_serve(
        Settings().serve.ingress,
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=256 * 1024 * 1024,
        _node_ip_address="127.0.0.1",
        _metrics_export_port=metrics_port,
        logging_level="WARNING",
    ):
        yield {"metrics_url": f"http://127.0.0.1:{metrics_port}/metrics"}
        from ray import serve

        serve.shutdown()
