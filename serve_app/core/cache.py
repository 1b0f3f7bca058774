"""Two-tier cache for embedder outputs: an in-process LRU in front of Redis, fail-open.

Keys name the model and its revision, the output kind, the input type, the max length and the
text's hash, so a model or settings change never serves stale vectors. Dense + sparse entries
and entries that also carry ColBERT vectors (float16, one row per token; the reranker's passages)
live in separate caches: a ColBERT entry is hundreds of times larger, so its LRU is bounded by
bytes, not items. Redis errors and timeouts never fail a request: the circuit breaker (pybreaker)
stops calling a Redis that keeps failing and probes it again after ``reset_s``; until then every
lookup is a miss served by the model.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pybreaker
from cachetools import LRUCache

log = logging.getLogger(__name__)

# dense, sparse, and the ColBERT matrix (float16, tokens x dim) or None.
Entry = tuple[np.ndarray, dict[int, float], np.ndarray | None]


def pack(dense: np.ndarray, sparse: dict[int, float], colbert: np.ndarray | None = None) -> bytes:
    """dim, nnz, float32 dense, int32 ids, float32 weights; then, only with ColBERT, rows, dim
    and float16 rows. Compact and quick to parse; a dense + sparse blob has no trailer."""
    ids = np.fromiter(sparse.keys(), np.int32, len(sparse))
    weights = np.fromiter(sparse.values(), np.float32, len(sparse))
    blob = (
        struct.pack("<II", dense.shape[0], len(sparse))
        + dense.astype(np.float32).tobytes()
        + ids.tobytes()
        + weights.tobytes()
    )
    if colbert is not None:
        rows, dim = colbert.shape
        blob += struct.pack("<II", rows, dim) + colbert.astype(np.float16).tobytes()
    return blob


def unpack(blob: bytes) -> Entry:
    dim, nnz = struct.unpack_from("<II", blob)
    off = 8
    dense = np.frombuffer(blob, np.float32, dim, off).copy()
    off += 4 * dim
    ids = np.frombuffer(blob, np.int32, nnz, off)
    weights = np.frombuffer(blob, np.float32, nnz, off + 4 * nnz)
    off += 8 * nnz
    colbert = None
    if len(blob) > off:
        rows, cdim = struct.unpack_from("<II", blob, off)
        colbert = np.frombuffer(blob, np.float16, rows * cdim, off + 8).reshape(rows, cdim).copy()
    return dense, dict(zip(ids.tolist(), weights.tolist(), strict=True)), colbert


def entry_bytes(entry: Entry) -> int:
    """Rough resident size of an entry (arrays plus ~80 bytes per sparse weight in a dict)."""
    dense, sparse, colbert = entry
    return dense.nbytes + 80 * len(sparse) + (colbert.nbytes if colbert is not None else 0) + 200


class _NoLRU(dict):
    """``lru_items: 0``: the in-process tier stores nothing."""

    def __setitem__(self, key: str, value: Entry) -> None:
        pass


class _ByteLRU(LRUCache):
    """An LRU bounded by bytes; an entry larger than the whole budget is not kept."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(maxsize=max_bytes, getsizeof=entry_bytes)

    def __setitem__(self, key: str, value: Entry) -> None:
        if entry_bytes(value) <= self.maxsize:
            super().__setitem__(key, value)


