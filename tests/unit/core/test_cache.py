from __future__ import annotations

import time

import numpy as np

from serve_app.core.cache import EmbeddingCache, entry_bytes, pack, unpack
from serve_app.core.embedding import EmbeddingService, EmbedItem
from serve_app.core.encoder import colbert_maxsim
from serve_app.settings import Settings
from serve_app.testing.doubles import HashEncoder


def test_pack_roundtrip() -> None:
    dense = np.linspace(-1, 1, 16).astype(np.float32)
    sparse = {5: 0.25, 250_000: 1.5}
    d, s, c = unpack(pack(dense, sparse))
    assert np.array_equal(d, dense) and s == sparse and c is None
    d, s, c = unpack(pack(dense, {}))
    assert s == {} and c is None
    colbert = np.random.default_rng(0).standard_normal((7, 16)).astype(np.float16)
    d, s, c = unpack(pack(dense, sparse, colbert))
    assert np.array_equal(d, dense) and s == sparse
    assert c.dtype == np.float16 and np.array_equal(c, colbert)
    assert unpack(pack(dense, {}, colbert[:0]))[2].shape == (0, 16)


def test_a_dense_sparse_blob_written_before_colbert_entries_existed_still_reads() -> None:
    """The dense + sparse layout is unchanged: blobs already in a production Redis stay valid."""
    import struct

    dense, sparse = np.ones(4, np.float32), {9: 0.5}
    old = struct.pack("<II", 4, 1) + dense.tobytes() + np.int32([9]).tobytes() + np.float32([0.5]).tobytes()
    assert pack(dense, sparse) == old
    d, s, c = unpack(old)
    assert np.array_equal(d, dense) and s == sparse and c is None


def test_unreachable_redis_fails_open_and_the_breaker_stops_calling_it() -> None:
    cache = EmbeddingCache("redis://127.0.0.1:1/0", "m", timeout_s=0.2, fail_max=2, reset_s=30)
    started = time.monotonic()
    for _ in range(5):
        entries, tiers = cache.lookup(["a", "b"])
        assert entries == [None, None] and tiers == [None, None]
    assert cache.stats.errors == 1, "the second failure opens the breaker"
    assert cache.stats.skipped >= 3 and cache.redis_state == "open"
    cache.set_many([("a", (np.zeros(4, np.float32), {}, None))])  # still served by the LRU tier
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


def _colbert_service(**redis: object) -> tuple[HashEncoder, EmbeddingService]:
    encoder = HashEncoder(dim=16, max_length=50_000)  # a window wider than the byte-budget texts below
    settings = Settings(redis={"lru_items": 100, **redis})
    return encoder, EmbeddingService.from_settings(settings, encoder)


def test_rerank_passages_are_served_with_their_colbert_vectors_from_the_cache() -> None:
    encoder, service = _colbert_service()
    texts = ["アクセストークンの有効期限は 1 時間", "idempotency keys are kept for 24 hours"]
    items = [EmbedItem(t, "passage", colbert=True) for t in texts]
    first = service.embed_items(items)
    calls = encoder.calls
    again = service.embed_items(items)
    assert encoder.calls == calls, "a cached rerank passage never reaches the model"
    assert [r["cached"] for r in again] == ["lru", "lru"]
    query = service.embed_items([EmbedItem("トークン 有効期限", "query", colbert=True)])[0]
    for a, b in zip(first, again, strict=True):
        assert a["colbert"].dtype == b["colbert"].dtype == np.float16, "rows travel as they are cached"
        assert np.array_equal(a["colbert"], b["colbert"]), "computed and cached rows are the same numbers"
        q = query["colbert"]
        assert colbert_maxsim(q, a["colbert"]) == colbert_maxsim(q, b["colbert"])
        assert np.array_equal(a["dense"], b["dense"]) and a["sparse"] == b["sparse"]


def test_colbert_and_dense_entries_are_kept_apart() -> None:
    """A dense + sparse hit cannot answer a ColBERT request (it has no rows), and a ColBERT entry
    does not crowd the dense tier."""
    encoder, service = _colbert_service()
    service.embed_items([EmbedItem("token", "passage")])
    calls = encoder.calls
    out = service.embed_items([EmbedItem("token", "passage", colbert=True)])[0]
    assert encoder.calls == calls + 1 and out["cached"] is None and out["colbert"].shape == (1, 16)
    assert service.embed_items([EmbedItem("token", "passage")])[0]["colbert"] is None
    assert service.cache.stats.lru_hits == 1 and service.colbert_cache.stats.misses == 1


def test_the_colbert_tier_is_bounded_by_bytes() -> None:
    _, service = _colbert_service(colbert_lru_mb=1)
    text = " ".join(f"w{i}" for i in range(2000))  # 2000 rows x 16 dims x 2 bytes = 64 KB
    one = service.embed_items([EmbedItem(f"{text} {n}", "passage", colbert=True) for n in range(40)])
    size = entry_bytes((one[0]["dense"], one[0]["sparse"], one[0]["colbert"]))
    lru = service.colbert_cache._lru
    assert lru.currsize <= lru.maxsize == 2**20 and len(lru) == 2**20 // size < 40
    huge = service.embed_items([EmbedItem(" ".join(f"x{i}" for i in range(40_000)), "passage", True)])
    assert huge[0]["colbert"].shape == (40_000, 16), "larger than the budget: served, not kept"
    assert lru.currsize <= lru.maxsize


def test_colbert_cache_off() -> None:
    encoder, service = _colbert_service(colbert_lru_mb=0, colbert_in_redis=False)
    assert service.colbert_cache is None
    item = EmbedItem("token", "query", colbert=True)
    service.embed_items([item])
    calls = encoder.calls
    assert service.embed_items([item])[0]["cached"] is None and encoder.calls == calls + 1


def test_from_memory_answers_only_what_the_in_process_tier_holds() -> None:
    """The Embedder answers these on its event loop: no Redis round trip, no model, counted once."""
    encoder, service = _colbert_service()
    query, passage = EmbedItem("トークン", "query"), EmbedItem("token ttl", "passage", colbert=True)
    assert service.from_memory([query, passage]) == [None, None]
    assert service.cache.stats.lru_hits == 0 and service.cache.stats.misses == 0, "misses counted later"
    computed = service.embed_items([query, passage])
    calls = encoder.calls
    hits = service.from_memory([query, passage, EmbedItem("token ttl", "passage")])
    assert encoder.calls == calls
    assert hits[2] is None, "a ColBERT entry does not answer a dense + sparse request"
    for hit, fresh in zip(hits[:2], computed, strict=True):
        assert hit is not None and hit["cached"] == "lru" and hit["tokens"] == 0
        assert np.array_equal(hit["dense"], fresh["dense"]) and hit["sparse"] == fresh["sparse"]
    assert hits[0]["colbert"] is None and np.array_equal(hits[1]["colbert"], computed[1]["colbert"])
    assert service.cache.stats.lru_hits == 1 and service.colbert_cache.stats.lru_hits == 1
