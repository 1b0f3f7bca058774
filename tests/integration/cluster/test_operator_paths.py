"""The operator's and the data engineer's paths on a real multi-node Ray cluster (on this machine).

A head with the dashboard and a worker carrying the ``accelerator`` resource (the stand-in for a GPU
node), started with ``ray start`` like a real one. The app goes up with the ``serve deploy`` command
of a config generated from ``serve_config.yaml``'s structure and is followed through the dashboard's
Serve API; documents go in through the Jobs API. Nothing here uses the driver's own Ray (other
modules may hold a ``ray.init``): the cluster is separate processes, probes run in drivers of their own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve_app.devtools.cluster import (
    ClusterApp,
    LocalCluster,
    NodeProcess,
    accelerator_cluster,
    cluster_args,
    embedder_steps,
    ingest_env,
    job_runtime_env,
    package_mib,
    run_job,
    write_docs,
)
from serve_app.devtools.local_stack import apply_local_env, free_port
from tests.integration.cluster.support import check_stopped_and_report

pytestmark = pytest.mark.integration

FIGURES: dict[str, Any] = {}
# Texts of one probe request: without a cap they share model steps, with max_batch_size 1 they cannot.
PROBE_TEXTS = 16


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, request) -> Iterator[tuple[LocalCluster, NodeProcess]]:
    apply_local_env()  # the dashboard clients of this process: no token auth, like the cluster
    with accelerator_cluster(tmp_path_factory.mktemp("cluster")) as (cluster, worker):
        yield cluster, worker
        processes = cluster.processes()
    check_stopped_and_report(processes, request, FIGURES, "cluster figures (s)")


@pytest.fixture(scope="module")
def app(
    cluster: tuple[LocalCluster, NodeProcess],
    milvus: dict,
    redis_url: str,
    model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> ClusterApp:
    """The app deployed with ``serve deploy`` and two documents written over HTTP."""
    port = free_port()
    args = cluster_args(model_dir=model_dir, milvus_uri=milvus["uri"], redis_url=redis_url, http_port=port)
    app = ClusterApp(cluster[0], args, port, tmp_path_factory.mktemp("config") / "serve_config.cluster.yaml")
    FIGURES["deploy_to_running"] = round(app.deploy(), 2)
    docs = [
        {
            "doc_id": "ops/quillfeather.md",
            "title": "Quillfeather rotation",
            "text": "# Quillfeather rotation\n\nThe quillfeather key rotation runs monthly on the head node.",
        },
        {
            "doc_id": "ops/backup.md",
            "title": "Backups",
            "text": "# Backups\n\nMilvus snapshots are taken nightly and kept for two weeks.",
        },
    ]
    response = httpx.post(f"{app.base_url}/v1/documents", json={"documents": docs}, timeout=300)
    assert response.status_code == 200, response.text
    return app


def _search(app: ClusterApp, query: str) -> list[str]:
    response = httpx.post(f"{app.base_url}/v1/search", json={"query": query, "top_k": 5}, timeout=120)
    assert response.status_code == 200, response.text
    return [r["doc_id"] for r in response.json()["results"]]


def test_serve_deploy_runs_the_app_with_the_embedder_on_the_accelerator_node(
    app: ClusterApp, cluster: tuple[LocalCluster, NodeProcess]
) -> None:
    head, worker = cluster[0].head, cluster[1]
    assert head is not None and worker.node_id and worker.node_id != head.node_id
    status = app.status()  # `serve status --address <dashboard>`, as printed
    assert status["applications"]["specrag"]["status"] == "RUNNING"
    deployments = status["applications"]["specrag"]["deployments"]
    assert set(deployments) == {"Ingress", "QueryExpander", "Embedder", "Searcher", "Reranker", "Indexer"}
    assert {d["status"] for d in deployments.values()} == {"HEALTHY"}
    embedders = app.replica_set("Embedder")
    assert len(embedders) == 1
    assert {r["node_id"] for r in embedders} == {worker.node_id}, "the Embedder must land on the accelerator"
    assert _search(app, "quillfeather key rotation")[0] == "ops/quillfeather.md"


def test_user_config_change_applies_without_restarting_the_embedder(
    app: ClusterApp, cluster: tuple[LocalCluster, NodeProcess]
) -> None:
    before = {r["replica_id"]: r["pid"] for r in app.replica_set("Embedder")}
    merged = embedder_steps(cluster[0], app.app_name, PROBE_TEXTS)
    assert sum(merged.values()) < PROBE_TEXTS, f"texts should share steps under max_batch_size 32: {merged}"

    app.embedder_user_config = {"max_batch_size": 1}
    FIGURES["user_config_apply"] = round(app.deploy(), 2)

    assert {r["replica_id"]: r["pid"] for r in app.replica_set("Embedder")} == before, "a replica restarted"
    assert embedder_steps(cluster[0], app.app_name, PROBE_TEXTS) == {1: PROBE_TEXTS}


def test_replica_count_change_reaches_the_count(app: ClusterApp) -> None:
    embedders = {r["replica_id"] for r in app.replica_set("Embedder")}
    assert len(app.replica_set("Reranker")) == 1
    app.replicas = {"Reranker": 2}
    FIGURES["reranker_1_to_2"] = round(app.deploy(), 2)
    assert len(app.replica_set("Reranker")) == 2
    assert {r["replica_id"] for r in app.replica_set("Embedder")} == embedders
    assert _search(app, "quillfeather key rotation")[0] == "ops/quillfeather.md"


def test_ingest_job_succeeds_and_its_documents_are_searchable(
    app: ClusterApp,
    cluster: tuple[LocalCluster, NodeProcess],
    milvus: dict,
    redis_url: str,
    model_dir: Path,
    tmp_path: Path,
) -> None:
    """``ray job submit --working-dir . -- python -m jobs.ingest ...`` through the Jobs API."""
    FIGURES["job_package_mib"] = package_mib()
    assert FIGURES["job_package_mib"] < 10, "the working_dir upload should carry the code only"
    docs = write_docs(tmp_path / "runbooks", "zephyrcordon")
    env = ingest_env(model_dir=model_dir, milvus_uri=milvus["uri"], redis_url=redis_url)
    job = run_job(
        cluster[0].dashboard_url, f"python -m jobs.ingest {docs} --collection cluster", job_runtime_env(env)
    )
    assert job.status == "SUCCEEDED", f"{job.message}\n{job.logs[-3000:]}"
    FIGURES["ingest_job_submit_to_running"] = job.submit_to_running_s
    FIGURES["ingest_job_running"] = job.running_s
    reports = [json.loads(line) for line in job.logs.splitlines() if line.startswith('{"run_id"')]
    assert reports, job.logs[-3000:]
    assert reports[-1]["added"] == 2 and reports[-1]["failed_documents"] == 0
    assert {"cluster-runbook.en.md", "cluster-runbook.ja.md"} & {
        Path(d).name for d in _search(app, "zephyrcordon procedure")[:2]
    }


def test_failing_job_ends_failed_with_the_reason(
    cluster: tuple[LocalCluster, NodeProcess], milvus: dict, model_dir: Path
) -> None:
    env = ingest_env(model_dir=model_dir, milvus_uri=milvus["uri"], redis_url=None)
    job = run_job(
        cluster[0].dashboard_url,
        "python -m jobs.ingest /nonexistent-specrag-folder --collection cluster",
        job_runtime_env(env),
    )
    FIGURES["failing_job_submit_to_end"] = job.total_s
    assert job.status == "FAILED"
    assert "exit code 2" in job.message, job.message
    assert "does not exist" in " ".join(job.logs.split()), job.logs[-2000:]


def test_losing_a_worker_node_kills_its_processes(cluster: tuple[LocalCluster, NodeProcess]) -> None:
    """``kill_worker`` (for node-loss scenarios): the node's process group dies, the GCS marks it DEAD."""
    import time

    from ray.util.state import list_nodes

    spare = cluster[0].add_worker({})
    assert spare.node_id
    killed = cluster[0].kill_worker(spare)
    assert spare.pid in killed and len(killed) >= 3  # ray start, raylet, agents
    started, state = time.monotonic(), "ALIVE"
    while state != "DEAD" and time.monotonic() < started + 90:
        time.sleep(1)
        state = next(
            n.state for n in list_nodes(address=cluster[0].dashboard_url) if n.node_id == spare.node_id
        )
    assert state == "DEAD", "the killed node never became DEAD"
    FIGURES["killed_node_dead_after"] = round(time.monotonic() - started, 1)
