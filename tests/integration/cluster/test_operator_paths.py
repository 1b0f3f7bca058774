"""The operator's and the data engineer's paths on a real multi-node Ray cluster (on this machine).

A head with the dashboard and a worker carrying the ``accelerator`` resource (the stand-in for a GPU
node), started with ``ray start`` like a real one. The app goes up with the ``serve deploy`` command
of a config generated from ``serve_config.yaml``'s structure and is followed through the dashboard's
Serve API; documents go in through the Jobs API. Nothing here uses the driver's own Ray (other
modules may hold a ``ray.init``): the cluster is separate processes, probes run in drivers of their own.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve_app.core.meta import MetaStore
from serve_app.core.store import MilvusStore
from serve_app.devtools.cluster import (
    REEMBED,
    ClusterApp,
    LocalCluster,
    NodeProcess,
    accelerator_cluster,
    cluster_args,
    embedder_steps,
    follow_job,
    ingest_env,
    job_result,
    job_runtime_env,
    package_mib,
    reembed_env,
    run_job,
    stop_job,
    submit_job,
    write_docs,
)
from serve_app.devtools.local_stack import apply_local_env, free_port
from serve_app.testing.labelled import write_labelled_set
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


TOPICS = ["rate limits", "token lifetime", "inventory holds", "webhook retries", "audit logs"]
CORPUS = 30  # documents the re-embeds below work through (2 chunks each), long enough to stop one


def _tenant_doc(i: int) -> dict[str, str]:
    topic = TOPICS[i % len(TOPICS)]
    return {
        "doc_id": f"tenants/t{i}.md",
        "title": f"{topic} {i}",
        "text": f"# {topic.title()} for tenant {i}\n\nThe limit for tenant {i} is {i * 10} units per minute."
        f" Section {i} describes {topic} for service {i}.\n\n## Changes {i}\n\nOperators change"
        f" {topic} {i} through the admin API; changes apply within {i} s.",
    }


@pytest.fixture(scope="module")
def corpus(app: ClusterApp, model_dir: Path, milvus: dict) -> tuple[MilvusStore, MetaStore]:
    """CORPUS more documents in the app's collection, and the store/meta a data engineer's
    ``specrag reindex --status`` reads."""
    docs = [_tenant_doc(i) for i in range(CORPUS)]
    response = httpx.post(f"{app.base_url}/v1/documents", json={"documents": docs}, timeout=300)
    assert response.status_code == 200, response.text
    dim = json.loads((model_dir / "config.json").read_text())["hidden_size"]
    store = MilvusStore(milvus["uri"], app.args["milvus"]["collection"], dim)
    return store, MetaStore(store)


@pytest.fixture(scope="module")
def reembed_node(cluster: tuple[LocalCluster, NodeProcess]) -> NodeProcess:
    """A worker for re-embed actors only (``reindex.actor_resources``), as a GPU node pool would be."""
    return cluster[0].add_worker({REEMBED: 1})


def _mid_build(store: MilvusStore, meta: MetaStore, dashboard: str, job_id: str) -> dict:
    """The job's recorded state once it has built part of a new collection (8 chunks: a stop or a
    kill now comes mid-build); fails with the job's logs if it ends first."""
    from ray.job_submission import JobSubmissionClient

    client, live = JobSubmissionClient(dashboard), store.resolve()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        state = meta.get("reindex", store.collection) or {}
        if state.get("phase") == "building" and state.get("target") != live and state.get("done", 0) >= 8:
            return state
        if client.get_job_status(job_id).is_terminal():
            pytest.fail(f"job ended before mid-build: {state}\n{client.get_job_logs(job_id)[-12000:]}")
        time.sleep(0.1)
    client.stop_job(job_id)
    pytest.fail(f"mid-build not reached in 240 s: {state}\n{client.get_job_logs(job_id)[-3000:]}")


def _upgraded_env(store: MilvusStore, milvus: dict, model_dir: Path) -> dict[str, str]:
    """The re-embed jobs' settings: the app's alias, another model (max_length 256 is another vector
    space, recorded as such: the first job upgrades to it, the second re-embeds with it)."""
    return reembed_env(
        model_dir=model_dir, milvus_uri=milvus["uri"], collection=store.collection, model__max_length="256"
    )


