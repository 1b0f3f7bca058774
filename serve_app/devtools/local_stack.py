"""The embedded default on loopback: a Milvus Lite server, a local Ray, the Serve app.

Milvus Lite runs as a *server* process (not a ``.db`` file) because the Searcher replicas,
the ingest driver and Ray job workers are separate processes, and a Lite ``.db`` file opens
in one process only.

Every launcher the commands, benchmarks, reliability suite and integration tests use is here,
once: ``milvus_lite_server`` / ``MilvusProcess``, ``RedisProcess`` / ``temporary_redis``,
``local_ray``, and ``serve_http`` / ``start_serve`` + ``deploy_app`` for Serve.
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
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serve_app.settings import RAY_WORKER_PORTS, IngressMode

if TYPE_CHECKING:
    from serve_app.settings import Settings

log = logging.getLogger(__name__)

# The bundled documents `specrag up` ingests; the benchmarks and the reliability stack use them too.
SAMPLE_DOCS = Path(__file__).parents[1] / "sample_docs"

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


def log_tail(path: Path, limit: int = 4000) -> str:
    """The end of a process's log file for an error message ('' when it cannot be read)."""
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
                raise RuntimeError(f"milvus-lite server exited ({proc.returncode}):\n{log_tail(log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"milvus-lite server not ready on {uri} in {timeout_s:.0f} s:\n{log_tail(log_path)}"
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


# How long a stopping Ingress replica keeps its own port open (Ray's default, 30 s, gives an
# external load balancer time to deregister it). The embedded default's only balancer is the
# HAProxy on the same node, which the controller reconfigures within ~0.1 s, and every redeploy
# and shutdown would wait out the full period.
LOCAL_DRAIN_S = 2


def ingress_env(mode: IngressMode, scratch: Path) -> dict[str, str]:
    """What Ray's processes must find in their environment at start for ``mode``
    (``serve.ingress``): Ray reads these switches once, when each process imports Serve.

    ``haproxy`` is Ray's HAProxy ingress: an HAProxy on ``serve.host:port`` forwards each request
    to an Ingress replica's own HTTP server. Serve's Python proxy instead makes a Ray call per
    request and the replica a second one back for the body (measured: ``GET /healthz`` 6.9 ms
    through it vs 1.5 ms through HAProxy, docs/BENCHMARKS.md). Its files and status ports are
    per instance (``scratch``, free ports: Ray's defaults are fixed), so two stacks on one machine
    do not collide.
    """
    if mode == "proxy":
        return {}
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(LOCAL_DRAIN_S),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(scratch / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(scratch / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(scratch),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(scratch / "server-state"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        # Serve's proxy, kept as HAProxy's backup server while no Ingress replica is up (it
        # holds requests until one is: the reliability scenario ``ingress``).
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port()),
    }


@contextlib.contextmanager
def started_with(env: dict[str, str]) -> Iterator[None]:
    """``env`` in this process's environment while Ray starts its processes (they inherit it),
    then the environment as it was; a variable the caller already set wins over ``env``."""
    added = {key: value for key, value in env.items() if key not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


@contextlib.contextmanager
def ray_scratch(mode: IngressMode) -> Iterator[dict[str, str]]:
    """:func:`ingress_env` over a temporary directory removed afterwards."""
    if mode == "proxy":
        yield {}
        return
    scratch = Path(tempfile.mkdtemp(prefix="specrag-ingress-"))
    try:
        yield ingress_env(mode, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def ray_for_serve(ingress: IngressMode, **init: Any) -> Iterator[None]:
    """``ray.init(**init)`` with ``ingress``'s environment in the processes it starts (its scratch
    directory kept while Ray runs); ``ray.shutdown()`` on exit."""
    import ray

    with ray_scratch(ingress) as env:
        with started_with(env):
            ray.init(**init)
        try:
            yield
        finally:
            ray.shutdown()


@contextlib.contextmanager
def local_ray(
    num_cpus: int | None = None, dashboard: bool = False, ingress: IngressMode = "haproxy"
) -> Iterator[None]:
    """A private Ray instance on loopback (``address="local"``: never joins another driver's);
    ``ingress`` is ``serve.ingress``, what will listen for HTTP once Serve starts in it."""
    apply_local_env()
    with ray_for_serve(
        ingress,
        address="local",
        num_cpus=num_cpus or max(os.cpu_count() or 2, 2),
        include_dashboard=dashboard,
        object_store_memory=256 * 1024 * 1024,
        _node_ip_address="127.0.0.1",  # loopback only: nothing of the embedded default is exposed
        logging_level=logging.WARNING,
        log_to_driver=True,
    ):
        yield


class MilvusProcess:
    """A ``milvus-lite server`` on a fixed port and data directory that can be stopped and started."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir, self.port = data_dir, port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self._ctx: contextlib.AbstractContextManager | None = None

    def start(self) -> None:
        self._ctx = milvus_lite_server(self.data_dir, port=self.port)
        self._ctx.__enter__()

    def stop(self) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(None, None, None)
            self._ctx = None

    def pids(self) -> list[int]:
        import psutil

        flag = f"--port {self.port}"
        return [
            p.info["pid"]
            for p in psutil.process_iter(["pid", "cmdline"])
            if "milvus-lite" in " ".join(p.info.get("cmdline") or [])
            and flag in " ".join(p.info.get("cmdline") or [])
        ]

    def kill(self) -> list[int]:
        """SIGKILL the server (no shutdown, no flush), then forget it; ``start()`` brings it back."""
        pids = self.pids()
        if not pids:  # nothing to kill: the scenario must not pass without its fault
            raise RuntimeError(f"no milvus-lite server process on port {self.port}")
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        self.stop()
        return pids


class RedisProcess:
    """A throw-away ``redis-server`` (no persistence) on loopback; ``kill()`` is SIGKILL.

    The one Redis launcher (the embed benchmark's ``temporary_redis``, the reliability stack and
    the integration tests' ``redis_server`` fixture). Restartable, because the reliability
    scenarios kill it and start it again on the same port; in its own session like the Milvus
    Lite server, so a terminal's Ctrl-C reaches only the driver, which then stops it.
    """

    def __init__(
        self, workdir: Path, port: int | None = None, timeout_s: float = 15.0, binary: str = "redis-server"
    ) -> None:
        exe = shutil.which(binary)
        if exe is None:
            raise RuntimeError(f"{binary} is not installed (apt-get install -y redis-server)")
        self.exe, self.workdir, self.port, self.timeout_s = exe, workdir, port or free_port(), timeout_s
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(
            [*cmd, "--dir", str(self.workdir)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.timeout_s
        while not port_open("127.0.0.1", self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                stop_process(self.proc)
                raise RuntimeError(f"redis-server did not start on 127.0.0.1:{self.port}")
            time.sleep(0.05)

    def kill(self) -> int:
        """SIGKILL redis-server; raises when it is not running (the fault would not be injected)."""
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"redis-server on port {self.port} is not running")
        self.proc.kill()
        self.proc.wait(5)
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None


@contextlib.contextmanager
def temporary_redis(binary: str = "redis-server", timeout_s: float = 15.0) -> Iterator[str]:
    """A :class:`RedisProcess` in a temporary directory; yields its URL and stops it on exit."""
    with tempfile.TemporaryDirectory(prefix="specrag-redis-") as workdir:
        redis = RedisProcess(Path(workdir), timeout_s=timeout_s, binary=binary)
        redis.start()
        try:
            yield redis.url
        finally:
            redis.stop()


# Serve's own access and replica logs at WARNING: the benchmarks and the reliability stack would
# otherwise print a line per request into the driver's output.
QUIET_SERVE_LOGS: dict[str, Any] = {"log_level": "WARNING"}


def start_serve(host: str, port: int, logging_config: dict[str, Any] | None = None) -> str:
    """Start Serve (its HTTP proxy on ``host:port``) in the running Ray; returns the base URL.

    Serve's proxy must not already run on another port. Whoever starts it calls ``serve.shutdown()``;
    :func:`serve_http` does both.
    """
    from ray import serve

    serve.start(http_options={"host": host, "port": port}, logging_config=logging_config)
    return f"http://{host}:{port}"


@contextlib.contextmanager
def serve_http(host: str, port: int, logging_config: dict[str, Any] | None = None) -> Iterator[str]:
    """:func:`start_serve` inside ``local_ray()`` (or any running Ray); Serve is shut down on exit."""
    from ray import serve

    try:
        yield start_serve(host, port, logging_config)
    finally:
        serve.shutdown()


def deploy_app(
    settings: Settings, name: str, route_prefix: str = "/", logging_config: dict[str, Any] | None = None
) -> None:
    """``serve.run`` of the application graph built from ``settings`` (Serve already started)."""
    from ray import serve

    from serve_app.app import build_app

    serve.run(build_app(settings), name=name, route_prefix=route_prefix, logging_config=logging_config)
