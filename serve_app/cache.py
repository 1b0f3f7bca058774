"""Redis cache for dense + sparse outputs, fail-open.

Keys name the model, the input type, the max length and the text's hash, so a model or
settings change never serves stale vectors. Any Redis error turns the cache off for
``cooldown_s`` (a minimal circuit breaker) instead of slowing or failing requests.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import time
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)


def pack(dense: np.ndarray, sparse: dict[int, float]) -> bytes:
    """dim, nnz, float32 dense, int32 ids, float32 weights: compact and quick to parse."""
    ids = np.fromiter(sparse.keys(), np.int32, len(sparse))
    weights = np.fromiter(sparse.values(), np.float32, len(sparse))
    return (
        struct.pack("<II", dense.shape[0], len(sparse))
        + dense.astype(np.float32).tobytes()
        + ids.tobytes()
        + weights.tobytes()
    )


def unpack(blob: bytes) -> tuple[np.ndarray, dict[int, float]]:
    dim, nnz = struct.unpack_from("<II", blob)
    off = 8
    dense = np.frombuffer(blob, np.float32, dim, off).copy()
    off += 4 * dim
    ids = np.frombuffer(blob, np.int32, nnz, off)
    weights = np.frombuffer(blob, np.float32, nnz, off + 4 * nnz)
    return dense, dict(zip(ids.tolist(), weights.tolist(), strict=True))


class EmbeddingCache:
    def __init__(
        self,
        url: str,
        namespace: str,
        *,
        ttl_s: int = 86_400,
        timeout_s: float = 0.05,
        cooldown_s: float = 10.0,
    ) -> None:
        import redis

        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry_on_timeout=False
        )
        self.namespace = namespace
        self.ttl_s = ttl_s
        self.cooldown_s = cooldown_s
        self._down_until = 0.0
        self.hits = self.misses = self.errors = 0

    def key(self, text: str) -> str:
        return f"specrag:emb:{self.namespace}:{hashlib.sha256(text.encode()).hexdigest()}"

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, exc: Exception) -> None:
        self.errors += 1
        self._down_until = time.monotonic() + self.cooldown_s
        log.warning("redis cache off for %.0f s: %s", self.cooldown_s, exc)

    def get_many(self, texts: Sequence[str]) -> list[tuple[np.ndarray, dict[int, float]] | None]:
        if not texts or not self.available:
            self.misses += len(texts)
            return [None] * len(texts)
        try:
            blobs = self._client.mget([self.key(t) for t in texts])
        except Exception as exc:  # any redis/socket error: serve without cache
            self._failed(exc)
            self.misses += len(texts)
            return [None] * len(texts)
        found = [unpack(b) if b else None for b in blobs]
        hit_count = sum(f is not None for f in found)
        self.hits += hit_count
        self.misses += len(found) - hit_count
        return found

    def set_many(self, items: Sequence[tuple[str, np.ndarray, dict[int, float]]]) -> None:
        if not items or not self.available:
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for text, dense, sparse in items:
                pipe.set(self.key(text), pack(dense, sparse), ex=self.ttl_s)
            pipe.execute()
        except Exception as exc:
            self._failed(exc)

    def ping(self) -> bool:
        try:
            return bool(self._client.ping())
        except Exception:
            return False
