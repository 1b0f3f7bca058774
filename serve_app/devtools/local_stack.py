"""The embedded default on loopback: a Milvus Lite server, a local Ray, the Serve app.

Milvus Lite runs as a *server* process (not a ``.db`` file) because the Searcher replicas,
the ingest driver and Ray job workers are separate processes, and a Lite ``.db`` file opens
in one process only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from serve_app.settings import RAY_WORKER_PORTS

log = logging.getLogger(__name__)

# What Ray 2.60 needs to stay local, quiet and unauthenticated on a developer machine: usage stats
# off, token auth off (else the dashboard API answers 401), no binding beyond loopback, no hub calls.
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


def free_port(low: int = 20000, high: int = 30000) -> int:
    """A loopback port outside Ray's worker range that nothing listens on right now."""
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(200):
        port = rng.randint(low, high)
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {low}-{high}")


def milvus_lite_executable() -> str:
    beside = Path(sys.executable).parent / "milvus-lite"
    if beside.exists():
        return str(beside)
    found = shutil.which("milvus-lite")
    if not found:
        raise RuntimeError("milvus-lite is not installed (pip install milvus-lite==3.2.2)")
    return found


def _milvus_answers(uri: str) -> bool:
    from pymilvus import MilvusClient

    from serve_app.core.store import GRPC_OPTIONS

    try:
        client = MilvusClient(uri=uri, timeout=2.0, dedicated=True, grpc_options=GRPC_OPTIONS)
        try:
            client.list_collections(timeout=2.0)
            return True
        finally:
            client.close()
    except Exception:
        return False


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_bytes()[-limit:].decode("utf-8", errors="replace")
    except OSError:
        return ""


@contextlib.contextmanager
def milvus_lite_server(
    data_dir: Path, host: str = "127.0.0.1", port: int = 29530, timeout_s: float = 60.0
) -> Iterator[str]:
    """Start ``milvus-lite server`` and yield its URI once a client can list collections; stop it on exit."""
    if port in RAY_WORKER_PORTS:
        raise ValueError("ports 10002-19999 are Ray's worker range; pick another Milvus port")
    uri = f"http://{host}:{port}"
    if port_open(host, port):
        raise RuntimeError(f"{host}:{port} is already in use; stop what runs there or set another port")
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "milvus-lite.log"
    cmd = [
        milvus_lite_executable(),
        "server",
        "--data-dir",
        str(data_dir),
        "--host",
        host,
        "--port",
        str(port),
    ]
    with log_path.open("ab") as log_file:
        # Own session: a terminal's Ctrl-C reaches only us, and we stop it after Serve.
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout_s
        while not (port_open(host, port) and _milvus_answers(uri)):
            if proc.poll() is not None:
                raise RuntimeError(f"milvus-lite server exited ({proc.returncode}):\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"milvus-lite server not ready on {uri} in {timeout_s:.0f} s:\n{_tail(log_path)}"
                )
            time.sleep(0.1)
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
    """A private Ray instance on loopback (``address="local"``: never joins another driver's)."""
    import ray

    apply_local_env()
    ray.init(
        address="local",
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
