"""MilvusStore against a real Milvus Lite server (started once for this module, in a tmp dir)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from serve_app.core.store import (
    SPARSE_PLACEHOLDER_TOKEN,
    ChunkRecord,
    MilvusStore,
    StoreUnavailable,
    build_filter,
)
from serve_app.devtools.local_stack import free_port, milvus_lite_server

pytestmark = pytest.mark.integration

DIM = 8
N = 60
SHARED_TOKEN = 50
KINDS = ("spec", "glossary", "api", "design", "faq", "other")


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def _record(i: int, dense: np.ndarray, **over) -> ChunkRecord:
    base = dict(
        chunk_id=f"doc{i // 3}#{i % 3}",
        doc_id=f"doc{i // 3}",
        version=1,
        ordinal=i % 3,
        text=f"chunk {i} 本文",
        title=f"Doc {i // 3}",
        title_path=[f"Doc {i // 3}", f"sec {i % 3}"],
        lang="ja" if i % 2 else "en",
        kind=KINDS[i % len(KINDS)],
        source=f"docs/doc{i // 3}.md",
        tags=["even"] if i % 2 == 0 else ["odd", "x"],
        updated_at=1_700_000_000 + i,
        content_hash=f"h{i}",
        is_current=i % 10 != 9,
        dense=dense,
        # token 100+i is this chunk's own heavy token, SHARED_TOKEN is light and everywhere
        sparse={100 + i: 0.9, SHARED_TOKEN: 0.05 + 0.001 * i},
    )
    base.update(over)
    return ChunkRecord(**base)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[str, Path, int]]:
    data_dir = tmp_path_factory.mktemp("milvus")
    port = free_port()
    t0 = time.perf_counter()
    with milvus_lite_server(data_dir, port=port) as uri:
        print(f"\nmilvus-lite ready in {time.perf_counter() - t0:.2f}s at {uri}")
        yield uri, data_dir, port


@pytest.fixture(scope="module")
def corpus() -> list[ChunkRecord]:
    rng = np.random.default_rng(7)
    return [_record(i, _unit(rng)) for i in range(N)]


@pytest.fixture(scope="module")
def store(server, corpus) -> Iterator[MilvusStore]:
    uri, _, _ = server
    s = MilvusStore(uri, "chunks", dim=DIM, timeout_s=5.0)
    s.ensure_collection()
    t0 = time.perf_counter()
    assert s.upsert(corpus) == N
    s.flush()
    print(f"\nupserted+flushed {N} rows in {time.perf_counter() - t0:.3f}s")
    yield s
    s.close()


def _by_id(corpus: list[ChunkRecord], chunk_id: str) -> ChunkRecord:
    return next(r for r in corpus if r.chunk_id == chunk_id)


# ------------------------------------------------------------------------------------- collections


def test_ensure_collection_is_idempotent_and_aliased(server):
    uri, _, _ = server
    s = MilvusStore(uri, "idem", dim=DIM, timeout_s=5.0)
    physical = s.ensure_collection()
    assert physical.startswith("idem_") and len(physical) == len("idem_") + 14
    assert s.ensure_collection() == physical
    assert MilvusStore(uri, "idem", dim=DIM).ensure_collection() == physical
    client = s._get_client()
    assert client.describe_alias("idem", timeout=5)["collection_name"] == physical
    assert s.count() == 0

    with pytest.raises(ValueError, match=r"dim 8.*dim 16"):
        MilvusStore(uri, "idem", dim=16).ensure_collection()
    s.close()


def test_real_collection_with_the_alias_name_is_used_as_is(server):
    uri, _, _ = server
    plain = MilvusStore(uri, "plain", dim=DIM).create_physical(suffix="coll")
    assert plain == "plain_coll"
    s = MilvusStore(uri, "plain_coll", dim=DIM)
    assert s.ensure_collection() == "plain_coll"
    assert s.ensure_collection() == "plain_coll"
    with pytest.raises(ValueError, match="real collection"):
        s.switch_alias(plain)


# --------------------------------------------------------------------------------- writes and reads


def test_upsert_get_count(store, corpus):
    assert store.count() == N
    assert store.count(build_filter()) == sum(r.is_current for r in corpus)
    rows = store.get(["doc2#1", "missing", "doc0#0"])
    assert [r["chunk_id"] for r in rows] == ["doc2#1", "doc0#0"]
    row = rows[0]
    rec = _by_id(corpus, "doc2#1")
    assert row["text"] == rec.text and row["title_path"] == rec.title_path and row["tags"] == rec.tags
    assert row["version"] == 1 and row["updated_at"] == rec.updated_at and row["is_current"] is True
    assert "dense" not in row and "sparse" not in row
    got = store.query('doc_id == "doc3"', limit=10, fields=["chunk_id", "ordinal"])
    assert sorted(r["ordinal"] for r in got) == [0, 1, 2]


def test_upsert_replaces_by_chunk_id(store, corpus):
    rec = _by_id(corpus, "doc4#0")
    changed = ChunkRecord(**{**{f: getattr(rec, f) for f in rec.__slots__}, "text": "changed", "version": 2})
    assert store.upsert([changed, changed]) == 1
    store.flush()
    assert store.count() == N
    assert store.get(["doc4#0"])[0]["text"] == "changed"
    assert store.upsert([rec]) == 1
    store.flush()


def test_search_dense_returns_nearest_first(store, corpus):
    target = corpus[12]
    query = np.asarray(target.dense) + 0.01
    t0 = time.perf_counter()
    hits = store.search_dense(query, limit=5, expr=None)
    elapsed = time.perf_counter() - t0
    assert hits[0].chunk_id == target.chunk_id
    assert hits[0].score == pytest.approx(1.0, abs=0.01)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert hits[0].fields["doc_id"] == target.doc_id and "dense" not in hits[0].fields
    print(f"\nsearch_dense after flush: {elapsed * 1000:.1f} ms")


def test_search_sparse_ranks_heaviest_shared_token_first(store, corpus):
    target = corpus[20]
    hits = store.search_sparse({100 + 20: 1.0, SHARED_TOKEN: 0.2}, limit=5)
    assert hits[0].chunk_id == target.chunk_id
    assert hits[0].score > hits[1].score
    assert len(hits) == 5  # the shared token reaches the others


def test_hybrid_search(store, corpus):
    target = corpus[30]
    for ranker in ("rrf", "weighted"):
        hits = store.hybrid_search(target.dense, {130: 1.0}, limit=5, ranker=ranker)
        assert hits[0].chunk_id == target.chunk_id, ranker
        assert hits[0].fields["title"] == target.title
    # sparse leg disagrees with dense: with RRF both candidates show up
    hits = store.hybrid_search(target.dense, {100 + 40: 1.0}, limit=5)
    ids = [h.chunk_id for h in hits]
    assert target.chunk_id in ids[:2] and corpus[40].chunk_id in ids[:2]
    # no usable sparse weights -> dense alone
    hits = store.hybrid_search(target.dense, {}, limit=3, expr=build_filter())
    assert hits[0].chunk_id == target.chunk_id


def test_filters(store, corpus):
    stale = corpus[19]  # i % 10 == 9 -> is_current False
    assert not stale.is_current
    assert store.search_dense(stale.dense, limit=1)[0].chunk_id == stale.chunk_id
    hits = store.search_dense(stale.dense, limit=10, expr=build_filter())
    assert stale.chunk_id not in {h.chunk_id for h in hits}
    assert all(h.fields["is_current"] for h in hits)

    hits = store.search_dense(corpus[0].dense, limit=20, expr=build_filter(kinds=["api", "faq"]))
    assert hits and {h.fields["kind"] for h in hits} <= {"api", "faq"}

    hits = store.search_sparse({SHARED_TOKEN: 1.0}, limit=50, expr=build_filter(tags=["odd"]))
    assert hits and all("odd" in h.fields["tags"] for h in hits)
    assert store.count(build_filter(current_only=False, tags=["even"])) == N // 2
    assert store.count(build_filter(current_only=False, tags=["even", "x"])) == N
    assert store.count(build_filter(current_only=False, tags=["od", "ev", "X"])) == 0
    assert store.count('array_contains(tags, "odd")') == N // 2  # raw ARRAY filters work as well
    assert store.count(build_filter(current_only=False, doc_ids=["doc1", "doc2"], langs=["ja"])) == 3


def test_tag_filter_is_exact_for_wildcards_and_japanese(store):
    rng = np.random.default_rng(3)
    tags = [["a_b"], ["axb"], ["50%"], ["設計", "a|b"]]
    extra = [
        _record(3000 + i, _unit(rng), chunk_id=f"tag#{i}", doc_id="tagdoc", tags=t)
        for i, t in enumerate(tags)
    ]
    store.upsert(extra)
    store.flush()
    try:

        def ids(*wanted: str) -> list[str]:
            expr = build_filter(doc_ids=["tagdoc"], tags=list(wanted), current_only=False)
            return sorted(r["chunk_id"] for r in store.query(expr, limit=10, fields=["chunk_id"]))

        assert ids("a_b") == ["tag#0"]
        assert ids("50%") == ["tag#2"]
        assert ids("5") == []
        assert ids("設計") == ["tag#3"] and ids("a|b") == ["tag#3"] and ids("a") == []
        assert ids("axb", "設計") == ["tag#1", "tag#3"]
    finally:
        store.delete(expr='doc_id == "tagdoc"')
        store.flush()


def test_bad_filter_is_a_value_error(store):
    with pytest.raises(ValueError, match="Milvus rejected"):
        store.count("is_current = = true")
    with pytest.raises(ValueError):
        store.search_dense([1.0] + [0.0] * (DIM - 1), limit=3, expr="nosuchfield == 1")
    store.ping()  # the client is still usable


def test_delete_by_expr_and_ids(store):
    rng = np.random.default_rng(1)
    extra = [
        _record(1000 + i, _unit(rng), chunk_id=f"tmp#{i}", doc_id="tmpdoc", sparse={5000 + i: 1.0})
        for i in range(4)
    ]
    assert store.upsert(extra) == 4
    store.flush()
    assert store.count('doc_id == "tmpdoc"') == 4
    assert store.delete(chunk_ids=["tmp#0", "nope"]) == 1
    assert store.delete(expr='doc_id == "tmpdoc"') == 3
    assert store.delete(expr='doc_id == "tmpdoc"') == 0
    store.flush()
    assert store.get([r.chunk_id for r in extra]) == []
    assert store.count() == N


def test_empty_sparse_record_inserts_and_never_hits_sparse_search(store):
    rec = _record(2000, np.ones(DIM, dtype=np.float32), chunk_id="nosparse#0", doc_id="nosparse", sparse={})
    assert store.upsert([rec]) == 1
    store.flush()
    try:
        assert store.get(["nosparse#0"])[0]["doc_id"] == "nosparse"
        everything = {t: 1.0 for t in range(0, 200)} | {SPARSE_PLACEHOLDER_TOKEN: 5.0}
        hits = store.search_sparse(everything, limit=100)
        assert hits and "nosparse#0" not in {h.chunk_id for h in hits}
        assert store.search_sparse({SPARSE_PLACEHOLDER_TOKEN: 1.0}, limit=5) == []
        assert store.search_dense(rec.dense, limit=1)[0].chunk_id == "nosparse#0"
    finally:
        store.delete(chunk_ids=["nosparse#0"])
        store.flush()


# ------------------------------------------------------------------------------------------ aliases


def test_switch_alias(server, corpus):
    uri, _, _ = server
    s = MilvusStore(uri, "blue", dim=DIM, timeout_s=5.0)
    first = s.ensure_collection()
    s.upsert(corpus[:10])
    s.flush()
    second = s.create_physical()
    assert second != first and second.startswith("blue_")
    assert s.count() == 10  # readers still on the first collection
    green = [_record(500 + i, np.asarray(corpus[i].dense), chunk_id=f"green#{i}") for i in range(5)]
    assert s.upsert(green, into=second) == 5
    s.flush()
    assert s.switch_alias(second) == first
    assert s.count() == 5
    hits = s.search_dense(corpus[0].dense, limit=3)
    assert hits[0].chunk_id == "green#0"
    assert s.switch_alias(second) == second  # no-op switch reports the same target
    assert s.ensure_collection() == second
    s.close()


# ---------------------------------------------------------------------------------------- failures


def test_unavailable_when_port_is_closed():
    s = MilvusStore(f"http://127.0.0.1:{free_port()}", "chunks", dim=DIM, timeout_s=1.0)
    for call in (s.ping, lambda: s.search_dense([1.0] * DIM, limit=3), s.ensure_collection):
        t0 = time.perf_counter()
        with pytest.raises(StoreUnavailable):
            call()
        assert time.perf_counter() - t0 < 1.0 + 2.0


def test_reconnects_after_server_restart(tmp_path):
    port = free_port()
    with milvus_lite_server(tmp_path / "m", port=port) as uri:
        s = MilvusStore(uri, "restart", dim=DIM, timeout_s=2.0)
        s.ensure_collection()
        s.upsert([_record(0, np.ones(DIM, dtype=np.float32))])
        s.flush()
    t0 = time.perf_counter()
    with pytest.raises(StoreUnavailable):
        s.count()
    assert time.perf_counter() - t0 < 2.0 + 2.0
    with milvus_lite_server(tmp_path / "m", port=port):
        assert s.count() == 1  # same store object, data survived the restart
    s.close()
