"""serve_config*.yaml and cluster.yaml validate against Ray's own schemas and our settings tree."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from serve_app.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["serve_config.yaml", "serve_config.local.yaml"])
def test_serve_config_validates(name: str) -> None:
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load((ROOT / name).read_text())
    schema = ServeDeploySchema.parse_obj(config)
    (app,) = schema.applications
    assert app.import_path == "serve_app.app:build_app"
    settings = load_settings(app.args)  # our tree rejects unknown or invalid args by name
    names = {d["name"] for d in config["applications"][0]["deployments"]}
    assert names <= {"Ingress", "QueryExpander", "Embedder", "Searcher", "Reranker", "Indexer"}
    embedder = next(d for d in config["applications"][0]["deployments"] if d["name"] == "Embedder")
    batch = embedder.get("user_config", {}).get("max_batch_size", settings.batch.max_batch_size)
    # Room for a full model step and the next one collecting, and for the Embedder's hand-off of
    # 64 groups (Ray warns when max_batch_size x max_concurrent_batches exceeds it).
    assert embedder["max_ongoing_requests"] >= max(64, 2 * batch), "a full step and the next one"


def test_cluster_yaml_validates_against_the_launcher_schema() -> None:
    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    assert {"gpu_worker", "cpu_worker"} <= set(types)
