"""The rerank engine: ColBERT MaxSim (+ dense, sparse) with the same M3 model over the fused
candidates, plus an optional cross-encoder (FlagReranker, e.g. ``BAAI/bge-reranker-v2-m3``).

ColBERT vectors are not stored (hundreds of vectors per chunk); they come from the ``Embedder``
port, so in the Serve graph they share the Embedder's (GPU) replicas, dynamic batches and
ColBERT cache, and in an evaluation the in-process service.
"""

from __future__ import annotations

import asyncio
from typing import Any

from serve_app.core.fusion import Candidate
from serve_app.core.pipeline import Embedder
from serve_app.core.retrieval import passage_text, rerank
from serve_app.settings import SearchSettings


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


class ColbertReranker:
    """The ``Reranker`` port: one ColBERT pass for the query and one for the candidates' passages."""

    def __init__(self, embedder: Embedder, settings: SearchSettings, cross_encoder: Any = None) -> None:
        self.embedder = embedder
        self.settings = settings
        self.cross = cross_encoder

    async def rerank(self, query: str, candidates: list[Candidate]) -> list[Candidate]:
        if not candidates:
            return candidates
        texts = [passage_text(c.fields) for c in candidates]
        calls: list[Any] = [
            self.embedder.embed([query], "query", True),
            self.embedder.embed(texts, "passage", True),
        ]
        if self.cross is not None:
            calls.append(asyncio.to_thread(cross_encoder_scores, self.cross, query, texts))
        out = await asyncio.gather(*calls)
        return rerank(out[0][0], out[1], candidates, self.settings, out[2] if self.cross else None)
