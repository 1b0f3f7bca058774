"""Retrieval logic shared by the Searcher / Reranker deployments and the evaluation command."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from serve_app.encoder import colbert_maxsim, lexical_score
from serve_app.fusion import Candidate, RankedList, rrf_fuse
from serve_app.settings import SearchSettings
from serve_app.store import MAX_WINDOW, SCALAR_FIELDS, Hit, MilvusStore, build_filter, quote


class Retriever:
    """Fan-out over every query variant x channel, concurrently, then weighted RRF.

    Stage 2 keeps only each document's newest stored version. An update inserts the complete
    new version before deleting the old one, so for a moment both are stored: this check makes
    the switch exact for readers. If the ANN ran just before the new version landed and the
    check just after, the document's stale hits in that channel are replaced by its current
    version's best chunk, so the document is neither doubled, missing nor stale.
    """

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
        channel_ms: dict[str, float] = {}

        async def timed(channel: str, fn: Any, query: Any) -> list[Hit]:
            # pymilvus blocks: threads let the searches overlap on the server.
            t0 = time.perf_counter()
            hits = await asyncio.to_thread(fn, query, limit=fetch, expr=expr)
            ms = (time.perf_counter() - t0) * 1000
            channel_ms[channel] = max(channel_ms.get(channel, 0.0), ms)
            return hits

        for v, vec in enumerate(vectors):
            if "dense" in channels:
                jobs.append(timed("dense", self.store.search_dense, vec["dense"]))
                meta.append((v, "dense", s.dense_weight))
            if "sparse" in channels and vec["sparse"]:
                jobs.append(timed("sparse", self.store.search_sparse, vec["sparse"]))
                meta.append((v, "sparse", s.sparse_weight))
        started = time.perf_counter()
        results = list(await asyncio.gather(*jobs))
        searched = time.perf_counter()
        results = await self._current_only(results, meta, vectors, expr)
        checked = time.perf_counter()
        lists = [RankedList(v, ch, w, hits) for (v, ch, w), hits in zip(meta, results, strict=True)]
        if len(lists) == 1:  # one list: its own order, whatever its weight
            lists[0].weight = 1.0
        fused = rrf_fuse(lists, k=s.rrf_k, limit=limit or top_k)
        timings = {
            "search": (searched - started) * 1000,
            "versions": (checked - searched) * 1000,
            "fuse": (time.perf_counter() - checked) * 1000,
            "searches": float(len(jobs)),
            # the slowest search of each channel (the fan-out waits for it)
            **{f"search_{channel}": ms for channel, ms in channel_ms.items()},
        }
        return fused, timings

    async def _current_only(
        self,
        results: list[list[Hit]],
        meta: list[tuple[int, str, float]],
        vectors: Sequence[dict[str, Any]],
        expr: str | None,
    ) -> list[list[Hit]]:
        doc_ids = {h.fields["doc_id"] for hits in results for h in hits}
        if not doc_ids:
            return results
        current = await asyncio.to_thread(self.store.doc_versions, sorted(doc_ids))
        out: list[list[Hit]] = []
        for hits, (v, channel, _) in zip(results, meta, strict=True):
            fresh = {
                h.fields["doc_id"]
                for h in hits
                if h.fields["doc_id"] in current
                and int(h.fields["version"]) == current[h.fields["doc_id"]][0]
            }
            kept: list[Hit] = []
            replaced: set[str] = set()
            for hit in hits:
                doc_id = hit.fields["doc_id"]
                newest = current.get(doc_id)
                if newest is None:  # deleted since the ANN ran
                    continue
                if int(hit.fields["version"]) == newest[0]:
                    kept.append(hit)
                elif doc_id not in fresh and doc_id not in replaced:
                    # This channel saw only the old version: rank the new one in its place.
                    replaced.add(doc_id)
                    kept.extend(
                        await asyncio.to_thread(
                            self._best_chunk, vectors[v], channel, doc_id, newest[0], expr
                        )
                    )
            unique: dict[str, Hit] = {}
            for hit in kept:
                unique.setdefault(hit.chunk_id, hit)
            out.append(list(unique.values()))
        return out

    def _best_chunk(
        self, vector: dict[str, Any], channel: str, doc_id: str, version: int, expr: str | None
    ) -> list[Hit]:
        """The version's best chunk for this channel, scored here from its stored vectors.

        Not an ANN call: a just-inserted version may not be searchable yet on every Milvus, but
        it is readable, and one document has few chunks.
        """
        rows: list[dict[str, Any]] = []
        for attempt in range(5):  # an even newer version may replace this one meanwhile: follow it
            if attempt:
                time.sleep(0.01 * attempt)  # let that write finish
            pinned = f"doc_id == {quote(doc_id)} and version == {version}"
            rows = self.store.query(
                f"({expr}) and {pinned}" if expr else pinned,
                limit=MAX_WINDOW,
                fields=[*SCALAR_FIELDS, channel],
            )
            newest = None if rows else self.store.doc_versions([doc_id]).get(doc_id)
            if rows or newest is None or newest[0] == version:
                break
            version = newest[0]
        if not rows:
            return []
        if channel == "dense":
            q = np.asarray(vector["dense"], dtype=np.float32)
            q = q / (np.linalg.norm(q) or 1.0)
            scores = [float(np.dot(q, np.asarray(r["dense"], dtype=np.float32))) for r in rows]
        else:
            scores = [lexical_score(vector["sparse"], dict(r["sparse"])) for r in rows]
        best = max(range(len(rows)), key=scores.__getitem__)
        fields = {k: v for k, v in rows[best].items() if k != channel}
        return [Hit(chunk_id=fields["chunk_id"], score=scores[best], fields=fields)]


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
