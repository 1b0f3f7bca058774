"""Reranker: a thin Serve shell around ``ColbertReranker`` (ColBERT MaxSim + optional cross-encoder).

Its ColBERT vectors come through the Embedder's handle, so they share its replicas and batches;
the rows it received are remembered here (``serve.reranker_cache_mb``), so a chunk reranked
before costs no hop and no transfer of its rows (a rerank pool of 50 chunks is megabytes of them).
"""

from __future__ import annotations

from collections.abc import Sequence

from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.core.contracts import EmbedOutput, TextScore, Truncate
from serve_app.core.fusion import Candidate
from serve_app.core.rerank import ColbertReranker, load_cross_encoder
from serve_app.serving.adapters import CachingEmbedder, HandleEmbedder
from serve_app.settings import Settings


@serve.deployment(name="Reranker", max_ongoing_requests=64)
class Reranker:
    def __init__(self, settings: Settings, embedder: DeploymentHandle) -> None:
        s = settings.search
        cross = load_cross_encoder(s.cross_encoder, s.cross_encoder_device) if s.cross_encoder else None
        mb = settings.serve.reranker_cache_mb
        port = HandleEmbedder(embedder)
        self.engine = ColbertReranker(CachingEmbedder(port, mb * 2**20) if mb else port, s, cross)

    async def rerank(
        self, query: str, candidates: list[Candidate], queries: Sequence[EmbedOutput]
    ) -> list[Candidate]:
        return await self.engine.rerank(query, candidates, queries)

    async def score_texts(self, query: str, texts: list[str], truncate: Truncate = "end") -> list[TextScore]:
        """Arbitrary texts scored against a query (``/v1/rerank``, TEI's ``/rerank``)."""
        return await self.engine.score_texts(query, texts, truncate)

    def check_health(self) -> None:
        """Holds no state that can go bad (the Embedder computes ColBERT vectors): alive is healthy."""
