"""A local multi-node Ray cluster on one machine, and the operator's and data engineer's paths over it.

One machine plays a small production cluster: a head node with the dashboard (so Serve's REST API
behind ``serve deploy``/``serve status`` and the Jobs API behind ``ray job submit`` answer) and
worker nodes, one carrying :data:`ACCELERATOR`, a custom resource standing in for a GPU. The
Embedder asks for it in the generated Serve config the way ``num_gpus: 1`` places it on a GPU node
in ``serve_config.yaml``, so placement is tested without a GPU.

Each node is a ``ray start --block`` process in its own session, the command an operator types,
rather than ``ray.cluster_utils.Cluster`` (Ray's own tests): that one runs the nodes inside the
calling process, writes ``/tmp/ray/ray_current_cluster`` (a plain ``ray.init()`` elsewhere on the
machine would then join this cluster) and dies with its caller, while ``specrag cluster up`` must
leave the cluster running. Here the nodes live under a private temp dir (where ``ray start``
records its address instead), each node in its own ``--temp-dir`` below it as on separate machines
(a shared one lets one node's runtime-env cleanup delete the working_dir a job on another node runs
from), with random worker ports and its own dashboard-agent port (the default 52365 would collide
between nodes); stopping a node is SIGTERM to its ``ray start`` (it stops its
processes), losing one is SIGKILL to all its processes at once (:meth:`LocalCluster.kill_worker`).

The dashboard, Serve's proxy and Milvus Lite listen on 127.0.0.1; Ray's own GCS and raylets listen
where ``ray start`` puts them, on the host's address (it resolves 127.0.0.1 to it), as on a real node.

Test figures and ``specrag cluster bench`` come from the same steps: :class:`ClusterApp` (deploy,
redeploy, wait for RUNNING), :func:`run_job` (submit, follow, logs) and :func:`embedder_steps`;
on a second cluster where the Embedder has its node to itself (:func:`deploy_embedder_alone`),
:func:`observe_autoscaling` (1 -> 2 -> 1 replicas under and after load) and
:func:`lose_embedder_node_under_load` (its node killed under a ``LoadRun`` with writes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from serve_app.devtools.local_stack import LOCAL_RAY_ENV, free_port, log_tail
from serve_app.devtools.reliability.load import (
    BAD_ANSWER,
    TIMEOUT,
    TRANSPORT,
    LoadResult,
    LoadRun,
    Mix,
    Sample,
)

#: The custom resource of the worker node that stands in for a GPU node.
ACCELERATOR = "accelerator"
#: The custom resource of the nodes re-embed actors run on (``reindex.actor_resources``), so losing
#: one leaves the app's nodes alone.
REEMBED = "reembed"
REPO_ROOT = Path(__file__).resolve().parents[2]
PRODUCTION_CONFIG = REPO_ROOT / "serve_config.yaml"
STATE_FILE = "cluster.json"
# What a job's working_dir upload leaves out: the checkout's code is ~1 MiB, the rest is caches,
# docs and tests (Ray refuses packages over 100 MiB and honours .gitignore on top of this).
JOB_EXCLUDES = [
    ".git",
    ".venv",
    "var",
    "models",
    "docs",
    "tests",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    ".grimp_cache",
    ".import_linter_cache",
    "*.egg-info",
]


def ray_command(name: str) -> str:
    """``ray`` / ``serve`` of this interpreter's environment (PATH may not include the venv)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def cluster_env() -> dict[str, str]:
    """The environment of the nodes, drivers and CLI calls: the local Ray defaults, this venv first
    on PATH (a job's ``python`` must be this one), and no SPECRAG_* or RAY_ADDRESS from the caller:
    the Serve config's ``args`` and a job's ``env_vars`` are the only settings the cluster sees."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SPECRAG_") and k not in ("RAY_ADDRESS", "RAY_DASHBOARD_ADDRESS")
    }
    env.update(LOCAL_RAY_ENV)
    # The local default's "0" makes Ray refuse a second node, on Linux too.
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "1"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def node_processes(pid: int) -> list[Any]:
    """A node's live processes (``psutil.Process``): its ``ray start`` (``pid``), what it started
    (GCS, raylet, agents) and what those started (Ray's worker processes, in groups of their own),
    plus anything left in its process group. Looked up from the tree while it is intact."""
    import psutil

    found: dict[int, psutil.Process] = {}
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        found = {p.pid: p for p in [root, *root.children(recursive=True)]}
    for proc in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if proc.pid not in found and os.getpgid(proc.pid) == pid:
                found[proc.pid] = proc
    return [p for p in found.values() if process_alive(p)]


def process_alive(proc: Any) -> bool:
    """Running and not a zombie (``is_running`` also tells a reused pid from the original)."""
    import psutil

    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _kill_all(procs: list[Any], timeout_s: float = 10.0) -> list[int]:
    """SIGKILL these processes; the pids of those still alive after ``timeout_s``."""
    import psutil

    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    deadline = time.monotonic() + timeout_s
    while (left := [p.pid for p in procs if process_alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@dataclass
class NodeProcess:
    """One node: its ``ray start --block`` process leads the process group of everything it runs."""

    name: str
    pid: int
    num_cpus: float
    resources: dict[str, float]
    agent_port: int
    log: str
    head: bool = False
    node_id: str = ""


class LocalCluster:
    """A head (dashboard on) plus worker nodes on 127.0.0.1; see the module docstring for why so."""

    def __init__(
        self,
        root: Path,
        *,
        head_cpus: float = 1,
        object_store_mb: int = 128,
        port: int | None = None,
        dashboard_port: int | None = None,
        temp_dir: Path | None = None,
    ) -> None:
        self.root = root
        self.head_cpus, self.object_store_mb = head_cpus, object_store_mb
        self.port, self.dashboard_port = port or free_port(), dashboard_port or free_port()
        # Short: Ray's unix sockets live under it (107 characters at most), so not under a pytest tmp.
        self.temp_dir = temp_dir or Path(tempfile.mkdtemp(prefix="srcl-", dir="/tmp"))
        self.head: NodeProcess | None = None
        self.workers: list[NodeProcess] = []
        self._procs: dict[int, subprocess.Popen] = {}
        self._names: set[str] = set()  # every node started by this object, lost ones included

    @property
    def gcs_address(self) -> str:
        """What ``ray start --address`` and ``ray.init(address=...)`` take."""
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        """What ``serve deploy``/``serve status``/``ray job submit --address`` take."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    # ------------------------------------------------------------------------------------------
    # Nodes

    def _common_args(self, name: str, num_cpus: float, resources: dict[str, float], agent_port: int) -> list:
        return [
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--node-name={name}",
            f"--num-cpus={num_cpus:g}",
            "--num-gpus=0",
            f"--resources={json.dumps(resources)}",
            f"--object-store-memory={self.object_store_mb * 1024 * 1024}",
            f"--dashboard-agent-listen-port={agent_port}",
            "--min-worker-port=0",  # random ports: two raylets would share 10002-19999 otherwise
            "--max-worker-port=0",
            # One temp dir per node, as on separate machines: runtime envs (a job's working_dir)
            # are unpacked and garbage-collected per node under it; nodes sharing one delete the
            # files another node's driver is running from.
            f"--temp-dir={self.temp_dir if name == 'head' else self.temp_dir / name}",
            "--disable-usage-stats",
        ]

    def _spawn(self, name: str, args: list[str], **node: Any) -> NodeProcess:
        self.root.mkdir(parents=True, exist_ok=True)
        log = self.root / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [ray_command("ray"), "start", *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=cluster_env(),
                start_new_session=True,  # its own process group: the node, killable as one
            )
        self._procs[proc.pid] = proc
        self._names.add(name)
        return NodeProcess(name=name, pid=proc.pid, log=str(log), **node)

    def start(self, timeout_s: float = 120.0) -> LocalCluster:
        """The head node; returns once the dashboard answers and the head's raylet is ALIVE."""
        if self.head is not None:
            raise RuntimeError("the head node is already started")
        agent = free_port()
        args = [
            "--head",
            f"--port={self.port}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={free_port()}",
            *self._common_args("head", self.head_cpus, {}, agent),
        ]
        self.head = self._spawn(
            "head", args, num_cpus=self.head_cpus, resources={}, agent_port=agent, head=True
        )
        try:
            self._wait_node(self.head, timeout_s)
        except BaseException:
            self.stop()
            raise
        self.save()
        return self

    def add_worker(
        self, resources: dict[str, float] | None = None, num_cpus: float = 1, timeout_s: float = 90.0
    ) -> NodeProcess:
        """Join a worker node with these custom resources (e.g. ``{ACCELERATOR: 1}``)."""
        if self.head is None:
            raise RuntimeError("start() the head node first")
        # Never a lost node's name: the GCS lists it ALIVE until it misses its health checks, and
        # _wait_node would take that row (and its node id) for the new node.
        name = f"worker-{len(self.workers) + 1}"
        while name in self._names or any(w.name == name for w in self.workers):
            name += "x"
        agent = free_port()
        res = dict(resources or {})
        args = [f"--address={self.gcs_address}", *self._common_args(name, num_cpus, res, agent)]
        node = self._spawn(name, args, num_cpus=num_cpus, resources=res, agent_port=agent)
        self.workers.append(node)
        try:
            self._wait_node(node, timeout_s)
        finally:
            self.save()
        return node

    def _wait_node(self, node: NodeProcess, timeout_s: float) -> None:
        from ray.util.state import list_nodes

        deadline = time.monotonic() + timeout_s
        proc = self._procs.get(node.pid)
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(
                    f"ray start ({node.name}) exited with {proc.returncode}:\n{log_tail(Path(node.log))}"
                )
            with contextlib.suppress(Exception):
                if httpx.get(f"{self.dashboard_url}/api/version", timeout=2).status_code == 200:
                    for row in list_nodes(address=self.dashboard_url, timeout=5):
                        if _field(row, "node_name") == node.name and _field(row, "state") == "ALIVE":
                            node.node_id = _field(row, "node_id")
                            return
            time.sleep(0.5)
        raise TimeoutError(f"node {node.name} not ALIVE in {timeout_s:.0f} s:\n{log_tail(Path(node.log))}")

    def _ours(self, pid: int) -> bool:
        """Guard against a recycled pid: the process must be this cluster's ``ray start``."""
        import psutil

        try:
            return str(self.temp_dir) in " ".join(psutil.Process(pid).cmdline())
        except psutil.Error:
            return False

    def _reap(self, pid: int) -> None:
        proc = self._procs.pop(pid, None)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)

    def kill_worker(self, node: NodeProcess) -> list[int]:
        """Lose a node: SIGKILL all its processes at once (raylet, agents, replicas), as if its
        machine died; returns their pids."""
        if node not in self.workers:
            raise ValueError(f"{node.name} is not a worker of this cluster")
        procs = node_processes(node.pid) if self._ours(node.pid) else []
        if not procs:
            raise RuntimeError(f"node {node.name} has no live process")
        left = _kill_all(procs)
        self._reap(node.pid)
        self.workers.remove(node)
        self.save()
        if left:
            raise RuntimeError(f"processes of {node.name} survived SIGKILL: {left}")
        return [p.pid for p in procs]

    def _stop_node(self, node: NodeProcess, grace_s: float = 20.0, workers_s: float = 5.0) -> None:
        """SIGTERM to ``ray start``: it stops the node's daemons and exits (within ``grace_s``); the
        worker processes follow the raylet (within ``workers_s``); SIGKILL to whatever is left."""
        if not self._ours(node.pid):
            self._reap(node.pid)
            return
        procs = node_processes(node.pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(node.pid, signal.SIGTERM)
        for wait_s, waited in ((grace_s, procs[:1]), (workers_s, procs)):
            deadline = time.monotonic() + wait_s
            while any(process_alive(p) for p in waited) and time.monotonic() < deadline:
                if not self._ours(node.pid):
                    self._reap(node.pid)  # our child is a zombie until waited for
                time.sleep(0.2)
        self._reap(node.pid)
        if left := _kill_all([p for p in procs if process_alive(p)]):
            raise RuntimeError(f"processes of {node.name} survived SIGKILL: {left}")

    def processes(self) -> list[Any]:
        """Every live process of every node (``psutil.Process``), e.g. to check that none outlives stop()."""
        return [
            p for n in [*([self.head] if self.head else []), *self.workers] for p in node_processes(n.pid)
        ]

    def stop(self, keep_logs: bool = False) -> None:
        """Workers first, then the head; removes Ray's temp dir unless ``keep_logs``."""
        for node in [*self.workers, *([self.head] if self.head else [])]:
            self._stop_node(node)
        self.workers, self.head = [], None
        if not keep_logs:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        (self.root / STATE_FILE).unlink(missing_ok=True)

    def __enter__(self) -> LocalCluster:
        return self if self.head is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------
    # State for `specrag cluster up` / `down` (separate processes)

    def save(self, **extra: Any) -> None:
        path = self.root / STATE_FILE
        previous = json.loads(path.read_text()).get("extra", {}) if path.exists() else {}
        state = {
            "port": self.port,
            "dashboard_port": self.dashboard_port,
            "temp_dir": str(self.temp_dir),
            "head_cpus": self.head_cpus,
            "object_store_mb": self.object_store_mb,
            "head": asdict(self.head) if self.head else None,
            "workers": [asdict(w) for w in self.workers],
            "extra": {**previous, **extra},
        }
        self.root.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(state, indent=2))

    @classmethod
    def load(cls, root: Path) -> tuple[LocalCluster, dict[str, Any]]:
        """The cluster recorded under ``root`` by :meth:`save`, and the extras saved with it."""
        state = json.loads((root / STATE_FILE).read_text())
        cluster = cls(
            root,
            head_cpus=state["head_cpus"],
            object_store_mb=state["object_store_mb"],
            port=state["port"],
            dashboard_port=state["dashboard_port"],
            temp_dir=Path(state["temp_dir"]),
        )
        cluster.head = NodeProcess(**state["head"]) if state["head"] else None
        cluster.workers = [NodeProcess(**w) for w in state["workers"]]
        return cluster, state.get("extra", {})

    # ------------------------------------------------------------------------------------------
    # A driver of its own

    def run_driver(self, code: str, *args: str, timeout_s: float = 120.0) -> Any:
        """Run ``code`` as a Ray driver connected to this cluster, in a separate Python process
        (the caller may already hold another ``ray.init``); returns its last stdout line as JSON."""
        prelude = (
            "import json, sys, ray\n"
            "from ray import serve\n"
            "ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False)\n"
        )
        out = run_in_cluster_env(
            [sys.executable, "-c", prelude + code, self.gcs_address, *args], timeout_s, "driver"
        )
        return json.loads(out.strip().splitlines()[-1])


