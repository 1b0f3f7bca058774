"""The embedding engine behind the Embedder deployment: cache tiers in front of an encoder.

Plain Python so that tests, the CLI and batch jobs use exactly what Serve uses.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from serve_app.core.cache import EmbeddingCache, Entry
from serve_app.core.contracts import EmbedOutput, Truncate
from serve_app.core.encoder import InputTooLong, InputType, M3Encoder, TextEncoder
from serve_app.settings import Settings


@dataclass(frozen=True, slots=True)
class EmbedItem:
    text: str
    input_type: InputType = "passage"
    colbert: bool = False
    truncate: Truncate = "end"  # "none": callers check with ``EmbeddingService.check_fits`` first


def load_encoder(settings: Settings) -> M3Encoder:
    m = settings.model
    return M3Encoder(
        m.name_or_path,
        device=m.device,
        dtype=m.dtype,
        max_length=m.max_length,
        batch_size=settings.batch.encode_batch_size,
        max_tokens_per_batch=settings.batch.max_tokens_per_batch,
        num_threads=m.num_threads,
        pooling=m.pooling,
        query_prefix=m.query_prefix,
        passage_prefix=m.passage_prefix,
    )


def cache_key(item: EmbedItem) -> str:
    """What a cache entry is looked up by (the cache hashes it with the model's namespace).

    A text cut at its start has other vectors than one cut at its end; ``end`` and ``none`` share
    the entry (a text that fits is not cut either way), so existing entries stay valid.
    """
    if item.truncate == "start":
        return f"{item.input_type}:start\0{item.text}"
    return f"{item.input_type}\0{item.text}"


def _result(
    dense: np.ndarray,
    sparse: dict[int, float],
    colbert: np.ndarray | None,
    *,
    tokens: int,
    truncated: bool = False,
    cached: str | None = None,
    error: str | None = None,
) -> EmbedOutput:
    return {
        "dense": dense,
        "sparse": sparse,
        "colbert": colbert,
        "tokens": tokens,
        "truncated": truncated,
        "cached": cached,
        "error": error,
    }


def cached_output(entry: Entry, colbert: bool, tier: str | None) -> EmbedOutput | None:
    """A cache entry as the output of an item (``colbert``: with its rows); None when the item asks
    for ColBERT rows the entry lacks, which makes it a miss."""
    dense, sparse, rows = entry
    if colbert and rows is None:
        return None
    return _result(dense, sparse, rows if colbert else None, tokens=0, cached=tier)


async def fill_gaps(
    out: list[EmbedOutput | None], compute: Callable[[list[int]], Awaitable[Sequence[EmbedOutput]]]
) -> list[EmbedOutput]:
    """``out`` with every None replaced, in order, by what ``compute`` returns for those indices:
    the one shape of "answer what a cache holds, compute the rest" (Embedder, Ingress, in-process)."""
    todo = [i for i, o in enumerate(out) if o is None]
    if todo:
        for i, result in zip(todo, await compute(todo), strict=True):
            out[i] = result
    return [o for o in out if o is not None]


class EmbeddingService:
    """Embeds items of mixed input type in as few forward passes as possible, cache first.

    Items that ask for ColBERT vectors (the reranker's query and passages) go to ``colbert_cache``,
    whose entries carry all three outputs; the others to ``cache`` (dense + sparse only). ColBERT
    rows are float16 whether or not they are cached, so a cached and a computed rerank score the
    same, and they leave the replica in that precision (half the bytes of float32 through Ray).
    """

    def __init__(
        self,
        encoder: TextEncoder,
        cache: EmbeddingCache | None = None,
        colbert_cache: EmbeddingCache | None = None,
    ) -> None:
        self.encoder = encoder
        self.cache = cache
        self.colbert_cache = colbert_cache
        # Sizes of recent forward passes; the Embedder drains it into metrics, bounded for other callers.
        self.forward_batches: deque[int] = deque(maxlen=4096)

    @classmethod
    def from_settings(cls, settings: Settings, encoder: TextEncoder | None = None) -> EmbeddingService:
        encoder = encoder or load_encoder(settings)
        r = settings.redis
        url = r.url.get_secret_value() if r.url else None
        prefix = hashlib.sha256(encoder.fingerprint.encode()).hexdigest()[:16]
        new_cache = partial(
            EmbeddingCache,
            ttl_s=r.ttl_s,
            timeout_s=r.timeout_s,
            fail_max=r.breaker_fail_max,
            reset_s=r.breaker_reset_s,
        )
        cache = colbert_cache = None
        if url is not None or r.lru_items > 0:
            cache = new_cache(url, f"{prefix}:dense+sparse", lru_items=r.lru_items)
        colbert_url = url if r.colbert_in_redis else None
        if colbert_url is not None or r.colbert_lru_mb > 0:
            colbert_cache = new_cache(
                colbert_url,
                f"{prefix}:dense+sparse+colbert",
                lru_bytes=r.colbert_lru_mb * 2**20,
                name="redis-colbert-cache",
            )
        return cls(encoder, cache, colbert_cache)

    @property
    def model_id(self) -> str:
        return self.encoder.model_id

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def _from_cache(
        self,
        cache: EmbeddingCache,
        items: Sequence[EmbedItem],
        idx: list[int],
        results: list[EmbedOutput | None],
    ) -> list[int]:
        """Fill what the cache has; return the indices the model must compute."""
        keys = [cache_key(items[i]) for i in idx]
        found, tiers = cache.lookup(keys)
        todo = []
        for i, entry, tier in zip(idx, found, tiers, strict=True):
            # ColBERT rows are served float16 as kept: no copy per hit.
            result = cached_output(entry, items[i].colbert, tier) if entry is not None else None
            if result is None:
                todo.append(i)
            results[i] = result
        return todo

    def from_memory(self, items: Sequence[EmbedItem]) -> list[EmbedOutput | None]:
        """What the in-process cache tier holds for ``items`` (None where it holds nothing), with
        no I/O and no model: the Embedder answers these on its event loop, before any batching."""
        out: list[EmbedOutput | None] = [None] * len(items)
        for colbert, cache in ((False, self.cache), (True, self.colbert_cache)):
            idx = [i for i, item in enumerate(items) if item.colbert == colbert]
            if cache is None or not idx:
                continue
            for i, entry in zip(idx, cache.peek([cache_key(items[i]) for i in idx]), strict=True):
                out[i] = cached_output(entry, colbert, "lru") if entry is not None else None
        return out

    def embed_items(self, items: Sequence[EmbedItem]) -> list[EmbedOutput]:
        """One dict per item: dense, sparse ({id: w}), colbert or None, tokens, truncated, cached, error.

        ``cached`` is ``None`` when the model computed the item, else the tier that served it
        (``"lru"`` or ``"redis"``): such items never reach the model. An item the model fails on
        carries ``error`` and zero vectors; the others are unaffected.
        """
        results: list[EmbedOutput | None] = [None] * len(items)
        groups: dict[tuple[InputType, bool, Truncate], list[int]] = defaultdict(list)
        for i, item in enumerate(items):
            groups[(item.input_type, item.colbert, item.truncate)].append(i)
        for (input_type, colbert, truncate), idx in groups.items():
            cache = self.colbert_cache if colbert else self.cache
            todo = self._from_cache(cache, items, idx, results) if cache is not None else idx
            if not todo:
                continue
            enc = self.encoder.encode(
                [items[i].text for i in todo],
                input_type=input_type,
                dense=True,
                sparse=True,
                colbert=colbert,
                truncate=truncate,
            )
            self.forward_batches.extend(enc.batches)
            dense_rows, sparse_rows, colbert_rows = enc.dense, enc.sparse, enc.colbert
            if dense_rows is None or sparse_rows is None or (colbert and colbert_rows is None):
                raise TypeError(f"{type(self.encoder).__name__}.encode left out an output it was asked for")
            fresh: list[tuple[str, Entry]] = []
            for row, i in enumerate(todo):
                error = enc.errors[row] if enc.errors else None
                half = colbert_rows[row].astype(np.float16) if colbert and colbert_rows is not None else None
                result = _result(
                    dense_rows[row].copy(),  # a row view would keep the whole batch alive in the LRU
                    sparse_rows[row],
                    half,
                    tokens=enc.token_counts[row],
                    truncated=bool(enc.truncated and enc.truncated[row]),
                    error=error,
                )
                results[i] = result
                if error is None:
                    fresh.append((cache_key(items[i]), (result["dense"], sparse_rows[row], half)))
            if cache is not None:
                cache.set_many(fresh)
        # Every item was filled above, by a cache or by the model.
        return [r for r in results if r is not None]

    def check_fits(self, texts: Sequence[str], input_type: InputType) -> None:
        """Raise ``InputTooLong`` for texts over the model's window (what ``truncate="none"`` asks).

        Checked per request before its texts join a shared batch, so a refusal fails only the
        request that sent the long text, never the others batched with it.
        """
        counts = self.encoder.count_tokens(texts, input_type=input_type)
        limit = self.encoder.max_length
        over = {i: n for i, n in enumerate(counts) if n > limit}
        if over:
            raise InputTooLong(over, limit)

    def embed_texts(
        self, texts: Sequence[str], *, input_type: InputType = "passage", colbert: bool = False
    ) -> tuple[np.ndarray, list[dict[int, float]]]:
        """Dense matrix and sparse list for a batch of texts (the ingest path); fails on any item error.

        ``colbert``: the same pass also yields the ColBERT rows, which go into the ColBERT cache
        (``ingest.colbert_rows``), so the rerank of these chunks needs no forward pass of its own.
        """
        out = self.embed_items([EmbedItem(t, input_type, colbert) for t in texts])
        failed = [(i, o["error"]) for i, o in enumerate(out) if o["error"]]
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(texts)} texts failed to embed, first: {failed[0]}")
        dense = np.stack([o["dense"] for o in out]) if out else np.zeros((0, self.dim), np.float32)
        return dense, [o["sparse"] for o in out]
