"""Reciprocal-rank fusion of the fan-out's ranked lists, keeping every score that went in."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class RankedList:
    """One search of the fan-out: which variant, which channel, its weight and its hits in order."""

    variant: int
    channel: str  # "dense" | "sparse"
    weight: float
    hits: Sequence[Any]  # objects with .chunk_id, .score, .fields


@dataclass(slots=True)
class Candidate:
    chunk_id: str
    fields: dict[str, Any]
    rrf: float = 0.0
    # best raw score per channel over all variants (dense: inner product, sparse: lexical)
    channel_scores: dict[str, float] = field(default_factory=dict)
    found_by: list[dict[str, Any]] = field(default_factory=list)  # variant, channel, rank


def rrf_fuse(lists: Iterable[RankedList], *, k: int = 60, limit: int | None = None) -> list[Candidate]:
    """Weighted RRF: score(d) = sum over lists of weight / (k + rank), rank from 1.

    A chunk found by several variants or channels is merged into one candidate; ties are
    broken by chunk id so the order is deterministic.
    """
    merged: dict[str, Candidate] = {}
    for ranked in lists:
        if ranked.weight <= 0:
            continue
        for rank, hit in enumerate(ranked.hits, start=1):
            cand = merged.get(hit.chunk_id)
            if cand is None:
                cand = merged[hit.chunk_id] = Candidate(hit.chunk_id, dict(hit.fields))
            cand.rrf += ranked.weight / (k + rank)
            best = cand.channel_scores.get(ranked.channel)
            if best is None or hit.score > best:
                cand.channel_scores[ranked.channel] = float(hit.score)
            cand.found_by.append({"variant": ranked.variant, "channel": ranked.channel, "rank": rank})
    fused = sorted(merged.values(), key=lambda c: (-c.rrf, c.chunk_id))
    return fused[:limit] if limit is not None else fused
