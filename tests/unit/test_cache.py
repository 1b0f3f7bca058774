from __future__ import annotations

import time

import numpy as np

from serve_app.cache import EmbeddingCache, pack, unpack
from serve_app.embedding import EmbeddingService, EmbedItem
from serve_app.encoder import HashEncoder


def test_pack_roundtrip() -> None:
    dense = np.linspace(-1, 1, 16).astype(np.float32)
    sparse = {5: 0.25, 250_000: 1.5}
    d, s = unpack(pack(dense, sparse))
    assert np.array_equal(d, dense) and s == sparse
    d, s = unpack(pack(dense, {}))
    assert s == {}


def test_unreachable_redis_fails_open_and_the_breaker_stops_calling_it() -> None:
    cache = EmbeddingCache("redis://127.0.0.1:1/0", "m", timeout_s=0.2, fail_max=2, reset_s=30)
    started = time.monotonic()
    for _ in range(5):
        entries, tiers = cache.lookup(["a", "b"])
        assert entries == [None, None] and tiers == [None, None]
    assert cache.stats.errors == 1, "the second failure opens the breaker"
    assert cache.stats.skipped >= 3 and cache.redis_state == "open"
    cache.set_many([("a", np.zeros(4, np.float32), {})])  # still served by the LRU tier
    assert cache.lookup(["a"])[1] == ["lru"]
    assert time.monotonic() - started < 2


def test_cache_hit_never_reaches_the_model() -> None:
    encoder = HashEncoder(dim=16)
    service = EmbeddingService(encoder, EmbeddingCache(None, "hash", lru_items=100))
    first = service.embed_items([EmbedItem("認証トークン", "query"), EmbedItem("token", "query")])
    calls = encoder.calls
    again = service.embed_items([EmbedItem("認証トークン", "query"), EmbedItem("token", "passage")])
    assert again[0]["cached"] == "lru" and np.array_equal(again[0]["dense"], first[0]["dense"])
    assert again[1]["cached"] is None, "another input type is another key"
    assert encoder.calls == calls + 1, "only the uncached passage reached the model"
    assert service.embed_items([EmbedItem("認証トークン", "query")])[0]["cached"] == "lru"
    assert encoder.calls == calls + 1
