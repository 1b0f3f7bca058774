"""The rerank engine: ColBERT MaxSim (+ dense, sparse) with the same M3 model over the fused
candidates, plus an optional cross-encoder (FlagReranker, e.g. ``BAAI/bge-reranker-v2-m3``).

ColBERT vectors are not stored (hundreds of vectors per chunk); they come from the ``Embedder``
port, so in the Serve graph they share the Embedder's (GPU) replicas, dynamic batches and
ColBERT cache, and in an evaluation the in-process service.

Two entry points share one scoring formula (``retrieval.rerank_scores``): ``rerank`` orders a
search's candidates, ``score_texts`` scores arbitrary texts against a query (``/v1/rerank``,
TEI's ``/rerank``). A text's *raw* score is that formula's weighted mean; its *relevance*
(``relevance``) is the raw score clipped to [0, 1].
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from serve_app.core.compute_threads import on_torch_thread, one_blas_thread
from serve_app.core.contracts import EmbedOutput, InputType, TextScore, Truncate
from serve_app.core.encoder import InputTooLong
from serve_app.core.fusion import Candidate
from serve_app.core.pipeline import Embedder
from serve_app.core.retrieval import passage_text, relevance, rerank, rerank_scores
from serve_app.settings import SearchSettings


class RerankerUnavailable(RuntimeError):
    """The texts could not be scored: the reranker is unreachable, or the model failed on valid
    input (answered 503, as an embedder failure is)."""


def load_cross_encoder(name_or_path: str, device: str = "auto") -> Any:
    """FlagEmbedding's ``FlagReranker`` on one device (fp16 on GPU); local paths make no network call."""
    import torch
    from FlagEmbedding import FlagReranker

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return on_torch_thread(FlagReranker, name_or_path, use_fp16=device.startswith("cuda"), devices=device)


def cross_encoder_scores(model: Any, query: str, passages: list[str]) -> list[float]:
    """Relevance in [0, 1] (sigmoid of the logit), one per passage."""
    scores = on_torch_thread(model.compute_score, [[query, p] for p in passages], normalize=True)
    return [float(x) for x in (scores if isinstance(scores, list) else [scores])]


class ColbertReranker:
    """The ``Reranker`` port: one ColBERT pass for the query and one for the candidates' passages."""

    def __init__(self, embedder: Embedder, settings: SearchSettings, cross_encoder: Any = None) -> None:
        one_blas_thread()  # the MaxSim's matmuls: spinning BLAS threads would take the model's cores
        self.embedder = embedder
        self.settings = settings
        self.cross = cross_encoder

    async def rerank(
        self, query: str, candidates: list[Candidate], queries: Sequence[EmbedOutput]
    ) -> list[Candidate]:
        """``queries``: the query's embedder outputs with ColBERT rows (from the search's one
        embedding call), then those of other readings of it (its translation) whose ColBERT and
        dense scores are averaged with the query's. Only the candidates are embedded here."""
        if not candidates:
            return candidates
        if any(q["colbert"] is None for q in queries):
            raise ValueError("the rerank needs the queries' ColBERT rows (embed them with colbert=True)")
        texts = [passage_text(c.fields) for c in candidates]
        calls: list[Any] = [self.embedder.embed(texts, "passage", True)]
        if self.cross is not None:
            calls.append(asyncio.to_thread(cross_encoder_scores, self.cross, query, texts))
        out = await asyncio.gather(*calls)
        return rerank(queries, out[0], candidates, self.settings, out[1] if self.cross else None)

    async def score_texts(self, query: str, texts: list[str], truncate: Truncate = "end") -> list[TextScore]:
        """Every text scored against ``query``, best first (equal scores keep the request's order).

        The query and the texts are embedded with ColBERT vectors in one Embedder call each (the
        Embedder batches the texts); ``truncate`` applies to both (``"none"``: ``InputTooLong``
        naming ``query`` or ``documents[i]``). The cross-encoder, when configured, reads each
        (query, text) pair with its own window, cutting the end.
        """
        if not texts:
            return []
        calls: list[Any] = [
            self._embed([query], "query", truncate, "query"),
            self._embed(texts, "passage", truncate, "documents"),
        ]
        if self.cross is not None:
            calls.append(asyncio.to_thread(cross_encoder_scores, self.cross, query, texts))
        out = await asyncio.gather(*calls)
        q, passages = out[0][0], out[1]
        cross: list[float] | None = out[2] if self.cross is not None else None
        scored = []
        for i, p in enumerate(passages):
            scores = rerank_scores([q], p, self.settings, cross[i] if cross is not None else None)
            raw = scores.pop("rerank")
            scored.append(
                TextScore(
                    index=i,
                    score=raw,
                    relevance=relevance(raw),
                    scores=scores,
                    tokens=p["tokens"],
                    truncated=p["truncated"],
                )
            )
        return sorted(scored, key=lambda t: (-t["score"], t["index"]))

    async def _embed(
        self, texts: list[str], input_type: InputType, truncate: Truncate, what: str
    ) -> list[EmbedOutput]:
        """ColBERT outputs of ``texts``; a refusal names them as ``what``, a model failure raises."""
        try:
            out = await self.embedder.embed(texts, input_type, True, truncate)
        except InputTooLong as exc:
            raise InputTooLong(exc.over, exc.limit, what) from exc
        if failed := [i for i, o in enumerate(out) if o["error"]]:
            name = what if what == "query" else f"{what}[{failed[0]}]"
            raise RerankerUnavailable(f"the model failed on {name}: {out[failed[0]]['error']}")
        return out