def _field(item: Any, name: str) -> Any:
    """A field of a state-API row (a dataclass-like row or a dict, depending on Ray's version)."""
    return item[name] if isinstance(item, dict) else getattr(item, name)


def start_milvus_detached(data_dir: Path, timeout_s: float = 60.0) -> tuple[str, int]:
    """A Milvus Lite server that outlives this process, for ``specrag cluster up``: (URI, pid).

    ``local_stack.milvus_lite_server`` is a context manager that stops the server when it is left,
    and it is left when the interpreter exits; ``specrag cluster down`` stops this one by its pid.
    """
    from serve_app.devtools.local_stack import milvus_lite_executable, port_open

    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "milvus-lite.log"
    cmd = [milvus_lite_executable(), "server", "--data-dir", str(data_dir), "--host", "127.0.0.1"]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [*cmd, "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout_s
    while not port_open("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"milvus-lite server did not start on port {port}:\n{log_tail(log)}")
        time.sleep(0.2)
    return f"http://127.0.0.1:{port}", proc.pid


# ----------------------------------------------------------------------------------------------
# The Serve config for this cluster, from serve_config.yaml's structure


def cluster_args(
    *,
    model_dir: Path | str,
    milvus_uri: str,
    redis_url: str | None,
    http_port: int,
    collection: str = "cluster",
) -> dict[str, Any]:
    """The application's ``args`` for a local cluster: the settings tree with local services."""
    args: dict[str, Any] = {
        "model": {"name_or_path": str(model_dir), "device": "cpu"},
        "milvus": {"uri": milvus_uri, "collection": collection},
        "search": {"rerank_candidates": 20},
        "serve": {"port": http_port, "embedder_num_cpus": 0.5},
    }
    if redis_url:
        args["redis"] = {"url": redis_url}
    return args


def cluster_serve_config(
    args: dict[str, Any],
    *,
    http_port: int,
    replicas: dict[str, int] | None = None,
    embedder_user_config: dict[str, Any] | None = None,
    embedder_autoscaling: dict[str, Any] | None = None,
    embedder_actor_options: dict[str, Any] | None = None,
    source: Path = PRODUCTION_CONFIG,
) -> dict[str, Any]:
    """``serve_config.yaml`` made fit for one machine: the same application, runtime_env, logging
    and Embedder ``user_config``, with ``args`` given, one replica per deployment unless
    ``replicas`` says otherwise, and the Embedder placed by :data:`ACCELERATOR` instead of
    ``num_gpus``. The proxy runs on the head only (every node's would bind the same port here).

    ``embedder_autoscaling`` (an ``autoscaling_config``, replacing the fixed count) and
    ``embedder_actor_options`` (e.g. half an accelerator, so two replicas fit one node) let a test
    watch the Embedder scale on this machine's scale; without them it is one replica on a whole one."""
    production = yaml.safe_load(source.read_text())
    app = {k: v for k, v in production["applications"][0].items() if k != "deployments"}
    app["args"] = args
    deployments = []
    for spec in production["applications"][0]["deployments"]:
        name = spec["name"]
        out: dict[str, Any] = {"name": name, "num_replicas": (replicas or {}).get(name, 1)}
        if name == "Embedder":
            out["max_ongoing_requests"] = spec["max_ongoing_requests"]
            out["user_config"] = {**spec.get("user_config", {}), **(embedder_user_config or {})}
            out["ray_actor_options"] = embedder_actor_options or {
                "num_cpus": 0.5,
                "resources": {ACCELERATOR: 1},
            }
            if embedder_autoscaling:
                del out["num_replicas"]
                out["autoscaling_config"] = dict(embedder_autoscaling)
        deployments.append(out)
    app["deployments"] = deployments
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": http_port},
        "applications": [app],
    }


def write_serve_config(path: Path, config: dict[str, Any]) -> Path:
    """Validate with Serve's own schema (what ``serve deploy`` checks) and write the YAML."""
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return path


# ----------------------------------------------------------------------------------------------
# The operator's path: serve deploy / serve status through the dashboard


def run_in_cluster_env(cmd: list[str], timeout_s: float, what: str) -> str:
    """Run ``cmd`` with the cluster's environment; its stdout, or ``RuntimeError`` with its stderr."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=cluster_env())
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def serve_cli(dashboard_url: str, *args: str, timeout_s: float = 120.0) -> str:
    """``serve <args> --address <dashboard>``, the command an operator types; its stdout."""
    return run_in_cluster_env(
        [ray_command("serve"), *args, "--address", dashboard_url], timeout_s, f"serve {' '.join(args)}"
    )


def serve_details(dashboard_url: str) -> dict[str, Any]:
    """``GET /api/serve/applications/``: what ``serve status`` summarises, with replicas and nodes."""
    response = httpx.get(f"{dashboard_url}/api/serve/applications/", timeout=10)
    response.raise_for_status()
    return response.json()


def running_replicas(details: dict[str, Any], app: str, deployment: str) -> list[dict[str, Any]]:
    application = (details.get("applications") or {}).get(app) or {}
    replicas = ((application.get("deployments") or {}).get(deployment) or {}).get("replicas") or []
    return [r for r in replicas if r.get("state") == "RUNNING"]


def app_settled(
    details: dict[str, Any],
    app: str,
    replicas: dict[str, int] | None = None,
    user_config: dict[str, dict[str, Any]] | None = None,
) -> bool:
    """RUNNING, every deployment HEALTHY with all its replicas RUNNING, and (where given) these
    replica counts and ``user_config`` values in place."""
    application = (details.get("applications") or {}).get(app)
    if not application or application.get("status") != "RUNNING":
        return False
    for name, dep in application.get("deployments", {}).items():
        running = running_replicas(details, app, name)
        if dep.get("status") != "HEALTHY" or len(running) != len(dep.get("replicas") or []):
            return False
        if replicas and name in replicas and len(running) != replicas[name]:
            return False
        wanted = (user_config or {}).get(name)
        current = (dep.get("deployment_config") or {}).get("user_config") or {}
        if wanted and any(current.get(k) != v for k, v in wanted.items()):
            return False
    return True


def wait_serve(
    dashboard_url: str, until: Callable[[dict[str, Any]], bool], timeout_s: float = 300.0
) -> dict[str, Any]:
    """Poll the Serve details until ``until`` holds; raises with the last status otherwise."""
    deadline = time.monotonic() + timeout_s
    details: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            details = serve_details(dashboard_url)
            if until(details):
                return details
        time.sleep(0.5)
    status = {
        name: {"status": a.get("status"), "message": (a.get("message") or "")[-1500:]}
        for name, a in (details.get("applications") or {}).items()
    }
    raise TimeoutError(f"Serve not settled in {timeout_s:.0f} s: {json.dumps(status)[-3000:]}")


@dataclass
class ClusterApp:
    """The application as an operator runs it on a :class:`LocalCluster`: a config file, ``serve
    deploy`` of it, redeploys of an edited copy, and the HTTP endpoint."""

    cluster: LocalCluster
    args: dict[str, Any]
    http_port: int
    config_path: Path
    app_name: str = "specrag"
    replicas: dict[str, int] = field(default_factory=dict)
    embedder_user_config: dict[str, Any] = field(default_factory=dict)
    embedder_autoscaling: dict[str, Any] = field(default_factory=dict)
    embedder_actor_options: dict[str, Any] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def config(self) -> dict[str, Any]:
        return cluster_serve_config(
            self.args,
            http_port=self.http_port,
            replicas=self.replicas,
            embedder_user_config=self.embedder_user_config,
            embedder_autoscaling=self.embedder_autoscaling or None,
            embedder_actor_options=self.embedder_actor_options or None,
        )

    def write(self) -> Path:
        return write_serve_config(self.config_path, self.config())

    def submit(self) -> None:
        """Write the config and ``serve deploy`` it, without waiting: the Serve controller goes on
        alone (e.g. while the node its Embedder needs is still to join)."""
        self.write()
        serve_cli(self.cluster.dashboard_url, "deploy", str(self.config_path))

    def deploy(self, timeout_s: float = 300.0) -> float:
        """Write the config, ``serve deploy`` it, wait until it is settled; seconds it took."""
        self.write()  # validated before the clock starts: the figure is `serve deploy` to settled
        started = time.perf_counter()
        serve_cli(self.cluster.dashboard_url, "deploy", str(self.config_path))
        expected = {name: n for name, n in self.replicas.items()}
        user_config = {"Embedder": self.embedder_user_config} if self.embedder_user_config else None
        wait_serve(
            self.cluster.dashboard_url,
            lambda d: app_settled(d, self.app_name, expected, user_config),
            timeout_s,
        )
        return time.perf_counter() - started

    def status(self) -> dict[str, Any]:
        """``serve status`` as printed (YAML), parsed."""
        return yaml.safe_load(serve_cli(self.cluster.dashboard_url, "status"))

    def replica_set(self, deployment: str) -> list[dict[str, Any]]:
        return running_replicas(serve_details(self.cluster.dashboard_url), self.app_name, deployment)


def embedder_steps(cluster: LocalCluster, app: str, texts: int = 16) -> dict[int, int]:
    """New model steps by size on the Embedder after one request of ``texts`` fresh texts: what its
    ``max_batch_size`` (a ``user_config`` knob) bounds. Through a driver of its own (one replica)."""
    code = (
        "import uuid\n"
        "h = serve.get_deployment_handle('Embedder', app_name=sys.argv[2])\n"
        "before = h.stats.remote().result()['batch_sizes']\n"
        "texts = [f'probe {uuid.uuid4().hex} ' + 'the quick brown fox jumps over the lazy dog ' * 8"
        " for _ in range(int(sys.argv[3]))]\n"
        "h.embed.remote(texts).result()\n"
        "after = h.stats.remote().result()['batch_sizes']\n"
        "new = {str(k): v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)}\n"
        "print(json.dumps(new))\n"
    )
    steps = cluster.run_driver(code, app, str(texts))
    return {int(k): int(v) for k, v in steps.items()}


# ----------------------------------------------------------------------------------------------
# Autoscaling and node loss: replica counts watched through the dashboard while a load runs


@dataclass
class Reading:
    """One look at a deployment's replicas: seconds since the watch's ``t0``, RUNNING count, nodes."""

    t_s: float
    running: int
    nodes: tuple[str, ...]


class ReplicaTimeline:
    """A thread that reads a deployment's RUNNING replicas from ``/api/serve/applications/`` every
    ``every_s``: what an operator's dashboard shows, so transitions are timed as one would see them
    (a replica counts once it is RUNNING, i.e. its model is loaded, not when it is scheduled)."""

    def __init__(self, dashboard_url: str, app: str, deployment: str, t0: float, every_s: float = 0.25):
        self.dashboard_url, self.app, self.deployment = dashboard_url, app, deployment
        self.t0, self.every_s = t0, every_s
        self.readings: list[Reading] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"watch-{deployment}", daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(httpx.HTTPError, ValueError):
                running = running_replicas(serve_details(self.dashboard_url), self.app, self.deployment)
                nodes = tuple(sorted(r.get("node_id") or "" for r in running))
                self.readings.append(Reading(round(time.monotonic() - self.t0, 2), len(running), nodes))
            self._stop.wait(self.every_s)

    def __enter__(self) -> ReplicaTimeline:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def first(self, predicate: Callable[[Reading], bool], after_s: float = 0.0) -> Reading | None:
        """The first reading at or after ``after_s`` that satisfies ``predicate``."""
        return next((r for r in list(self.readings) if r.t_s >= after_s and predicate(r)), None)

    def wait(
        self, predicate: Callable[[Reading], bool], after_s: float = 0.0, timeout_s: float = 90.0
    ) -> Reading:
        """Block until a reading satisfies ``predicate``; raises with the last readings otherwise."""
        deadline = time.monotonic() + timeout_s
        while (found := self.first(predicate, after_s)) is None:
            if time.monotonic() > deadline:
                last = self.readings[-5:]
                raise TimeoutError(f"{self.deployment}: not reached in {timeout_s:.0f} s; last: {last}")
            time.sleep(self.every_s)
        return found


class EmbedLoad:
    """``POST /v1/embed`` of unique texts (no cache answers them: each reaches the model) from a
    thread of its own, until stopped: ``every_s=0`` keeps ``concurrency`` requests in flight (closed
    loop, a steady number of ongoing requests, what Serve's autoscaler targets); ``every_s>0``
    starts one every ``every_s`` whatever is outstanding (open loop: a probe that a stalled service
    cannot slow down). Samples are :class:`~serve_app.devtools.reliability.load.Sample`, ``due_s``
    since ``t0``."""

    FILLER = "the replica under load embeds this sentence about node pools and accelerators "

    def __init__(
        self,
        base_url: str,
        t0: float,
        *,
        concurrency: int = 8,
        every_s: float = 0.0,
        timeout_s: float = 30.0,
        texts: int = 4,
        label: str = "embed",
    ) -> None:
        self.base_url, self.t0, self.concurrency, self.every_s = base_url, t0, concurrency, every_s
        self.timeout_s, self.texts, self.label = timeout_s, texts, label
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name=label, daemon=True)

    async def _one(self, client: httpx.AsyncClient, i: int) -> None:
        due = time.monotonic() - self.t0
        texts = [f"{self.label} {uuid.uuid4().hex} {i}.{k} {self.FILLER * 4}" for k in range(self.texts)]
        body = {"input": texts}
        status, reason = TRANSPORT, ""
        try:
            response = await asyncio.wait_for(client.post("/v1/embed", json=body), self.timeout_s)
            status, reason = response.status_code, "" if response.is_success else response.text[:200]
            if response.is_success:
                data = response.json().get("data") or []
                failed = [d.get("error") for d in data if d.get("error")]
                if len(data) != len(texts) or failed:
                    status, reason = BAD_ANSWER, f"{status} without every vector: {failed[:1]}"
        except (httpx.TimeoutException, TimeoutError):
            status, reason = TIMEOUT, f"no answer in {self.timeout_s} s"
        except httpx.HTTPError as exc:
            reason = f"{type(exc).__name__}: {exc}"[:200]
        except ValueError as exc:  # a 2xx whose body is not JSON
            status, reason = BAD_ANSWER, f"not JSON: {exc}"[:200]
        self.samples.append(Sample("embed", due, time.monotonic() - self.t0 - due, status, reason))

    async def _run(self) -> None:
        sem = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout_s, limits=limits) as client:

            async def fire(i: int) -> None:
                try:
                    await self._one(client, i)
                finally:
                    sem.release()

            tasks: list[asyncio.Task] = []
            while not self._stop.is_set():
                await sem.acquire()
                tasks.append(asyncio.create_task(fire(len(tasks))))
                if self.every_s:
                    await asyncio.sleep(self.every_s)
            await asyncio.gather(*tasks)

    def start(self) -> EmbedLoad:
        self._thread.start()
        return self

    def stop(self) -> list[Sample]:
        """Stop starting requests, wait for those in flight; every sample."""
        self._stop.set()
        self._thread.join(self.timeout_s + 15)
        return self.samples


def unexplained_failures(samples: list[Sample], outage: tuple[float, float] | None = None) -> list[Sample]:
    """Failures that are bugs: any non-2xx but a 503 naming its reason (``{"error": ...}``) and,
    for requests in flight during the ``outage`` window (seconds, like ``due_s``), a timeout or a
    transport error (the node they were waiting on is gone). In flight, not only started: on a
    loaded machine a request sent seconds before the kill may still wait in the lost replica's
    queue when its node dies, and nothing answers it until Ray declares the node dead."""
    out = []
    for s in samples:
        if s.ok or (s.status == 503 and '"error"' in s.reason):
            continue
        in_flight = outage and s.due_s <= outage[1] and s.due_s + s.latency_s >= outage[0]
        if in_flight and s.status in (TIMEOUT, TRANSPORT):
            continue
        out.append(s)
    return out


def replica_nodes(dashboard_url: str, app: str) -> dict[str, set[str]]:
    """Node ids of each deployment's RUNNING replicas: what a node's loss would take down."""
    details = serve_details(dashboard_url)
    deployments = ((details.get("applications") or {}).get(app) or {}).get("deployments") or {}
    return {
        name: {r.get("node_id") or "" for r in running_replicas(details, app, name)} for name in deployments
    }


#: The Embedder's autoscaling for the scaling and node-loss steps: serve_config.yaml's production
#: values shortened to seconds (why: tests/integration/cluster/test_autoscaling.py).
TEST_AUTOSCALING: dict[str, Any] = {
    "min_replicas": 1,
    "max_replicas": 2,
    "target_ongoing_requests": 2,
    "upscale_delay_s": 2,
    "downscale_delay_s": 5,
    "metrics_interval_s": 0.5,
    "look_back_period_s": 2,
}
#: Half the node's accelerator each: two replicas fit one node, a third would not.
HALF_ACCELERATOR: dict[str, Any] = {"num_cpus": 0.25, "resources": {ACCELERATOR: 0.5}}
NOT_EMBEDDER = ("Ingress", "QueryExpander", "Searcher", "Reranker", "Indexer")


def deploy_embedder_alone(app: ClusterApp, timeout_s: float = 180.0) -> tuple[NodeProcess, float]:
    """Deploy on the head alone, then join the accelerator node: the other deployments (num_cpus 0)
    are placed on the head first, so the Embedder is the only thing on its node, as on a GPU node,
    and losing that node takes the Embedder alone. The node, and seconds to the app settled."""
    started = time.perf_counter()
    app.submit()

    def others_placed(details: dict[str, Any]) -> bool:
        deployments = ((details.get("applications") or {}).get(app.app_name) or {}).get("deployments") or {}
        return all(
            (replicas := (deployments.get(name) or {}).get("replicas") or [])
            and all(r.get("node_id") for r in replicas)
            for name in NOT_EMBEDDER
        )

    wait_serve(app.cluster.dashboard_url, others_placed, timeout_s)
    worker = app.cluster.add_worker({ACCELERATOR: 1})
    wait_serve(app.cluster.dashboard_url, lambda d: app_settled(d, app.app_name, {"Embedder": 1}), timeout_s)
    return worker, time.perf_counter() - started


@dataclass
class AutoscaleRun:
    """The Embedder under a closed-loop embed load, then without it; times in seconds since ``t0``."""

    load_start_s: float
    load_end_s: float
    up: Reading
    down: Reading
    samples: list[Sample]
    readings: list[Reading]

    def figures(self) -> dict[str, Any]:
        errors = sum(1 for s in self.samples if not s.ok)
        return {
            "autoscale_up_s": round(self.up.t_s - self.load_start_s, 2),
            "autoscale_down_s": round(self.down.t_s - self.load_end_s, 2),
            "autoscale_requests": len(self.samples),
            "autoscale_errors": errors,
            "autoscale_ok_per_s": round(
                (len(self.samples) - errors) / max(self.load_end_s - self.load_start_s, 1e-9), 1
            ),
        }


def observe_autoscaling(
    app: ClusterApp, *, concurrency: int = 8, hold_s: float = 3.0, timeout_s: float = 75.0
) -> AutoscaleRun:
    """1 -> 2 RUNNING Embedder replicas under ``concurrency`` requests in flight (above the target),
    the load held ``hold_s`` on both, then back to 1 once it stops; raises if a step never comes."""
    t0 = time.monotonic()
    with ReplicaTimeline(app.cluster.dashboard_url, app.app_name, "Embedder", t0) as timeline:
        timeline.wait(lambda r: r.running == 1, timeout_s=30)
        load_start = time.monotonic() - t0
        load = EmbedLoad(app.base_url, t0, concurrency=concurrency).start()
        try:
            up = timeline.wait(lambda r: r.running == 2, after_s=load_start, timeout_s=timeout_s)
            time.sleep(hold_s)
        finally:
            samples = load.stop()
        load_end = time.monotonic() - t0
        down = timeline.wait(lambda r: r.running == 1, after_s=load_end, timeout_s=timeout_s)
    return AutoscaleRun(load_start, load_end, up, down, samples, list(timeline.readings))


@dataclass
class NodeLossRun:
    """A ``LoadRun`` during which the Embedder's node was killed and a replacement joined; ``marks``
    and the probes' ``due_s`` in seconds since the start, ``load_offset_s`` puts the load's on it."""

    result: LoadResult
    probes: list[Sample]
    marks: dict[str, float]
    lost_node: str
    replacement: str
    back: Reading
    load_offset_s: float

    @property
    def outage(self) -> tuple[float, float]:
        """From the kill until the Embedder was RUNNING again (a second's margin each side)."""
        return self.marks["kill"] - 1.0, self.back.t_s + 1.0

    def unexplained(self) -> list[Sample]:
        """Failures that are not a 503 with its reason, nor a timeout or transport error in the outage."""
        start, end = self.outage
        load_window = (start - self.load_offset_s, end - self.load_offset_s)
        return unexplained_failures(self.result.samples, load_window) + unexplained_failures(
            self.probes, self.outage
        )

    def recovered_s(self) -> float | None:
        """From the kill to the first successful probe started after it (unique text: the model ran)."""
        done = [s.due_s + s.latency_s for s in self.probes if s.ok and s.due_s >= self.marks["kill"]]
        return round(min(done) - self.marks["kill"], 2) if done else None

    def figures(self) -> dict[str, Any]:
        summary, verify = self.result.summary(), self.result.verify or {}
        return {
            "node_loss_recovery_s": self.recovered_s(),
            "node_loss_embedder_running_s": round(self.back.t_s - self.marks["kill"], 2),
            "node_loss_replacement_alive_s": round(self.marks["replacement_alive"] - self.marks["kill"], 2),
            "node_loss_requests": summary["total"]["requests"] + len(self.probes),
            "node_loss_errors": summary["total"]["errors"] + sum(1 for s in self.probes if not s.ok),
            "node_loss_errors_by_status": dict(
                Counter(str(s.status) for s in [*self.result.samples, *self.probes] if not s.ok)
            ),
            "node_loss_acknowledged_writes": verify.get("acknowledged_writes", 0),
            "node_loss_lost_writes": len(verify.get("lost") or []),
        }


def lose_embedder_node_under_load(
    app: ClusterApp,
    node: NodeProcess,
    *,
    duration_s: float = 40.0,
    rate: float = 4.0,
    kill_at_s: float = 6.0,
    mix: str = "search=6,embed=3,ingest=1",
) -> NodeLossRun:
    """A ``LoadRun`` with writes (its ``Ledger`` reads every acknowledged one back at the end); at
    ``kill_at_s`` ``node`` is killed and a replacement accelerator node joined so Serve can put the
    Embedder back. Unique-text embed probes every 0.5 s time the recovery."""
    cluster = app.cluster
    replacement: dict[str, str] = {}
    marks: dict[str, float] = {}
    t0 = time.monotonic()

    def lose_the_node() -> dict[str, Any]:
        marks["kill"] = time.monotonic() - t0
        killed = cluster.kill_worker(node)
        marks["killed"] = time.monotonic() - t0
        replacement["node_id"] = cluster.add_worker({ACCELERATOR: 1}).node_id
        marks["replacement_alive"] = time.monotonic() - t0
        return {"killed_processes": len(killed), **replacement}

    run = LoadRun(
        app.base_url,
        duration_s=duration_s,
        rate=rate,
        mix=Mix.parse(mix),
        timeout_s=20,
        seed=11,
        actions=[(kill_at_s, "lose the accelerator node", lose_the_node)],
    )
    with ReplicaTimeline(cluster.dashboard_url, app.app_name, "Embedder", t0) as timeline:
        probe = EmbedLoad(app.base_url, t0, concurrency=64, every_s=0.5, timeout_s=20, texts=1, label="probe")
        probe.start()
        try:
            result = asyncio.run(run.run())
        finally:
            probes = probe.stop()
        if "replacement_alive" not in marks:
            raise RuntimeError(f"the node was not lost and replaced: {result.events}")
        new = replacement["node_id"]
        back = timeline.wait(
            lambda r: r.running >= 1 and set(r.nodes) == {new}, after_s=marks["kill"], timeout_s=90
        )
    offset = marks["kill"] - result.events[0]["at_s"]  # the load's clock starts when its client opens
    return NodeLossRun(result, probes, marks, node.node_id, new, back, offset)


# ----------------------------------------------------------------------------------------------
# The data engineer's path: ray job submit through the dashboard


def job_runtime_env(env_vars: dict[str, str], working_dir: Path = REPO_ROOT) -> dict[str, Any]:
    """``--working-dir .`` as jobs/ingest.py documents it, less what the job never reads."""
    return {"working_dir": str(working_dir), "excludes": list(JOB_EXCLUDES), "env_vars": env_vars}


def package_mib(working_dir: Path = REPO_ROOT, excludes: list[str] | None = None) -> float:
    """Size of the zip Ray uploads for this working_dir (its own packaging; limit 100 MiB)."""
    from ray._private.runtime_env.packaging import create_package

    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "pkg.zip"
        create_package(
            str(working_dir), target, include_gitignore=True, excludes=excludes or list(JOB_EXCLUDES)
        )
        return round(target.stat().st_size / 2**20, 2)


@dataclass
class JobRun:
    job_id: str
    status: str
    message: str
    logs: str
    submit_to_running_s: float | None
    running_s: float | None
    total_s: float


def submit_job(dashboard_url: str, entrypoint: str, runtime_env: dict[str, Any]) -> str:
    """``ray job submit --no-wait``: the job's id."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(dashboard_url).submit_job(entrypoint=entrypoint, runtime_env=runtime_env)


def follow_job(
    dashboard_url: str, job_id: str, *, started: float | None = None, timeout_s: float = 300.0
) -> JobRun:
    """Follow a submitted job's status to the end (stopping it past ``timeout_s``); submit-to-RUNNING
    and RUNNING times as the client sees them, from ``started`` (the submission's perf_counter)."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(dashboard_url)
    started = time.perf_counter() if started is None else started
    running_at: float | None = None
    deadline = time.monotonic() + timeout_s
    while True:
        info = client.get_job_info(job_id)
        now = time.perf_counter()
        if info.status == JobStatus.RUNNING and running_at is None:
            running_at = now
        if info.status.is_terminal():
            break
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            raise TimeoutError(f"job {job_id} still {info.status} after {timeout_s:.0f} s")
        time.sleep(0.2)
    return JobRun(
        job_id=job_id,
        status=str(info.status.value),
        message=info.message or "",
        logs=client.get_job_logs(job_id),
        submit_to_running_s=None if running_at is None else round(running_at - started, 2),
        running_s=None if running_at is None else round(now - running_at, 2),
        total_s=round(now - started, 2),
    )


def run_job(
    dashboard_url: str, entrypoint: str, runtime_env: dict[str, Any], timeout_s: float = 300.0
) -> JobRun:
    """Submit through the Jobs API and follow it to the end (the working_dir's upload counts in
    its submit-to-RUNNING time)."""
    started = time.perf_counter()
    job_id = submit_job(dashboard_url, entrypoint, runtime_env)
    return follow_job(dashboard_url, job_id, started=started, timeout_s=timeout_s)


def stop_job(dashboard_url: str, job_id: str, timeout_s: float = 60.0) -> JobRun:
    """``ray job stop``: SIGTERM to the entrypoint (SIGKILL after Ray's grace period), followed to
    its terminal status."""
    from ray.job_submission import JobSubmissionClient

    JobSubmissionClient(dashboard_url).stop_job(job_id)
    return follow_job(dashboard_url, job_id, timeout_s=timeout_s)


def job_result(job: JobRun) -> dict[str, Any]:
    """The JSON line a ``jobs.reembed`` run prints last (its result), from the job's logs."""
    lines = [line for line in job.logs.splitlines() if line.startswith('{"job_id"')]
    if not lines:
        raise AssertionError(f"no result line in the job's logs:\n{job.logs[-3000:]}")
    return json.loads(lines[-1])


def ingest_env(*, model_dir: Path | str, milvus_uri: str, redis_url: str | None) -> dict[str, str]:
    """A job's settings: the flat SPECRAG_* aliases an operator exports (docs/operations.md)."""
    env = {"SPECRAG_MODEL_PATH": str(model_dir), "SPECRAG_MILVUS_URI": milvus_uri}
    if redis_url:
        env["SPECRAG_REDIS_URL"] = redis_url
    return env


def reembed_env(
    *, model_dir: Path | str, milvus_uri: str, collection: str, **settings: str
) -> dict[str, str]:
    """A re-embed job's settings: its alias, actors on :data:`REEMBED` nodes, progress recorded every
    0.2 s (so a test can stop it mid-build), plus ``settings`` as ``SPECRAG_<SECTION>__<KEY>``."""
    env = ingest_env(model_dir=model_dir, milvus_uri=milvus_uri, redis_url=None)
    env.update(
        SPECRAG_MILVUS__COLLECTION=collection,
        SPECRAG_REINDEX__ACTOR_RESOURCES=json.dumps({REEMBED: 1}),
        SPECRAG_INGEST__STATUS_EVERY_S="0.2",
    )
    env.update({f"SPECRAG_{k.upper()}": v for k, v in settings.items()})
    return env


# ----------------------------------------------------------------------------------------------
# `specrag cluster bench`: the same steps as the integration test, timed, to docs/benchmarks


@contextlib.contextmanager
def accelerator_cluster(root: Path) -> Iterator[tuple[LocalCluster, NodeProcess]]:
    """Head + one worker carrying :data:`ACCELERATOR`; everything stopped on exit."""
    cluster = LocalCluster(root).start()
    try:
        worker = cluster.add_worker({ACCELERATOR: 1})
        yield cluster, worker
    finally:
        cluster.stop()


def write_docs(folder: Path, marker: str) -> Path:
    """Two small documents carrying ``marker``, for an ingest job to write and a search to find."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cluster-runbook.en.md").write_text(
        f"# Cluster runbook\n\nThe {marker} procedure drains a node before maintenance. "
        "Serve moves the replicas to the remaining nodes and the search keeps answering.\n"
    )
    (folder / "cluster-runbook.ja.md").write_text(
        f"# クラスタ運用手順\n\n{marker} 手順ではメンテナンスの前にノードを退避します。"
        "レプリカは残りのノードに移り、検索は応答し続けます。\n"
    )
    return folder


def _scaling_and_node_loss(
    home: Path, model_dir: Path, milvus_uri: str, redis_url: str | None, echo: Callable[[str], None]
) -> dict[str, Any]:
    """On a second cluster (the Embedder alone on its node, :data:`TEST_AUTOSCALING`): the Embedder
    1 -> 2 -> 1 under a closed-loop embed load, then its node lost under a ``LoadRun`` with writes.
    Raises where the test would fail: an unexplained error or a lost acknowledged write."""
    cluster = LocalCluster(home / "cluster-autoscale").start()
    try:
        port = free_port()
        args = cluster_args(model_dir=model_dir, milvus_uri=milvus_uri, redis_url=redis_url, http_port=port)
        args["milvus"]["collection"] = "autoscale"
        app = ClusterApp(
            cluster,
            args,
            port,
            home / "serve_config.autoscale.yaml",
            embedder_autoscaling=TEST_AUTOSCALING,
            embedder_actor_options=HALF_ACCELERATOR,
        )
        worker, _took = deploy_embedder_alone(app)
        scaling = observe_autoscaling(app)
        if bad := unexplained_failures(scaling.samples):
            raise RuntimeError(f"autoscaling: unexplained failures {[(s.status, s.reason) for s in bad[:3]]}")
        figures = scaling.figures()
        echo(f"autoscaling: {figures}")
        wait_serve(cluster.dashboard_url, lambda d: app_settled(d, app.app_name, {"Embedder": 1}), 60)
        loss = lose_embedder_node_under_load(app, worker)
        lost = (loss.result.verify or {}).get("lost") or []
        if (bad := loss.unexplained()) or lost:
            raise RuntimeError(
                f"node loss: unexplained {[(s.status, s.reason) for s in bad[:3]]}, lost {lost[:3]}"
            )
        figures.update(loss.figures())
        echo(f"node loss: {loss.figures()}")
        return {**figures, "autoscaling_config": TEST_AUTOSCALING}
    finally:
        cluster.stop()


def run_cluster_bench(out: Path, model_dir: Path, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Start Milvus Lite, Redis and the cluster, then time: the first deploy to RUNNING, a
    ``user_config`` change, a replica-count change, an ingest job and a failing job; then, on a
    second cluster, the Embedder's autoscaling up and down and the loss of its node under load."""
    from serve_app.devtools.common import command_line, machine_description
    from serve_app.devtools.local_stack import MilvusProcess, RedisProcess

    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="specrag-cluster-bench-") as tmp:
        home = Path(tmp)
        milvus, redis = MilvusProcess(home / "milvus"), RedisProcess(home / "redis")
        milvus.start()
        try:
            redis.start()
            with accelerator_cluster(home / "cluster") as (cluster, _worker):
                port = free_port()
                args = cluster_args(
                    model_dir=model_dir, milvus_uri=milvus.uri, redis_url=redis.url, http_port=port
                )
                app = ClusterApp(cluster, args, port, home / "serve_config.cluster.yaml")
                figures["deploy_to_running_s"] = round(app.deploy(), 2)
                echo(f"deploy to RUNNING: {figures['deploy_to_running_s']} s")
                app.embedder_user_config = {"max_batch_size": 1}
                figures["user_config_apply_s"] = round(app.deploy(), 2)
                echo(f"user_config applied: {figures['user_config_apply_s']} s")
                app.replicas = {"Reranker": 2}
                figures["replica_count_change_s"] = round(app.deploy(), 2)
                echo(f"Reranker 1 -> 2: {figures['replica_count_change_s']} s")
                env = ingest_env(model_dir=model_dir, milvus_uri=milvus.uri, redis_url=redis.url)
                docs = write_docs(home / "docs", "blue-green")
                figures["job_package_mib"] = package_mib()
                job = run_job(
                    cluster.dashboard_url,
                    f"python -m jobs.ingest {docs} --collection cluster",
                    job_runtime_env(env),
                )
                if job.status != "SUCCEEDED":
                    raise RuntimeError(f"ingest job {job.status}: {job.message}\n{job.logs[-2000:]}")
                figures["ingest_job"] = {
                    "documents": 2,
                    **{k: getattr(job, k) for k in ("submit_to_running_s", "running_s")},
                }
                echo(f"ingest job: {figures['ingest_job']}")
                bad = run_job(
                    cluster.dashboard_url,
                    f"python -m jobs.ingest {home / 'missing'} --collection cluster",
                    job_runtime_env(env),
                )
                figures["failing_job"] = {"status": bad.status, "submit_to_end_s": bad.total_s}
                echo(f"failing job: {figures['failing_job']}")
            figures.update(_scaling_and_node_loss(home, model_dir, milvus.uri, redis.url, echo))
        finally:
            redis.stop()
            milvus.stop()
    record = {
        "command": command_line("specrag cluster bench"),
        "machine": machine_description(", no GPU (Milvus Lite server, Redis, head + 1 worker on it)"),
        "nodes": {"head": {"num_cpus": 1}, "worker": {"num_cpus": 1, "resources": {ACCELERATOR: 1}}},
        "note": "seconds from the command (serve deploy / JobSubmissionClient.submit_job) to the state "
        "observed by polling the dashboard every 0.2-0.5 s; autoscale_*: from the start (up) / end "
        "(down) of 8 concurrent POST /v1/embed of unique texts to 2 / 1 RUNNING Embedder replicas "
        "(autoscaling_config shortened for the test, below); node_loss_*: from the SIGKILL of the "
        "Embedder's node, under a LoadRun (search=6,embed=3,ingest=1 at 4/s) with a replacement node "
        "joining at once, to the first successful unique-text embed (recovery) and to the Embedder "
        "RUNNING on the new node; errors: status -1 is a 20 s client timeout",
        **figures,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return record
