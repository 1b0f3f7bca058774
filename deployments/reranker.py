"""Reranker: ColBERT MaxSim with the same M3 model over the fused candidates, plus an optional
cross-encoder (FlagReranker, e.g. ``BAAI/bge-reranker-v2-m3``) when ``search.cross_encoder`` is set.

ColBERT vectors are not stored (hundreds of vectors per chunk); they are recomputed for the
few candidates through the Embedder, so they share its (GPU) replicas and dynamic batches.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.core.fusion import Candidate
from serve_app.core.retrieval import passage_text, rerank
from serve_app.serving.handles import call_idempotent
from serve_app.settings import Settings

log = logging.getLogger("ray.serve.specrag.reranker")


def load_cross_encoder(name_or_path: str, device: str = "auto") -> Any:
    """FlagEmbedding's ``FlagReranker`` on one device (fp16 on GPU); local paths make no network call."""
    import torch
    from FlagEmbedding import FlagReranker

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return FlagReranker(name_or_path, use_fp16=device.startswith("cuda"), devices=device)


def cross_encoder_scores(model: Any, query: str, passages: list[str]) -> list[float]:
    """Relevance in [0, 1] (sigmoid of the logit), one per passage."""
    scores = model.compute_score([[query, p] for p in passages], normalize=True)
    return [float(x) for x in (scores if isinstance(scores, list) else [scores])]


@serve.deployment(name="Reranker", max_ongoing_requests=64)
class Reranker:
    def __init__(self, settings: Settings, embedder: DeploymentHandle) -> None:
        self.settings = settings
        self.embedder = embedder
        path = settings.search.cross_encoder
        self.cross = load_cross_encoder(path, settings.search.cross_encoder_device) if path else None

    async def rerank(self, query: str, candidates: list[Candidate]) -> list[Candidate]:
        if not candidates:
            return candidates
        texts = [passage_text(c.fields) for c in candidates]
        calls = [
            call_idempotent(self.embedder.embed, [query], "query", True),
            call_idempotent(self.embedder.embed, texts, "passage", True),
        ]
        if self.cross is not None:
            calls.append(asyncio.to_thread(cross_encoder_scores, self.cross, query, texts))
        out = await asyncio.gather(*calls)
        return rerank(out[0][0], out[1], candidates, self.settings.search, out[2] if self.cross else None)

    def check_health(self) -> None:
        """Holds no state that can go bad (the Embedder computes ColBERT vectors): alive is healthy."""
