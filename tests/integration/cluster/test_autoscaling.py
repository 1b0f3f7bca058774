"""The Embedder scaling with its load, and losing its node under load, on a real multi-node cluster.

A head with the dashboard, and an ``accelerator`` worker (the stand-in for a GPU node) that joins
only once every other deployment is placed on the head: so the Embedder is the only thing on it, as
on a GPU node, and killing that node takes the Embedder alone. Replica counts are read where an
operator reads them, the dashboard's Serve API; load comes over HTTP. Own module-scoped cluster
(not shared with ``test_operator_paths``): that module's topology has replicas spread over both nodes.

Figures are printed at the end of the module (``pytest -s``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve_app.devtools.cluster import (
    HALF_ACCELERATOR,
    NOT_EMBEDDER,
    TEST_AUTOSCALING,
    ClusterApp,
    LocalCluster,
    app_settled,
    cluster_args,
    deploy_embedder_alone,
    lose_embedder_node_under_load,
    observe_autoscaling,
    replica_nodes,
    unexplained_failures,
    wait_serve,
)
from serve_app.devtools.local_stack import apply_local_env, free_port
from tests.integration.cluster.support import check_stopped_and_report

pytestmark = pytest.mark.integration

FIGURES: dict[str, Any] = {}
# Why the Embedder's autoscaling delays are shortened here (TEST_AUTOSCALING, in devtools.cluster):
# serve_config.yaml keeps the production values (target 32 ongoing requests, Serve's default delays
# of 30 s up / 600 s down, metrics pushed every 10 s), right for a GPU replica but minutes per
# transition. The test shortens them so both transitions fit in seconds on two CPUs: a target of 2
# ongoing requests that a few concurrent requests exceed, metrics pushed every 0.5 s and averaged
# over 2 s, decisions after 2 s (up) and 5 s (down). Same mechanism, other time constants.
CONCURRENCY = 8  # closed loop: ~8 ongoing requests against a target of 2 per replica


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, request) -> Iterator[LocalCluster]:
    apply_local_env()  # the dashboard clients of this process: no token auth, like the cluster
    cluster = LocalCluster(tmp_path_factory.mktemp("autoscale")).start()
    try:
        yield cluster
        processes = cluster.processes()
    finally:
        cluster.stop()
    check_stopped_and_report(processes, request, FIGURES, "autoscaling / node loss figures")


@pytest.fixture(scope="module")
def app(
    cluster: LocalCluster,
    milvus: dict,
    redis_url: str,
    model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> ClusterApp:
    """Deployed before the accelerator node joins, so the Embedder has that node to itself."""
    port = free_port()
    args = cluster_args(model_dir=model_dir, milvus_uri=milvus["uri"], redis_url=redis_url, http_port=port)
    args["milvus"]["collection"] = "autoscale"
    app = ClusterApp(
        cluster,
        args,
        port,
        tmp_path_factory.mktemp("config") / "serve_config.autoscale.yaml",
        embedder_autoscaling=TEST_AUTOSCALING,
        embedder_actor_options=HALF_ACCELERATOR,
    )
    _worker, took = deploy_embedder_alone(app)
    FIGURES["deploy_to_running_s"] = round(took, 2)
    return app


def _embedder_alone_on_the_worker(app: ClusterApp, cluster: LocalCluster) -> dict[str, set[str]]:
    assert cluster.head is not None and len(cluster.workers) == 1
    placement = replica_nodes(cluster.dashboard_url, app.app_name)
    assert placement["Embedder"] == {cluster.workers[0].node_id}, placement
    for name in NOT_EMBEDDER:
        assert placement[name] == {cluster.head.node_id}, f"{name} is not on the head: {placement}"
    return placement


def test_embedder_scales_up_under_load_and_back_down_after_it(app: ClusterApp, cluster: LocalCluster) -> None:
    _embedder_alone_on_the_worker(app, cluster)
    run = observe_autoscaling(app, concurrency=CONCURRENCY)

    worker = cluster.workers[0].node_id
    assert run.up.nodes == (worker, worker), "both Embedder replicas belong on the accelerator node"
    assert max(r.running for r in run.readings) == 2, "max_replicas is 2"
    assert run.load_start_s < run.up.t_s < run.load_end_s < run.down.t_s
    assert len(run.samples) > 3 * CONCURRENCY, "the load should run before and after the scale-up"
    assert [s for s in run.samples if s.due_s >= run.up.t_s and s.ok], "no request served on two replicas"
    # Requests keep succeeding: a failure may only be a 503 that names its reason.
    bad = unexplained_failures(run.samples)
    assert not bad, [(s.status, s.reason) for s in bad]
    FIGURES.update(run.figures())
    # One replica serves alone again.
    response = httpx.post(f"{app.base_url}/v1/embed", json={"input": ["after the scale-down"]}, timeout=60)
    assert response.status_code == 200, response.text


def test_losing_the_embedders_node_under_load_recovers_without_losing_writes(
    app: ClusterApp, cluster: LocalCluster
) -> None:
    """A ``LoadRun`` with writes; the Embedder's node is killed mid-load, a new accelerator node joins."""
    wait_serve(cluster.dashboard_url, lambda d: app_settled(d, app.app_name, {"Embedder": 1}), 60)
    _embedder_alone_on_the_worker(app, cluster)
    before = {name: {r["replica_id"] for r in app.replica_set(name)} for name in NOT_EMBEDDER}
    node = cluster.workers[0]

    # 2 requests/s besides the 2 probes/s: three Ray nodes, Milvus and Redis share two cores, and
    # at the default 4/s a slow hour's backlog kept the last requests waiting past the client's
    # 20 s (one sent at 37 s timed out 35 s later: the load generator itself was starved).
    run = lose_embedder_node_under_load(app, node, rate=2.0)

    assert run.replacement != node.node_id, "the replacement must be a new node"
    assert cluster.workers and cluster.workers[0].node_id == run.replacement
    assert run.marks["kill"] < run.back.t_s, "the Embedder came back on the new node after the kill"
    bad = run.unexplained()
    assert not bad, [(s.op, round(s.due_s, 1), s.status, s.reason) for s in bad]
    assert run.recovered_s() is not None, "no embed succeeded after the node was lost"
    verify = run.result.verify
    assert verify is not None and verify["acknowledged_writes"] > 0
    assert verify["lost"] == [], verify["lost"][:5]
    # Only the Embedder was on that node: nothing else restarted.
    assert {name: {r["replica_id"] for r in app.replica_set(name)} for name in NOT_EMBEDDER} == before
    FIGURES.update(run.figures())
