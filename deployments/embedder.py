"""Embedder: BGE-M3 behind ``@serve.batch``; the engine does the work, this shell batches."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from ray import serve

from serve_app.embedding import EmbeddingService, EmbedItem
from serve_app.settings import Settings


@serve.deployment(name="Embedder", max_ongoing_requests=64, health_check_period_s=10)
class Embedder:
    def __init__(self, settings: Settings) -> None:
        # Ray sets OMP_NUM_THREADS to the actor's num_cpus (often 1): size torch explicitly.
        threads = settings.model.num_threads or os.cpu_count() or 1
        settings = settings.model_copy(
            update={"model": settings.model.model_copy(update={"num_threads": threads})}
        )
        self.service = EmbeddingService.from_settings(settings)
        self._embed_one.set_max_batch_size(settings.batch.max_batch_size)
        self._embed_one.set_batch_wait_timeout_s(settings.batch.batch_wait_timeout_s)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Batch knobs at run time through ``user_config`` (no replica restart)."""
        if "max_batch_size" in user_config:
            self._embed_one.set_max_batch_size(int(user_config["max_batch_size"]))
        if "batch_wait_timeout_s" in user_config:
            self._embed_one.set_batch_wait_timeout_s(float(user_config["batch_wait_timeout_s"]))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def _embed_one(self, items: list[EmbedItem]) -> list[dict[str, Any]]:
        # The forward pass runs off the event loop so the replica keeps accepting requests.
        return await asyncio.to_thread(self.service.embed_items, items)

    async def embed(
        self, texts: list[str], input_type: str = "passage", colbert: bool = False
    ) -> list[dict[str, Any]]:
        """Each text joins the replica's dynamic batch on its own, so concurrent requests share passes."""
        return list(
            await asyncio.gather(*(self._embed_one(EmbedItem(t, input_type, colbert)) for t in texts))
        )

    def info(self) -> dict[str, Any]:
        return {"model": self.service.model_id, "dim": self.service.dim}

    def check_health(self) -> None:
        out = self.service.encoder.encode(["health"], input_type="query", sparse=False)
        if out.dense is None or out.dense.shape != (1, self.service.dim):
            raise RuntimeError("embedder produced no vector of the expected dimension")