@dataclass
class CacheStats:
    lru_hits: int = 0
    redis_hits: int = 0
    misses: int = 0
    errors: int = 0  # Redis calls that failed (timeouts included)
    skipped: int = 0  # Redis calls not made because the breaker was open

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class EmbeddingCache:
    """``lookup`` / ``set_many`` by text; thread-safe; Redis optional (LRU only when ``url`` is None).

    ``lru_bytes`` bounds the in-process tier by size instead of by ``lru_items`` (ColBERT entries).
    """

    def __init__(
        self,
        url: str | None,
        namespace: str,
        *,
        lru_items: int = 10_000,
        ttl_s: int = 86_400,
        timeout_s: float = 0.05,
        fail_max: int = 3,
        reset_s: float = 10.0,
        lru_bytes: int | None = None,
        name: str = "redis-cache",
    ) -> None:
        self.namespace = namespace
        self.ttl_s = ttl_s
        self.stats = CacheStats()
        self._lru: LRUCache[str, Entry] | dict
        if lru_bytes is not None:
            self._lru = _ByteLRU(lru_bytes) if lru_bytes > 0 else _NoLRU()
        else:
            self._lru = LRUCache(maxsize=lru_items) if lru_items > 0 else _NoLRU()
        self._lock = threading.Lock()
        self._redis = None
        if url:
            import redis

            self._redis = redis.Redis.from_url(
                url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry_on_timeout=False
            )
        self.breaker = pybreaker.CircuitBreaker(fail_max=fail_max, reset_timeout=reset_s, name=name)

    def key(self, text: str) -> str:
        return f"specrag:emb:{self.namespace}:{hashlib.sha256(text.encode()).hexdigest()}"

    @property
    def redis_state(self) -> str:
        """``disabled``, or the breaker's ``closed`` (healthy) / ``open`` (skipped) / ``half-open``."""
        return "disabled" if self._redis is None else str(self.breaker.current_state)

    def ping(self) -> str:
        """``disabled``, ``ok`` or ``down: <reason>``; asks Redis directly (the breaker aside), so
        readiness sees a returned Redis before the breaker's next probe does."""
        if self._redis is None:
            return "disabled"
        try:
            self._redis.ping()
        except Exception as exc:
            return f"down: {type(exc).__name__}"
        return "ok"

    def _redis_call(self, fn, default):
        try:
            return self.breaker.call(fn)
        except pybreaker.CircuitBreakerError:
            self.stats.skipped += 1
        except Exception as exc:  # connection refused, timeout, protocol error: serve without cache
            self.stats.errors += 1
            log.warning("redis cache call failed (%s); serving without it", type(exc).__name__)
        return default

    def lookup(self, texts: Sequence[str]) -> tuple[list[Entry | None], list[str | None]]:
        """Entries by text, and which tier served each (``"lru"``, ``"redis"`` or ``None``)."""
        keys = [self.key(t) for t in texts]
        with self._lock:
            found: list[Entry | None] = [self._lru.get(k) for k in keys]
        tiers: list[str | None] = ["lru" if f is not None else None for f in found]
        missing = [i for i, f in enumerate(found) if f is None]
        if missing and self._redis is not None:
            blobs = self._redis_call(
                lambda: self._redis.mget([keys[i] for i in missing]), [None] * len(missing)
            )
            with self._lock:
                for i, blob in zip(missing, blobs, strict=True):
                    if blob:
                        found[i] = self._lru[keys[i]] = unpack(blob)
                        tiers[i] = "redis"
        with self._lock:
            self.stats.lru_hits += tiers.count("lru")
            self.stats.redis_hits += tiers.count("redis")
            self.stats.misses += tiers.count(None)
        return found, tiers

    def peek(self, texts: Sequence[str]) -> list[Entry | None]:
        """Entries of the in-process tier only: no I/O, so safe on an event loop. Hits are
        counted; misses are left to the ``lookup`` that follows for them."""
        keys = [self.key(t) for t in texts]
        with self._lock:
            found: list[Entry | None] = [self._lru.get(k) for k in keys]
            self.stats.lru_hits += sum(f is not None for f in found)
        return found

    def set_many(self, items: Sequence[tuple[str, Entry]]) -> None:
        """``(text, entry)`` pairs; a ColBERT matrix is stored as float16 (pass it as such, so
        that what was computed and what is served from the cache are the same numbers)."""
        if not items:
            return
        keyed = [(self.key(text), entry) for text, entry in items]
        with self._lock:
            for key, entry in keyed:
                self._lru[key] = entry
        client = self._redis
        if client is None:
            return

        def write() -> None:
            pipe = client.pipeline(transaction=False)
            for key, entry in keyed:
                pipe.set(key, pack(*entry), ex=self.ttl_s)
            pipe.execute()

        self._redis_call(write, None)
