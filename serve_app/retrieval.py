"""Retrieval logic shared by the Searcher / Reranker deployments and the evaluation command."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from serve_app.encoder import colbert_maxsim, lexical_score
from serve_app.fusion import Candidate, RankedList, rrf_fuse
from serve_app.settings import SearchSettings
from serve_app.store import MilvusStore, build_filter


class Retriever:
    """Fan-out over every query variant x channel, concurrently, then weighted RRF."""

    def __init__(self, store: MilvusStore, settings: SearchSettings) -> None:
        self.store = store
        self.settings = settings

    async def search(
        self,
        vectors: Sequence[dict[str, Any]],
        *,
        top_k: int,
        channels: Sequence[str] = ("dense", "sparse"),
        filters: dict[str, Any] | None = None,
        limit: int | None = None,
    ) -> tuple[list[Candidate], dict[str, float]]:
        s = self.settings
        fetch = max(top_k * s.overfetch, limit or 0)
        expr = build_filter(current_only=True, **(filters or {}))
        jobs, meta = [], []
        for v, vec in enumerate(vectors):
            if "dense" in channels:
                # pymilvus blocks: threads let the searches overlap on the server.
                jobs.append(asyncio.to_thread(self.store.search_dense, vec["dense"], limit=fetch, expr=expr))
                meta.append((v, "dense", s.dense_weight))
            if "sparse" in channels and vec["sparse"]:
                jobs.append(
                    asyncio.to_thread(self.store.search_sparse, vec["sparse"], limit=fetch, expr=expr)
                )
                meta.append((v, "sparse", s.sparse_weight))
        started = time.perf_counter()
        results = await asyncio.gather(*jobs)
        searched = time.perf_counter()
        lists = [RankedList(v, ch, w, hits) for (v, ch, w), hits in zip(meta, results, strict=True)]
        if len(lists) == 1:  # one list: its own order, whatever its weight
            lists[0].weight = 1.0
        fused = rrf_fuse(lists, k=s.rrf_k, limit=limit or top_k)
        timings = {"search": (searched - started) * 1000, "fuse": (time.perf_counter() - searched) * 1000}
        return fused, timings


def rerank(
    query: dict[str, Any],
    passages: Sequence[dict[str, Any]],
    candidates: list[Candidate],
    settings: SearchSettings,
) -> list[Candidate]:
    """Weighted mean of ColBERT MaxSim, dense and sparse, as BGE-M3's ``compute_score`` combines them.

    ``query`` / ``passages`` are Embedder outputs (dense, sparse, colbert) from one pass each, so
    every candidate gets all three scores, also one that only the sparse channel found.
    """
    s = settings
    total = max(s.colbert_weight + s.rerank_dense_weight + s.rerank_sparse_weight, 1e-9)
    for cand, p in zip(candidates, passages, strict=True):
        scores = {
            "colbert": colbert_maxsim(query["colbert"], p["colbert"]),
            "m3_dense": float(query["dense"] @ p["dense"]),
            "m3_sparse": lexical_score(query["sparse"], p["sparse"]),
        }
        scores["rerank"] = (
            s.colbert_weight * scores["colbert"]
            + s.rerank_dense_weight * scores["m3_dense"]
            + s.rerank_sparse_weight * scores["m3_sparse"]
        ) / total
        cand.channel_scores.update(scores)
    return sorted(candidates, key=lambda c: (-c.channel_scores["rerank"], c.chunk_id))


def passage_text(fields: dict[str, Any]) -> str:
    """What is embedded for a chunk: the heading trail gives it context (ingest and rerank agree)."""
    trail = " / ".join(p for p in fields.get("title_path") or [] if p)
    return f"{trail}\n{fields['text']}" if trail else fields["text"]
