"""A real Milvus Lite server for tests (a helper module, not a conftest).

``milvus-lite server`` serves one data directory over gRPC to any number of processes (Ray workers
included), unlike a ``.db`` path, which only one process can open.

    with milvus_lite_server(tmp_path / "milvus") as uri:
        store = MilvusStore(uri, "specrag", dim=8)
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
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

# Ray reserves 10002-19999 for its workers; never hand those out.
RAY_WORKER_PORTS = range(10002, 20000)
PORT_RANGE = (20000, 30000)
START_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port in 20000-30000 (outside Ray's worker range) that nothing listens on right now."""
    import random

    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(200):
        port = rng.randint(*PORT_RANGE)
        if port not in RAY_WORKER_PORTS and _port_is_free(port):
            return port
    raise RuntimeError(f"no free port found in {PORT_RANGE[0]}-{PORT_RANGE[1]}")


def milvus_lite_executable() -> str:
    """``milvus-lite`` next to the running interpreter (the venv), else from PATH."""
    candidate = Path(sys.executable).parent / "milvus-lite"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("milvus-lite")
    if found:
        return found
    raise FileNotFoundError("milvus-lite executable not found next to sys.executable or on PATH")


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode("utf-8", errors="replace")


def _client_ready(uri: str) -> bool:
    from pymilvus import MilvusClient

    # pymilvus logs every failed RPC at ERROR with a traceback; quiet it while polling.
    pm_logger = logging.getLogger("pymilvus")
    level = pm_logger.level
    pm_logger.setLevel(logging.CRITICAL)
    try:
        client = MilvusClient(uri=uri, timeout=2.0, dedicated=True)
        try:
            client.list_collections(timeout=2.0)
            return True
        finally:
            client.close()
    except Exception:
        return False
    finally:
        pm_logger.setLevel(level)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_GRACE_S)


@contextlib.contextmanager
def milvus_lite_server(
    data_dir: Path, port: int | None = None, *, timeout_s: float = START_TIMEOUT_S
) -> Iterator[str]:
    """Run ``milvus-lite server`` on 127.0.0.1 over ``data_dir``; yield ``http://127.0.0.1:PORT``."""
    port = port or free_port()
    if port in RAY_WORKER_PORTS:
        raise ValueError(f"port {port} is in Ray's worker range 10002-19999")
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    log_fd, log_name = tempfile.mkstemp(prefix="milvus-lite-", suffix=".log")
    log_path = Path(log_name)
    cmd = [
        milvus_lite_executable(),
        "server",
        "--data-dir",
        str(data_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    uri = f"http://127.0.0.1:{port}"
    with os.fdopen(log_fd, "wb") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"milvus-lite server exited with code {proc.returncode} before it was ready"
                    f" ({' '.join(cmd)}); output tail:\n{_tail(log_path)}"
                )
            if _accepts(port) and _client_ready(uri):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"milvus-lite server not ready on port {port} after {timeout_s:.0f}s;"
                    f" output tail:\n{_tail(log_path)}"
                )
            time.sleep(0.1)
        yield uri
    finally:
        _stop(proc)
        with contextlib.suppress(OSError):
            log_path.unlink()
