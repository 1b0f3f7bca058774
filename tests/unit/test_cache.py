from __future__ import annotations

import time

import numpy as np

from serve_app.cache import EmbeddingCache, pack, unpack


def test_pack_roundtrip() -> None:
    dense = np.linspace(-1, 1, 16).astype(np.float32)
    sparse = {5: 0.25, 250_000: 1.5}
    d, s = unpack(pack(dense, sparse))
    assert np.array_equal(d, dense) and s == sparse
    d, s = unpack(pack(dense, {}))
    assert s == {}


def test_unreachable_redis_fails_open_and_backs_off() -> None:
    cache = EmbeddingCache("redis://127.0.0.1:1/0", "m", timeout_s=0.2, cooldown_s=30)
    started = time.monotonic()
    assert cache.get_many(["a", "b"]) == [None, None]
    assert cache.errors == 1 and not cache.available
    cache.set_many([("a", np.zeros(4, np.float32), {})])  # skipped while the breaker is open
    assert cache.get_many(["a"]) == [None]
    assert cache.errors == 1, "an open breaker must not call Redis again"
    assert time.monotonic() - started < 2
