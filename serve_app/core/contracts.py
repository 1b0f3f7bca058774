"""Typed contracts between the engines, the search pipeline and the Serve graph.

These are the shapes that cross a boundary (a Ray call, a port of the ``SearchPipeline``): the
embedder's per-item output, query variants, the expansion report, one fan-out's result. They are
TypedDicts where the value already travels as a plain dict (cheap to pickle, no conversion at the
hop) and dataclasses where it is built and read in Python only. Checked by mypy in ``make test``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, NotRequired, TypedDict

import numpy as np

from serve_app.core.fusion import Candidate

InputType = Literal["query", "passage"]
Channel = Literal["dense", "sparse", "bm25"]
ScoreStage = Literal["rerank", "fusion"]
# What happens to a text over the model's token window: cut its end (the default), cut its start,
# or refuse it (``InputTooLong``) so a client that must not lose text learns the limit.
Truncate = Literal["end", "start", "none"]


class EmbedOutput(TypedDict):
    """One embedded text: what ``EmbeddingService.embed_items`` and the Embedder return per item."""

    dense: np.ndarray  # normalised, float32
    sparse: dict[int, float]  # token id -> lexical weight
    # (tokens, dim) float16 rows when asked for, else None: the precision they are cached in, half
    # the bytes between replicas (a rerank pool of 50 ships ~5 MB with the offline model, not 10)
    colbert: np.ndarray | None
    tokens: int  # tokens the model read (0 when a cache served it)
    truncated: bool
    cached: str | None  # None: computed; else the cache tier that served it ("lru" | "redis")
    error: str | None  # the model failed on this item (its vectors are zeros)


class TextScore(TypedDict):
    """One text of a rerank request, scored against the query (``ColbertReranker.score_texts``)."""

    index: int  # position in the request
    score: float  # the raw combined score, as /v1/search reports it under ``rerank``
    relevance: float  # ``score`` mapped to [0, 1] (``serve_app.core.rerank.relevance``)
    scores: dict[str, float]  # colbert, m3_dense, m3_sparse (+ cross_encoder when configured)
    tokens: int  # tokens the model read for this text (0 when served from the cache)
    truncated: bool  # cut to fit the model's window


class QueryVariant(TypedDict):
    """One text the fan-out searches for: the original query or a rewrite of it."""

    text: str
    lang: str
    origin: str  # original | llm | lexicon | glossary
    terms: NotRequired[list[list[str]]]  # glossary: the [term, replacement] pairs swapped


class Expansion(TypedDict):
    """The expander's answer: the variants (original first) and the state of its sources."""

    variants: list[QueryVariant]
    llm: str  # off | skipped | ok | empty | fallback | error
    llm_error: NotRequired[str]
    glossary_pairs: NotRequired[int]
    error: NotRequired[str]  # the expander itself failed (the pipeline searched the original only)


class QueryVector(TypedDict):
    """One variant's vectors as the fan-out takes them."""

    dense: np.ndarray | list[float]
    sparse: dict[int, float]
    text: NotRequired[str]  # the variant's text (the bm25 channel searches it)
    origin: NotRequired[str]
    lang: NotRequired[str]


@dataclass(slots=True)
class Fanout:
    """What one two-stage fan-out returns: fused candidates and its stage timings.

    ``timings_ms`` has ``search`` (stage 1, wall), ``versions`` (stage 2), ``fuse`` and the slowest
    search per channel (``search_dense`` / ``search_sparse``); ``plan`` describes every search of
    the fan-out and is filled only when explain was asked for.
    """

    candidates: list[Candidate]
    timings_ms: dict[str, float]
    searches: int
    plan: list[dict[str, Any]] | None = None
    rrf_max: float = 1.0  # the RRF of a chunk ranked first by every list (scales ``rrf`` to [0, 1])


@dataclass(slots=True)
class ScoredResult:
    """A ranked result of a search: the candidate, the score it is ordered by, and every score."""

    rank: int
    candidate: Candidate
    score: float  # in [0, 1], higher = more relevant
    scores: dict[str, float] = field(default_factory=dict)
    score_stage: ScoreStage = "fusion"  # what produced ``score`` (fusion: the rerank was off or failed)
