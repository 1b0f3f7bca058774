"""The embedding engine behind the Embedder deployment: cache in front of an encoder.

Plain Python so that tests, the CLI and Ray Data actors use exactly what Serve uses.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from serve_app.cache import EmbeddingCache
from serve_app.encoder import InputType, M3Encoder, TextEncoder
from serve_app.settings import Settings


@dataclass(frozen=True, slots=True)
class EmbedItem:
    text: str
    input_type: InputType = "passage"
    colbert: bool = False


def load_encoder(settings: Settings) -> M3Encoder:
    m = settings.model
    return M3Encoder(
        m.name_or_path,
        device=m.device,
        dtype=m.dtype,
        max_length=m.max_length,
        batch_size=settings.batch.encode_batch_size,
        num_threads=m.num_threads,
        pooling=m.pooling,
        query_prefix=m.query_prefix,
        passage_prefix=m.passage_prefix,
    )


class EmbeddingService:
    """Embeds items of mixed input type in as few forward passes as possible, cache first."""

    def __init__(self, encoder: TextEncoder, cache: EmbeddingCache | None = None) -> None:
        self.encoder = encoder
        self.cache = cache

    @classmethod
    def from_settings(cls, settings: Settings) -> EmbeddingService:
        encoder = load_encoder(settings)
        cache = None
        if settings.redis.url is not None:
            namespace = f"{encoder.model_id}:{settings.model.max_length}"
            cache = EmbeddingCache(settings.redis.url.get_secret_value(), namespace)
        return cls(encoder, cache)

    @property
    def model_id(self) -> str:
        return self.encoder.model_id

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def embed_items(self, items: Sequence[EmbedItem]) -> list[dict[str, Any]]:
        """One result dict per item: dense (np.ndarray), sparse ({id: w}), colbert or None, tokens, cached."""
        results: list[dict[str, Any] | None] = [None] * len(items)
        groups: dict[tuple[str, bool], list[int]] = defaultdict(list)
        for i, item in enumerate(items):
            groups[(item.input_type, item.colbert)].append(i)
        for (input_type, colbert), idx in groups.items():
            todo = idx
            if self.cache is not None and not colbert:  # ColBERT vectors are too large to cache
                keys = [f"{input_type}\0{items[i].text}" for i in idx]
                todo = []
                for i, found in zip(idx, self.cache.get_many(keys), strict=True):
                    if found is None:
                        todo.append(i)
                    else:
                        results[i] = {
                            "dense": found[0],
                            "sparse": found[1],
                            "colbert": None,
                            "tokens": 0,
                            "cached": True,
                        }
            if not todo:
                continue
            enc = self.encoder.encode(
                [items[i].text for i in todo], input_type=input_type, dense=True, sparse=True, colbert=colbert
            )
            for row, i in enumerate(todo):
                results[i] = {
                    "dense": enc.dense[row],
                    "sparse": enc.sparse[row],
                    "colbert": enc.colbert[row] if colbert else None,
                    "tokens": enc.token_counts[row],
                    "cached": False,
                }
            if self.cache is not None and not colbert:
                self.cache.set_many(
                    [
                        (f"{input_type}\0{items[i].text}", enc.dense[r], enc.sparse[r])
                        for r, i in enumerate(todo)
                    ]
                )
        return results  # type: ignore[return-value]

    def embed_texts(
        self, texts: Sequence[str], *, input_type: InputType = "passage"
    ) -> tuple[np.ndarray, list]:
        """Dense matrix and sparse list for a batch of texts (the ingest path)."""
        out = self.embed_items([EmbedItem(t, input_type) for t in texts])
        dense = np.stack([o["dense"] for o in out]) if out else np.zeros((0, self.dim), np.float32)
        return dense, [o["sparse"] for o in out]
