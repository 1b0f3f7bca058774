"""The embedded default on loopback: a Milvus Lite server, a local Ray, the Serve app.

Milvus Lite runs as a *server* process (not a ``.db`` file) because the Searcher replicas,
the ingest driver and Ray Data actors are separate processes, and a Lite ``.db`` file opens
in one process only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

# What Ray needs to stay local, quiet and unauthenticated on a developer machine (ENVIRONMENT.md).
LOCAL_RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def apply_local_env() -> None:
    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)


def port_open(host: str, port: int) -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def milvus_lite_executable() -> str:
    beside = Path(sys.executable).parent / "milvus-lite"
    if beside.exists():
        return str(beside)
    found = shutil.which("milvus-lite")
    if not found:
        raise RuntimeError("milvus-lite is not installed (pip install milvus-lite==3.2.2)")
    return found


@contextlib.contextmanager
def milvus_lite_server(data_dir: Path, host: str = "127.0.0.1", port: int = 29530) -> Iterator[str]:
    """Start ``milvus-lite server`` and yield its URI once it answers; stop it on exit."""
    if 10002 <= port <= 19999:
        raise ValueError("ports 10002-19999 are Ray's worker range; pick another Milvus port")
    uri = f"http://{host}:{port}"
    if port_open(host, port):
        raise RuntimeError(f"{host}:{port} is already in use; stop what runs there or set another port")
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "milvus-lite.log"
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(
            [
                milvus_lite_executable(),
                "server",
                "--data-dir",
                str(data_dir),
                "--host",
                host,
                "--port",
                str(port),
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us, and we stop it in order
        )
    try:
        deadline = time.monotonic() + 60
        while not port_open(host, port):
            if proc.poll() is not None:
                raise RuntimeError(f"milvus-lite server exited ({proc.returncode}); see {log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"milvus-lite server did not open {host}:{port} in 60 s; see {log_path}")
            time.sleep(0.2)
        log.info("Milvus Lite server on %s (data in %s)", uri, data_dir)
        yield uri
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@contextlib.contextmanager
def local_ray(num_cpus: int | None = None, dashboard: bool = False) -> Iterator[None]:
    import ray

    apply_local_env()
    ray.init(
        num_cpus=num_cpus or max(os.cpu_count() or 2, 2),
        include_dashboard=dashboard,
        object_store_memory=256 * 1024 * 1024,
        _node_ip_address="127.0.0.1",  # loopback only: nothing of the embedded default is exposed
        logging_level=logging.WARNING,
        log_to_driver=True,
    )
    try:
        yield
    finally:
        ray.shutdown()
