"""The generated Serve config for the local cluster, and what counts as an unexplained failure: the
parts of ``devtools.cluster`` that need no Ray, checked without starting a cluster."""

from __future__ import annotations

from serve_app.devtools.cluster import (
    ACCELERATOR,
    HALF_ACCELERATOR,
    TEST_AUTOSCALING,
    cluster_serve_config,
    unexplained_failures,
)
from serve_app.devtools.reliability.load import TIMEOUT, TRANSPORT, Sample


def _embedder(config: dict) -> dict:
    return next(d for d in config["applications"][0]["deployments"] if d["name"] == "Embedder")


def test_the_embedder_gets_a_whole_accelerator_and_one_replica_by_default() -> None:
    embedder = _embedder(cluster_serve_config({}, http_port=8000))
    assert embedder["num_replicas"] == 1 and "autoscaling_config" not in embedder
    assert embedder["ray_actor_options"] == {"num_cpus": 0.5, "resources": {ACCELERATOR: 1}}


def test_autoscaling_replaces_the_fixed_count_and_passes_serves_schema() -> None:
    from ray.serve.schema import ServeDeploySchema

    config = cluster_serve_config(
        {}, http_port=8000, embedder_autoscaling=TEST_AUTOSCALING, embedder_actor_options=HALF_ACCELERATOR
    )
    embedder = _embedder(config)
    assert "num_replicas" not in embedder
    assert embedder["autoscaling_config"] == TEST_AUTOSCALING
    assert embedder["ray_actor_options"]["resources"] == {ACCELERATOR: 0.5}
    ServeDeploySchema.model_validate(config)  # what `serve deploy` checks


def test_only_reasoned_503s_and_timeouts_in_flight_during_the_outage_are_explained() -> None:
    samples = [
        Sample("embed", 1.0, 0.1, 200),
        Sample("embed", 2.0, 0.1, 503, '{"error": "embedder unavailable"}'),
        Sample("embed", 3.0, 0.1, 503, "upstream gone"),  # no reason given
        Sample("embed", 4.0, 20.0, TIMEOUT),  # in the outage
        Sample("embed", 9.0, 20.0, TIMEOUT),  # after it
        Sample("embed", 1.5, 20.0, TIMEOUT),  # sent before it, still waiting when the node died
        Sample("embed", 1.0, 2.0, TIMEOUT),  # over before it
        Sample("embed", 5.0, 0.1, TRANSPORT),  # in the outage
        Sample("embed", 5.0, 0.1, 500, '{"error": "internal"}'),
    ]
    bad = unexplained_failures(samples, outage=(3.5, 6.0))
    assert [(s.due_s, s.status) for s in bad] == [(3.0, 503), (9.0, TIMEOUT), (1.0, TIMEOUT), (5.0, 500)]
    assert len(unexplained_failures(samples)) == 7  # without an outage no timeout is explained
