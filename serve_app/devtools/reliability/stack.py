"""The real local stack with its faults at hand: restartable Milvus Lite and Redis processes (from
``devtools.local_stack``), a fault-injecting LLM endpoint, and the Serve app with handles to kill
its replicas.

The reliability scenarios and the integration tests drive the same objects, so what
``docs/RELIABILITY.md`` reports is what CI checks (with shorter loads).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from serve_app.devtools.local_stack import (
    QUIET_SERVE_LOGS,
    SAMPLE_DOCS,
    MilvusProcess,
    RedisProcess,
    deploy_app,
    free_port,
    local_ray,
    serve_http,
    start_serve,
)
from serve_app.settings import Settings
from serve_app.testing.fakellm import FakeLLM

log = logging.getLogger(__name__)


@dataclass
class Stack:
    """Handles on a running stack. ``base_url`` must be loopback (the load generator checks)."""

    base_url: str
    settings: Settings
    milvus: MilvusProcess
    redis: RedisProcess
    llm: FakeLLM
    app_name: str
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def model_name(self) -> str:
        """The name ``POST /v1/embeddings`` accepts for the served model (its directory's name)."""
        return Path(self.settings.model.name_or_path).name

    def client(self, timeout_s: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self.headers, timeout=timeout_s)

    def replica_pids(self, deployment: str = "Embedder", tries: int = 24) -> set[int]:
        """The process ids of a deployment's replicas (asked through its handle until each answered)."""
        from ray import serve

        handle = serve.get_deployment_handle(deployment, app_name=self.app_name)
        pids: set[int] = set()
        expected = self.settings.serve.embedder_replicas if deployment == "Embedder" else 1
        for _ in range(tries):
            pids.update(r.result(timeout_s=30)["pid"] for r in [handle.stats.remote() for _ in range(4)])
            if len(pids) >= expected:
                break
        return pids

    def process_tree(self) -> dict[str, list[int]]:
        """Every process of the stack by group (for RSS sampling): milvus, redis, each Serve
        deployment's replicas, Serve's controller and proxy, idle Ray workers, Ray's daemons."""
        import psutil

        groups: dict[str, list[int]] = {"milvus": [], "redis": []}
        milvus = set(self.milvus.pids())
        if self.redis.pid:
            groups["redis"].append(self.redis.pid)
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmd = " ".join(proc.info.get("cmdline") or [])
            if proc.info["pid"] in milvus:
                groups["milvus"].append(proc.info["pid"])
            elif (label := _ray_group(cmd)) is not None:
                groups.setdefault(label, []).append(proc.info["pid"])
        return groups


def _ray_group(cmd: str) -> str | None:
    """``ray::ServeReplica:app:Embedder.method`` → ``ray: Embedder``; None for non-Ray processes."""
    if cmd.startswith("ray::"):
        name = cmd.split()[0][5:].split(".")[0]
        return "ray: " + name.rsplit(":", 1)[-1] if name.startswith("ServeReplica:") else f"ray: {name}"
    if "raylet" in cmd or "gcs_server" in cmd:
        return "ray: raylet + gcs"
    if "ray/_private" in cmd or "ray/dashboard" in cmd:
        return "ray: daemons"
    return None


def stack_settings(
    base: Settings, *, milvus_uri: str, redis_url: str, llm_url: str, port: int, **sections: dict[str, Any]
) -> Settings:
    """The settings the scenarios run under: short timeouts so faults show within a load run, and
    no API keys (the stack is on loopback; with keys every hostile case would be a mere 401)."""
    update: dict[str, Any] = {
        "auth": {"keys": []},
        "milvus": {"uri": milvus_uri, "collection": "reliability", "timeout_s": 5.0},
        "redis": {"url": redis_url},
        "serve": {"port": port, "embedder_replicas": 2, "embedder_num_cpus": 0.5, "log_encoding": "TEXT"},
        "expander": {"llm_url": llm_url, "timeout_s": 1.0, "breaker_reset_s": 5.0, "glossary_refresh_s": 30},
    }
    for name, values in sections.items():
        update[name] = {**update.get(name, {}), **values}
    data = base.model_dump()
    for name, values in update.items():
        data[name] = {**data[name], **values}
    return Settings.model_validate(data)


def deploy(settings: Settings, app_name: str) -> str:
    """Serve the app on loopback in the running Ray (Serve's proxy must not already run on another
    port); the caller shuts Serve down. ``local_stack`` does all of it itself."""
    url = start_serve("127.0.0.1", settings.serve.port)
    deploy_app(settings, app_name, logging_config=QUIET_SERVE_LOGS)
    return url


def ingest_samples(client: httpx.Client) -> int:
    """The bundled sample documents through ``POST /v1/documents`` (the path the load also writes)."""
    from serve_app.core.ingest import iter_documents

    docs = [
        {"doc_id": d.doc_id, "text": d.text, "format": d.fmt, "title": d.title, "kind": d.kind}
        for d in iter_documents(SAMPLE_DOCS)
    ]
    response = client.post("/v1/documents", json={"documents": docs}, timeout=600)
    response.raise_for_status()
    return len(docs)


@contextlib.contextmanager
def local_stack(home: Path, base: Settings | None = None) -> Iterator[Stack]:
    """Start everything on loopback under ``home`` (fresh data), yield the handles, stop everything."""
    if home.exists():
        shutil.rmtree(home)
    milvus, redis = MilvusProcess(home / "milvus"), RedisProcess(home / "redis")
    milvus.start()
    try:
        redis.start()
        base = base or Settings()
        with FakeLLM(mode="ok") as llm, local_ray(num_cpus=os.cpu_count() or 2, ingress=base.serve.ingress):
            settings = stack_settings(
                base,
                milvus_uri=milvus.uri,
                redis_url=redis.url,
                llm_url=llm.url,
                port=free_port(),
            )
            with serve_http("127.0.0.1", settings.serve.port) as url:
                deploy_app(settings, "reliability", logging_config=QUIET_SERVE_LOGS)
                stack = Stack(url, settings, milvus, redis, llm, "reliability")
                with stack.client() as client:
                    log.info("sample documents: %d", ingest_samples(client))
                yield stack
    finally:
        redis.stop()
        milvus.stop()
