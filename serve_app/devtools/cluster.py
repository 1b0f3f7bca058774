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
leave the cluster running. Here every node shares a private ``--temp-dir`` (where ``ray start``
records its address instead), random worker ports, and its own dashboard-agent port (the default
52365 would collide between nodes); stopping a node is SIGTERM to its ``ray start`` (it stops its
processes), losing one is SIGKILL to all its processes at once (:meth:`LocalCluster.kill_worker`).

The dashboard, Serve's proxy and Milvus Lite listen on 127.0.0.1; Ray's own GCS and raylets listen
where ``ray start`` puts them, on the host's address (it resolves 127.0.0.1 to it), as on a real node.

Test figures and ``specrag cluster bench`` come from the same steps: :class:`ClusterApp` (deploy,
redeploy, wait for RUNNING), :func:`run_job` (submit, follow, logs) and :func:`embedder_steps`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from serve_app.devtools.local_stack import LOCAL_RAY_ENV, free_port

#: The custom resource of the worker node that stands in for a GPU node.
ACCELERATOR = "accelerator"
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


def _tail(path: Path, limit: int = 3000) -> str:
    try:
        return path.read_bytes()[-limit:].decode("utf-8", errors="replace")
    except OSError:
        return ""


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
            f"--temp-dir={self.temp_dir}",
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
        name = f"worker-{len(self.workers) + 1}"
        while any(w.name == name for w in self.workers):
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
                    f"ray start ({node.name}) exited with {proc.returncode}:\n{_tail(Path(node.log))}"
                )
            with contextlib.suppress(Exception):
                if httpx.get(f"{self.dashboard_url}/api/version", timeout=2).status_code == 200:
                    for row in list_nodes(address=self.dashboard_url, timeout=5):
                        if _field(row, "node_name") == node.name and _field(row, "state") == "ALIVE":
                            node.node_id = _field(row, "node_id")
                            return
            time.sleep(0.5)
        raise TimeoutError(f"node {node.name} not ALIVE in {timeout_s:.0f} s:\n{_tail(Path(node.log))}")

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
        done = subprocess.run(
            [sys.executable, "-c", prelude + code, self.gcs_address, *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=cluster_env(),
        )
        if done.returncode != 0:
            raise RuntimeError(f"driver failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


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
            raise RuntimeError(f"milvus-lite server did not start on port {port}:\n{_tail(log)}")
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
    source: Path = PRODUCTION_CONFIG,
) -> dict[str, Any]:
    """``serve_config.yaml`` made fit for one machine: the same application, runtime_env, logging
    and Embedder ``user_config``, with ``args`` given, one replica per deployment unless
    ``replicas`` says otherwise, and the Embedder placed by :data:`ACCELERATOR` instead of
    ``num_gpus``. The proxy runs on the head only (every node's would bind the same port here)."""
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
            out["ray_actor_options"] = {"num_cpus": 0.5, "resources": {ACCELERATOR: 1}}
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


def serve_cli(dashboard_url: str, *args: str, timeout_s: float = 120.0) -> str:
    """``serve <args> --address <dashboard>``, the command an operator types; its stdout."""
    done = subprocess.run(
        [ray_command("serve"), *args, "--address", dashboard_url],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=cluster_env(),
    )
    if done.returncode != 0:
        raise RuntimeError(f"serve {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


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

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def config(self) -> dict[str, Any]:
        return cluster_serve_config(
            self.args,
            http_port=self.http_port,
            replicas=self.replicas,
            embedder_user_config=self.embedder_user_config,
        )

    def write(self) -> Path:
        return write_serve_config(self.config_path, self.config())

    def deploy(self, timeout_s: float = 300.0) -> float:
        """Write the config, ``serve deploy`` it, wait until it is settled; seconds it took."""
        self.write()
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


def run_job(
    dashboard_url: str, entrypoint: str, runtime_env: dict[str, Any], timeout_s: float = 300.0
) -> JobRun:
    """Submit through the Jobs API, follow its status to the end; submit-to-RUNNING and RUNNING
    times as the client sees them (the upload of the working_dir is in the first)."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(dashboard_url)
    started = time.perf_counter()
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
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


def ingest_env(*, model_dir: Path | str, milvus_uri: str, redis_url: str | None) -> dict[str, str]:
    """A job's settings: the flat SPECRAG_* aliases an operator exports (docs/operations.md)."""
    env = {"SPECRAG_MODEL_PATH": str(model_dir), "SPECRAG_MILVUS_URI": milvus_uri}
    if redis_url:
        env["SPECRAG_REDIS_URL"] = redis_url
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


def run_cluster_bench(out: Path, model_dir: Path, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Start Milvus Lite, Redis and the cluster, then time: the first deploy to RUNNING, a
    ``user_config`` change, a replica-count change, an ingest job and a failing job."""
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
        finally:
            redis.stop()
            milvus.stop()
    record = {
        "command": command_line("specrag cluster bench"),
        "machine": machine_description(", no GPU (Milvus Lite server, Redis, head + 1 worker on it)"),
        "nodes": {"head": {"num_cpus": 1}, "worker": {"num_cpus": 1, "resources": {ACCELERATOR: 1}}},
        "note": "seconds from the command (serve deploy / JobSubmissionClient.submit_job) to the state "
        "observed by polling the dashboard every 0.2-0.5 s",
        **figures,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return record
