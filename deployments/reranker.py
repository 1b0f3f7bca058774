"""Reranker: ColBERT MaxSim with the same M3 model over the fused candidates.

ColBERT vectors are not stored (hundreds of vectors per chunk); they are recomputed for the
few candidates through the Embedder, so they share its (GPU) replicas and dynamic batches.
"""

from __future__ import annotations

import asyncio

from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.fusion import Candidate
from serve_app.retrieval import passage_text, rerank
from serve_app.settings import Settings


@serve.deployment(name="Reranker", max_ongoing_requests=64)
class Reranker:
    def __init__(self, settings: Settings, embedder: DeploymentHandle) -> None:
        self.settings = settings
        self.embedder = embedder

    async def rerank(self, query: str, candidates: list[Candidate]) -> list[Candidate]:
        if not candidates:
            return candidates
        query_out, passages_out = await asyncio.gather(
            self.embedder.embed.remote([query], "query", True),
            self.embedder.embed.remote([passage_text(c.fields) for c in candidates], "passage", True),
        )
        return rerank(query_out[0], passages_out, candidates, self.settings.search)

    def check_health(self) -> None:
        """Holds no model (the Embedder computes ColBERT vectors): alive is healthy."""