def test_reembed_job_upgrades_the_model_after_a_stop_and_the_running_app_follows(
    app: ClusterApp,
    cluster: tuple[LocalCluster, NodeProcess],
    corpus: tuple[MilvusStore, MetaStore],
    reembed_node: NodeProcess,
    milvus: dict,
    model_dir: Path,
    tmp_path: Path,
) -> None:
    """``ray job submit -- python -m jobs.reembed --eval ...`` with another model (max_length 256 is
    another vector space, recorded as such), ``ray job stop`` mid-build, submitted again: it resumes,
    validates against the labelled set and switches the alias. The app, still on the old model,
    answers 503 naming both until the operator deploys the new one; then it answers from it."""
    store, meta = corpus
    alias, dashboard = store.collection, cluster[0].dashboard_url
    live = store.resolve()
    env = _upgraded_env(store, milvus, model_dir)
    # A labelled set over the corpus: a model change is validated against it.
    labelled = write_labelled_set(
        tmp_path / "labelled",
        [(f"q{i}", f"What is the limit for tenant {i}?", f"tenants/t{i}.md") for i in range(10)],
    )
    entrypoint = f"python -m jobs.reembed --eval {labelled} --batch-size 4"
    first = submit_job(dashboard, entrypoint, job_runtime_env(env))
    state = _mid_build(store, meta, dashboard, first)
    stopped = stop_job(dashboard, first)
    assert stopped.status == "STOPPED", stopped.message
    state = meta.get("reindex", alias) or {}
    assert state.get("phase") == "interrupted", state  # recorded: a re-run need not wait out a lease
    assert "stopped by signal" in " ".join(stopped.logs.split()), stopped.logs[-2000:]
    target = state["target"]
    assert store.resolve() == live, "a stopped job never touches the alias"
    assert 0 < store.count(on=target) < store.count(), "the stop came mid-build"
    assert _search(app, "quillfeather key rotation")[0] == "ops/quillfeather.md"

    started = time.perf_counter()
    resumed = follow_job(dashboard, submit_job(dashboard, entrypoint, job_runtime_env(env)))
    assert resumed.status == "SUCCEEDED", f"{resumed.message}\n{resumed.logs[-3000:]}"
    assert f"resuming unfinished job {state['job_id']} into {target}" in resumed.logs
    result = job_result(resumed)
    assert result["phase"] == "done" and result["target"] == target
    assert 0 < result["embedded"] < result["chunks"], "chunks written before the stop were kept"
    assert result["validation"]["ndcg_ratio"] >= 1.0
    assert store.resolve() == target and store.model_of(target).endswith("|256")
    FIGURES["reembed_resumed_job_s"] = resumed.total_s

    # The app embeds queries with the old model: refused, naming both, within model_check_s.
    deadline, response = time.monotonic() + 60, None
    while time.monotonic() < deadline:
        response = httpx.post(f"{app.base_url}/v1/search", json={"query": "tenant 3 limit"}, timeout=60)
        if response.status_code != 200:
            break
        time.sleep(0.5)
    assert response is not None and response.status_code == 503, response and response.text
    detail = response.text
    assert "|256" in detail and "|512" in detail and "specrag rollback" in detail, detail
    FIGURES["reembed_switch_to_refusal_s"] = round(time.perf_counter() - started - resumed.total_s, 1)

    app.args["model"]["max_length"] = 256  # the operator deploys the new model
    FIGURES["model_upgrade_redeploy"] = round(app.deploy(), 2)
    hits = _search(app, "What is the limit for tenant 7?")
    assert "tenants/t7.md" in hits[:3], hits
    assert _search(app, "quillfeather key rotation")[0] == "ops/quillfeather.md"


def test_reembed_job_survives_losing_its_actor_node(
    app: ClusterApp,
    cluster: tuple[LocalCluster, NodeProcess],
    corpus: tuple[MilvusStore, MetaStore],
    reembed_node: NodeProcess,
    milvus: dict,
    model_dir: Path,
) -> None:
    """The node of the job's embedding actor is killed mid-build and another joins: Ray Data restarts
    the actor there and retries its batches; the job validates and switches, nothing missing."""
    store, meta = corpus
    dashboard = cluster[0].dashboard_url
    live = store.resolve()
    env = _upgraded_env(store, milvus, model_dir)
    started = time.perf_counter()
    job_id = submit_job(dashboard, "python -m jobs.reembed --batch-size 4", job_runtime_env(env))
    state = _mid_build(store, meta, dashboard, job_id)
    node = next(w for w in reversed(cluster[0].workers) if REEMBED in w.resources)
    killed_at = time.perf_counter()
    assert cluster[0].kill_worker(node)
    cluster[0].add_worker({REEMBED: 1})
    joined_at = time.perf_counter()
    job = follow_job(dashboard, job_id, started=started)
    assert job.status == "SUCCEEDED", f"{job.message}\n{job.logs[-3000:]}"
    result = job_result(job)
    assert result["phase"] == "done" and result["target"] == state["target"] and result["failed"] == 0
    assert store.resolve() == state["target"]
    assert store.count() == store.count(on=live), "every chunk of the previous collection is there"
    FIGURES["reembed_node_killed_to_replacement_joined"] = round(joined_at - killed_at, 1)
    FIGURES["reembed_node_killed_to_job_done"] = round(time.perf_counter() - killed_at, 1)
    assert _search(app, "quillfeather key rotation")[0] == "ops/quillfeather.md"


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
