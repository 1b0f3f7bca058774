"""The Serve application builder that ``serve_config.yaml`` and ``specrag up`` name.

``import_path: serve_app.app:build_app`` — Serve calls it with the config's ``args``, which
are validated by the same settings tree as the environment (a typo fails here, by name).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ray.serve import Application

from serve_app.settings import Settings, load_settings

log = logging.getLogger("specrag")


def model_dim(settings: Settings) -> int:
    """The dense dimension, read from the model's config without loading it (the store needs it)."""
    config = Path(settings.model.name_or_path) / "config.json"
    if config.is_file():
        return int(json.loads(config.read_text())["hidden_size"])
    log.warning(
        "model config not readable at %s from this node; assuming dim 1024 (BGE-M3). "
        "Make the model directory available where the app is built if it differs.",
        config,
    )
    return 1024


def build_app(args: dict[str, Any] | None = None) -> Application:
    from deployments.embedder import Embedder
    from deployments.expander import QueryExpander
    from deployments.indexer import Indexer
    from deployments.ingress import Ingress
    from deployments.reranker import Reranker
    from deployments.searcher import Searcher

    settings = args if isinstance(args, Settings) else load_settings(args or {})
    log.info("specrag settings: %s", json.dumps(settings.redacted(), ensure_ascii=False))
    sv = settings.serve
    embedder = Embedder.options(
        num_replicas=sv.embedder_replicas,
        ray_actor_options={"num_cpus": sv.embedder_num_cpus, "num_gpus": sv.embedder_num_gpus},
        # Room for a full model step and the next one collecting; never below the Embedder's
        # hand-off of 64 groups (Ray warns when groups x in flight exceed it).
        max_ongoing_requests=max(64, 2 * settings.batch.max_batch_size),
    ).bind(settings)
    expander = QueryExpander.options(ray_actor_options={"num_cpus": 0}).bind(settings, model_dim(settings))
    searcher = Searcher.options(ray_actor_options={"num_cpus": 0}).bind(
        settings, model_dim(settings), embedder
    )
    reranker = Reranker.options(num_replicas=sv.reranker_replicas, ray_actor_options={"num_cpus": 0}).bind(
        settings, embedder
    )
    # One replica: it serialises writes so two updates of one document cannot collide.
    indexer = Indexer.options(num_replicas=1, ray_actor_options={"num_cpus": 0}).bind(
        settings, embedder, model_dim(settings)
    )
    return Ingress.options(num_replicas=sv.ingress_replicas, ray_actor_options={"num_cpus": 0}).bind(
        settings, expander, embedder, searcher, reranker, indexer
    )
