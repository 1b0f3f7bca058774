"""The test doubles answer as the real components do: FakeStore as MilvusStore, HashEncoder as an encoder."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from serve_app.core.encoder import lexical_score
from serve_app.core.store import (
    SCALAR_FIELDS,
    SPARSE_PLACEHOLDER_TOKEN,
    ChunkRecord,
    MilvusStore,
    Store,
    build_filter,
    chunk_ids_filter,
    doc_ids_filter,
    doc_version_filter,
)
from serve_app.testing.doubles import FakeStore, HashEncoder


def _row(chunk_id: str, doc: str = "d", version: int = 1, ordinal: int = 0, **over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "chunk_id": chunk_id,
        "doc_id": doc,
        "version": version,
        "ordinal": ordinal,
        "text": chunk_id,
        "title": "",
        "title_path": [],
        "lang": "en",
        "kind": "spec",
        "source": f"{doc}.md",
        "tags": [],
        "updated_at": 100 + version,
        "content_hash": chunk_id,
        "is_current": True,
        "dense": [1.0, 0.0, 0.0],
        "sparse": {10: 1.0},
    }
    row.update(over)
    return row


def test_both_stores_implement_the_protocol():
    assert isinstance(FakeStore(), Store)
    assert isinstance(MilvusStore("http://127.0.0.1:1", "specrag", dim=3), Store)


def test_dense_search_ranks_every_filtered_row_by_cosine():
    store = FakeStore(
        [
            _row("near", dense=[2.0, 0.2, 0.0]),  # normalised on the way in, as MilvusStore.upsert does
            _row("far", dense=[0.0, 1.0, 0.0]),
            _row("opposite", dense=[-1.0, 0.0, 0.0]),
            _row("ja", dense=[1.0, 0.0, 0.0], lang="ja"),
        ]
    )
    hits = store.search_dense([10.0, 0.0, 0.0], limit=10)
    assert [h.chunk_id for h in hits] == ["ja", "near", "far", "opposite"], "a negative score is still a hit"
    assert hits[0].score == pytest.approx(1.0) and hits[-1].score == pytest.approx(-1.0)
    assert [h.chunk_id for h in store.search_dense([1, 0, 0], limit=2)] == ["ja", "near"]
    only_en = store.search_dense([1, 0, 0], limit=10, expr=build_filter(langs="en"))
    assert "ja" not in {h.chunk_id for h in only_en}
    assert store.exprs == [None, None, 'is_current == true and lang == "en"']
    with pytest.raises(ValueError, match="dimension"):
        store.search_dense([1.0, 0.0], limit=1)
    with pytest.raises(ValueError, match="limit"):
        store.search_dense([1.0, 0.0, 0.0], limit=0)


def test_hits_carry_scalar_fields_only_as_fresh_copies():
    store = FakeStore([_row("a", tags=["x"])])
    hit = store.search_dense([1, 0, 0], limit=1)[0]
    assert set(hit.fields) == set(SCALAR_FIELDS), "no vectors, no hidden tags_key"
    hit.fields["tags"].append("mutated")
    hit.fields["doc_updated_at"] = 1
    again = store.search_dense([1, 0, 0], limit=1)[0]
    assert again.fields["tags"] == ["x"] and "doc_updated_at" not in again.fields


def test_sparse_search_scores_shared_tokens_like_the_real_store():
    store = FakeStore(
        [
            _row("both", sparse={10: 0.5, 11: 2.0}),
            _row("one", sparse={10: 3.0}),
            _row("none", sparse={12: 1.0}),
            _row("empty", sparse={}),  # stored with the placeholder, which nothing matches
        ]
    )
    query = {10: 1.0, 11: 0.5, SPARSE_PLACEHOLDER_TOKEN: 5.0}
    hits = store.search_sparse(query, limit=10)
    assert [h.chunk_id for h in hits] == ["one", "both"], "only rows sharing a query token"
    assert hits[1].score == pytest.approx(lexical_score({10: 1.0, 11: 0.5}, {10: 0.5, 11: 2.0}))
    assert store.search_sparse({}, limit=5) == []
    assert store.search_sparse({SPARSE_PLACEHOLDER_TOKEN: 1.0}, limit=5) == []
    assert store.query(chunk_ids_filter(["empty"]), fields=["sparse"])[0]["sparse"] == {
        SPARSE_PLACEHOLDER_TOKEN: pytest.approx(1e-9)
    }


def test_filters_are_evaluated_structurally_and_strings_refused():
    store = FakeStore(
        [
            _row("a", kind="api", tags=["x", "設計"]),
            _row("b", kind="faq", tags=["y"]),
            _row("c", kind="api", is_current=False),
        ]
    )
    hit_ids = lambda flt: sorted(h.chunk_id for h in store.search_dense([1, 0, 0], limit=10, expr=flt))  # noqa: E731
    assert hit_ids(build_filter(kinds="api")) == ["a"]
    assert hit_ids(build_filter(current_only=False, kinds="api")) == ["a", "c"]
    assert hit_ids(build_filter(tags=["設計", "y"])) == ["a", "b"]
    assert hit_ids(build_filter(tags=["設"])) == [], "tags match exactly"
    with pytest.raises(TypeError, match="structured"):
        store.search_dense([1, 0, 0], limit=10, expr='kind == "api"')  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="structured"):
        store.query('doc_id == "d"')  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lacks"):
        FakeStore([{"chunk_id": "x", "dense": [1.0]}]).count(build_filter())


def test_doc_versions_reads_the_ordinal_zero_rows():
    store = FakeStore(
        [
            _row("d1#0", "d1", 1),
            _row("d1#0v2", "d1", 2),
            _row("d1#1v3", "d1", 3, ordinal=1),  # a version without its ordinal-0 row is not published
            _row("d2#0", "d2", 4),
        ]
    )
    assert store.doc_versions() == {"d1": (2, 102), "d2": (4, 104)}
    assert store.doc_versions(["d1", "gone"]) == {"d1": (2, 102)}
    assert store.doc_versions([]) == {}


def test_query_returns_the_asked_fields_and_always_the_chunk_id():
    store = FakeStore([_row("a", "d", 1), _row("b", "d", 2), _row("c", "e", 1)])
    rows = store.query(doc_version_filter("d", 2), fields=["version", "dense"])
    assert rows == [{"chunk_id": "b", "version": 2, "dense": pytest.approx([1.0, 0.0, 0.0])}]
    assert len(store.query(doc_ids_filter(["d", "e"]), limit=2)) == 2
    assert set(store.query(doc_ids_filter("e"))[0]) == set(SCALAR_FIELDS)
    pages = list(store.iter_rows(build_filter(), fields=["doc_id"], batch_size=2))
    assert [len(p) for p in pages] == [2, 1] and pages[0][0] == {"chunk_id": "a", "doc_id": "d"}
    assert store.count(doc_ids_filter([])) == 0 and store.count() == 3


def test_upsert_replaces_by_chunk_id_and_delete_needs_a_constraint():
    store = FakeStore([_row("a"), _row("b")])
    record = ChunkRecord(
        chunk_id="a",
        doc_id="d",
        version=2,
        ordinal=0,
        text="new",
        title="",
        title_path=[],
        lang="en",
        kind="spec",
        source="d.md",
        tags=["t"],
        updated_at=5,
        content_hash="h",
        is_current=True,
        dense=[0.0, 3.0, 0.0],
    )
    assert store.upsert([record, _row("c")]) == 2
    assert [r["chunk_id"] for r in store.rows] == ["b", "a", "c"]
    assert store.query(chunk_ids_filter("a"), fields=["text", "dense"])[0]["dense"] == pytest.approx(
        [0, 1, 0]
    )
    assert store.count(build_filter(tags=["t"])) == 1
    assert store.delete(expr=doc_version_filter("d", 2, op="<")) == 2
    assert store.delete(chunk_ids=["a", "zzz"]) == 1 and store.rows == []
    with pytest.raises(ValueError, match="exactly one"):
        store.delete()


def test_hash_encoder_is_deterministic_and_similar_for_shared_words():
    enc = HashEncoder(dim=16)
    a = enc.encode(["token expiry", "token expiry", "unrelated words"])
    assert a.dense is not None and a.sparse is not None
    assert np.allclose(a.dense[0], a.dense[1]) and np.allclose(np.linalg.norm(a.dense, axis=1), 1.0)
    token = HashEncoder(dim=16).encode(["token"]).dense
    assert token is not None
    assert float(a.dense[0] @ token[0]) > float(a.dense[2] @ token[0]), "a shared word brings texts closer"
    assert a.sparse[0] == a.sparse[1] and not set(a.sparse[0]) & set(a.sparse[2])
    assert enc.calls == 1 and enc.model_key == "hash-encoder@hash|16"
