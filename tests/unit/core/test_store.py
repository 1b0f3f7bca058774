"""Pure parts of serve_app.core.store: filters, row conversion, error mapping. No server needed."""

from __future__ import annotations

import pickle

import grpc
import numpy as np
import pytest
from pymilvus.exceptions import MilvusException, ParamError

from serve_app.core.store import (
    SPARSE_PLACEHOLDER_TOKEN,
    TEXT_MAX,
    ChunkRecord,
    Clause,
    Filter,
    MilvusStore,
    Store,
    StoreUnavailable,
    _classify,
    _clean_sparse,
    and_,
    build_filter,
    chunk_ids_filter,
    doc_ids_filter,
    doc_version_filter,
    filter_expr,
    first_chunks_filter,
    make_store,
    quote,
    record_to_row,
    scope_filter,
    tag_key,
    truncate_utf8,
)
from serve_app.settings import DataScope


def _record(**over) -> ChunkRecord:
    base = dict(
        chunk_id="doc1#0",
        doc_id="doc1",
        version=3,
        ordinal=0,
        text="本文です。",
        title="基本設計書",
        title_path=["基本設計書", "2. 画面"],
        lang="ja",
        kind="design",
        source="docs/design.md",
        tags=["screen"],
        updated_at=1_700_000_000,
        content_hash="abc",
        is_current=True,
        dense=[3.0, 4.0, 0.0, 0.0],
        sparse={5: 0.5},
    )
    base.update(over)
    return ChunkRecord(**base)


# ------------------------------------------------------------------------------------- build_filter


def _expr(**kw) -> str | None:
    """``build_filter(**kw)`` as the Milvus string (``None`` when it constrains nothing)."""
    flt = build_filter(**kw)
    return None if flt is None else flt.expr()


def test_build_filter_default_is_current_only():
    assert _expr() == "is_current == true"
    assert _expr(current_only=False) is None


def test_build_filter_sources():
    assert _expr(current_only=False, sources=["a.md", "b.md"]) == 'source in ["a.md", "b.md"]'


def test_build_filter_combines_with_and():
    expr = _expr(doc_ids=["a", "b"], kinds=["spec"], langs=["ja", "en"], tags=["x"])
    assert expr == (
        'is_current == true and doc_id in ["a", "b"] and kind == "spec" and lang in ["ja", "en"]'
        ' and tags_key like "%|78|%"'
    )


def test_build_filter_multiple_tags_match_any():
    assert _expr(current_only=False, tags=["a", "b", "a"]) == (
        '(tags_key like "%|61|%" or tags_key like "%|62|%")'
    )


def test_tag_key_is_wildcard_free_and_exact():
    row = record_to_row(_record(tags=["a_b", "50%", "設計", "a|b", "a_b"]), dim=4)
    assert row["tags"] == ["a_b", "50%", "設計", "a|b", "a_b"]
    key = row["tags_key"]
    assert key == "".join(tag_key(t) for t in ["a_b", "50%", "設計", "a|b"])
    assert set(key) <= set("0123456789abcdef|")
    for tag in ["a_b", "50%", "設計", "a|b"]:
        assert tag_key(tag) in key
    for other in ["a", "b", "axb", "50"]:
        assert tag_key(other) not in key


def test_build_filter_empty_and_none_mean_no_constraint():
    assert build_filter(current_only=False, doc_ids=[], kinds=None, langs=(), tags=[]) is None


def test_build_filter_accepts_a_single_string():
    assert _expr(current_only=False, kinds="api") == 'kind == "api"'


def test_build_filter_escapes_quotes_and_backslashes():
    expr = _expr(current_only=False, doc_ids=['a"b\\c'])
    assert expr == 'doc_id == "a\\"b\\\\c"'
    # an injection attempt stays inside the literal
    evil = 'x" or kind != "'
    assert _expr(current_only=False, doc_ids=[evil]) == 'doc_id == "x\\" or kind != \\""'


def test_quote_escapes_control_characters_and_keeps_japanese():
    assert quote("改行\nタブ\t") == '"改行\\nタブ\\t"'


# ------------------------------------------------------------------------------- filter builders
# Each builder renders exactly the expression the hand-written f-string it replaced produced
# (modulo ``in [one]`` -> ``== one``), so what Milvus receives is unchanged.


def test_doc_and_chunk_id_filters():
    assert doc_ids_filter(["a", "b", "a"]).expr() == 'doc_id in ["a", "b"]'
    assert doc_ids_filter(["a"]).expr() == 'doc_id == "a"'
    assert doc_ids_filter("a").expr() == 'doc_id == "a"'
    assert chunk_ids_filter(iter(["c#0", "c#1"])).expr() == 'chunk_id in ["c#0", "c#1"]'
    # unlike build_filter, an empty id list matches nothing (never "everything")
    nothing = doc_ids_filter([])
    assert nothing.expr() == "doc_id in []"
    assert not nothing.matches({"doc_id": "a"})


def test_doc_version_filter():
    assert doc_version_filter('d"1', 3).expr() == 'doc_id == "d\\"1" and version == 3'
    assert doc_version_filter("d", 3, op="<").expr() == 'doc_id == "d" and version < 3'
    assert doc_version_filter("d", 3, op="!=").expr() == 'doc_id == "d" and version != 3'
    with pytest.raises(ValueError, match="version comparison"):
        doc_version_filter("d", 3, op=">")  # type: ignore[arg-type]
    assert first_chunks_filter().expr() == "ordinal == 0"


def test_filters_combine_without_parentheses():
    pinned = doc_version_filter("d", 2)
    lang = build_filter(current_only=False, langs="ja")
    assert lang is not None
    assert (lang & pinned).expr() == 'lang == "ja" and doc_id == "d" and version == 2'
    assert and_(None, pinned) == pinned
    assert and_(lang, None, pinned) == lang & pinned
    assert and_() is None and and_(None, None) is None and and_(Filter()) is None
    with pytest.raises(TypeError):
        pinned & "version == 2"  # type: ignore[operator]
    tags = build_filter(current_only=False, tags=["a", "b"])
    assert tags is not None
    assert (tags & pinned).expr().startswith('(tags_key like "%|61|%" or tags_key like "%|62|%") and ')


def test_filters_are_values():
    assert doc_ids_filter(["a"]) == Filter.eq("doc_id", "a")
    assert hash(build_filter(tags=["x"])) == hash(build_filter(tags=["x"]))
    assert str(doc_version_filter("d", 1)) == doc_version_filter("d", 1).expr()
    assert Filter().expr() == ""


def test_atoms_for_any_collection():
    # the meta store's filters (its collection has ``key`` and ``kind``)
    assert Filter.eq("key", "failed:a\nb").expr() == 'key == "failed:a\\nb"'
    assert (Filter.eq("kind", "run") & Filter.prefix("key", 'run:x"')).expr() == (
        'kind == "run" and key like "run:x\\"%"'
    )
    assert Filter.isin("key", ["a", "b"]).expr() == 'key in ["a", "b"]'
    assert Filter.ne("version", 2).expr() == "version != 2"
    assert Filter.lt("version", 2).expr() == "version < 2"
    assert Filter.eq("is_current", False).expr() == "is_current == false"
    assert Filter.eq("version", np.int64(3)).expr() == "version == 3", "a numpy int is a number, not text"
    with pytest.raises(TypeError, match="literal"):
        Filter.eq("version", 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="%"):
        Filter.prefix("key", "50%")
    with pytest.raises(ValueError, match="field name"):
        Filter.eq("kind == 1 or kind", "x")  # field names are never a way in
    with pytest.raises(ValueError, match="operator"):
        Clause("kind", "like", "x")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Clause("kind", "in", "x")
    with pytest.raises(ValueError, match="at least one"):
        Filter.any_tag(["", ""])


def test_matches_evaluates_what_milvus_would():
    row = record_to_row(_record(tags=["screen", "設計"], version=3, kind="design"), dim=4)
    assert build_filter(kinds=["design", "api"], langs="ja", tags=["設計"]).matches(row)
    assert not build_filter(tags=["scree"]).matches(row), "tags match exactly"
    assert build_filter(tags=["nope", "screen"]).matches(row), "any of the tags"
    assert doc_version_filter("doc1", 3).matches(row)
    assert doc_version_filter("doc1", 4, op="<").matches(row)
    assert not doc_version_filter("doc1", 3, op="!=").matches(row)
    assert not first_chunks_filter().matches({**row, "ordinal": 2})
    assert Filter.prefix("source", "docs/").matches(row) and not Filter.prefix("source", "doc/").matches(row)
    assert not build_filter().matches({**row, "is_current": False})
    # without the hidden mirror, the tags themselves are used (same meaning)
    plain = {k: v for k, v in row.items() if k != "tags_key"}
    assert build_filter(tags=["screen"]).matches(plain)
    with pytest.raises(ValueError, match="lacks"):
        Filter.eq("title", "x").matches({"chunk_id": "c"})
    assert Filter().matches({})


def test_filter_expr_accepts_filters_strings_and_none():
    assert filter_expr(None) == ""
    assert filter_expr('array_contains(tags, "x")') == 'array_contains(tags, "x")'
    assert filter_expr(doc_ids_filter(["a"])) == 'doc_id == "a"'
    with pytest.raises(TypeError):
        filter_expr(42)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------- row conversion


def test_truncate_utf8_never_splits_a_character():
    text = "あ" * 10  # 3 bytes each
    cut = truncate_utf8(text, 10)
    assert cut == "あ" * 3
    assert len(cut.encode()) <= 10
    assert truncate_utf8("short", 10) == "short"


def test_record_to_row_truncates_text_and_normalizes_dense():
    row = record_to_row(_record(text="漢" * 30_000), dim=4)
    assert len(row["text"].encode()) <= TEXT_MAX
    assert row["text"] == "漢" * (TEXT_MAX // 3)
    assert row["dense"] == pytest.approx([0.6, 0.8, 0.0, 0.0])
    assert row["sparse"] == {5: 0.5}
    assert row["is_current"] is True
    assert row["title_path"] == ["基本設計書", "2. 画面"]


def test_record_to_row_accepts_numpy_dense():
    row = record_to_row(_record(dense=np.array([0, 2, 0, 0], dtype=np.float64)), dim=4)
    assert row["dense"] == [0.0, 1.0, 0.0, 0.0]
    assert all(isinstance(v, float) for v in row["dense"])


def test_record_to_row_caps_arrays():
    row = record_to_row(_record(tags=[f"t{i}" for i in range(100)], title_path=["x" * 2000]), dim=4)
    assert len(row["tags"]) == 64
    assert len(row["title_path"][0]) == 512


def test_record_to_row_rejects_wrong_dim_and_long_primary_key():
    with pytest.raises(ValueError, match=r"dimension 4.*expects 8"):
        record_to_row(_record(), dim=8)
    with pytest.raises(ValueError, match="chunk_id"):
        record_to_row(_record(chunk_id="x" * 129), dim=4)
    with pytest.raises(ValueError, match="NaN"):
        record_to_row(_record(dense=[float("nan"), 1, 0, 0]), dim=4)


def test_empty_sparse_row_gets_placeholder_and_queries_strip_it():
    row = record_to_row(_record(sparse={}), dim=4)
    assert list(row["sparse"]) == [SPARSE_PLACEHOLDER_TOKEN]
    assert 0 < row["sparse"][SPARSE_PLACEHOLDER_TOKEN] < 1e-6
    # zero / negative / non-finite weights count as empty
    assert list(_clean_sparse({3: 0.0, 4: -1.0, 5: float("nan")}, for_query=False)) == [1]
    assert _clean_sparse({SPARSE_PLACEHOLDER_TOKEN: 1.0, 7: 0.2}, for_query=True) == {7: 0.2}
    assert _clean_sparse({}, for_query=True) == {}
    assert _clean_sparse({np.int64(9): np.float32(0.5)}, for_query=True) == {9: 0.5}


# ------------------------------------------------------------------------------------ error mapping


class _Rpc(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "boom"


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (MilvusException(2, "Fail connecting to server on 127.0.0.1:1"), "unavailable"),
        (MilvusException(grpc.StatusCode.UNAVAILABLE, "[query] Retry timeout: 1s"), "unavailable"),
        (MilvusException(100, "collection 'x' does not exist"), "unavailable"),
        (_Rpc(grpc.StatusCode.DEADLINE_EXCEEDED), "unavailable"),
        (_Rpc(grpc.StatusCode.INVALID_ARGUMENT), "invalid"),
        (ConnectionRefusedError(), "unavailable"),
        (TimeoutError(), "unavailable"),
        (MilvusException(6, "unexpected character '=' at column 12"), "invalid"),
        (MilvusException(1100, "failed to create query plan: cannot parse expression"), "invalid"),
        (ParamError(message="bad"), "invalid"),
        # an unexpected Milvus failure is the store's (503 with its reason), never a 500
        (MilvusException(1, "Unexpected error, message=<'scipy.sparse'>"), "unavailable"),
        (KeyError("x"), "other"),
    ],
)
def test_classify(exc, kind):
    assert _classify(exc) == kind


# ------------------------------------------------------------------------------------- store object


def test_store_is_lazy_and_picklable():
    store = MilvusStore("http://127.0.0.1:1", "specrag", dim=8, token="secret")
    clone = pickle.loads(pickle.dumps(store))
    assert clone.collection == "specrag" and clone.dim == 8
    assert "secret" not in repr(clone)


def test_store_validates_arguments_before_connecting():
    with pytest.raises(ValueError):
        MilvusStore("http://127.0.0.1:1", "bad-name", dim=8)
    store = MilvusStore("http://127.0.0.1:1", "specrag", dim=8)
    with pytest.raises(ValueError, match="exactly one"):
        store.delete()
    with pytest.raises(ValueError, match="limit"):
        store.search_dense([0.0] * 8, limit=0)
    assert store.search_sparse({}, limit=5) == []  # no Milvus call, so no StoreUnavailable
    assert store.search_sparse({SPARSE_PLACEHOLDER_TOKEN: 1.0}, limit=5) == []


def test_store_unavailable_is_a_runtime_error():
    assert issubclass(StoreUnavailable, RuntimeError)


class _FakeClient:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc
        self.closed = False

    def get_server_version(self, timeout=None):
        raise self.exc

    def query(self, *args, **kwargs):
        raise self.exc

    def close(self) -> None:
        self.closed = True


def test_call_maps_errors_and_drops_only_broken_clients():
    store = MilvusStore("http://127.0.0.1:1", "specrag", dim=8)

    broken = _FakeClient(MilvusException(2, "Fail connecting to server"))
    store._client = broken
    with pytest.raises(StoreUnavailable, match="Fail connecting"):
        store.ping()
    assert broken.closed and store._client is None

    bad_expr = _FakeClient(MilvusException(6, "unexpected character '=' at column 12"))
    store._client = bad_expr
    with pytest.raises(ValueError, match="unexpected character"):
        store.count("is_current = = true")
    assert store._client is bad_expr and not bad_expr.closed

    missing = _FakeClient(MilvusException(100, "collection 'specrag' does not exist"))
    store._client = missing
    with pytest.raises(StoreUnavailable, match="does not exist"):
        store.count()
    assert store._client is missing and not missing.closed

    other = _FakeClient(MilvusException(1, "boom"))  # an unexpected Milvus error: still a 503
    store._client = other
    with pytest.raises(StoreUnavailable, match="boom"):
        store.ping()

    bug = _FakeClient(KeyError("x"))  # not Milvus: our bug, raised as itself (a 500, never hidden)
    store._client = bug
    with pytest.raises(KeyError):
        store.ping()


class _RecordingClient:
    """Answers every call with an empty result and remembers the filters it was sent."""

    def __init__(self) -> None:
        self.filters: list[str] = []
        self.described: list[str] = []

    def query(self, name, filter="", output_fields=None, limit=None, timeout=None):
        self.filters.append(filter)
        return [{"count(*)": 2}] if output_fields == ["count(*)"] else []

    def search(self, name, data, anns_field, filter="", **kwargs):
        self.filters.append(filter)
        return [[]]

    def delete(self, name, filter="", timeout=None):
        self.filters.append(f"delete: {filter}")

    def describe_collection(self, name, timeout=None):
        self.described.append(name)
        return {"collection_name": f"{name}_20240101000000", "fields": []}

    def close(self) -> None:
        pass


def test_store_methods_send_the_rendered_filter():
    store = MilvusStore("http://127.0.0.1:1", "specrag", dim=4)
    client = store._client = _RecordingClient()
    store.count(doc_ids_filter(["a"]))
    store.count('kind == "api"')  # a hand-written expression goes as it is
    store.count()
    store.query(doc_version_filter("a", 2), fields=["chunk_id"])
    store.search_dense([1.0, 0, 0, 0], limit=3, expr=build_filter(kinds="api"))
    store.search_sparse({7: 1.0}, limit=3, expr=None)
    assert store.delete(expr=doc_version_filter("a", 2, op="<")) == 2
    assert store.delete(chunk_ids=["c#0", "c#1"]) == 2
    assert store.doc_versions(["a", "b"]) == {}
    assert client.filters == [
        'doc_id == "a"',
        'kind == "api"',
        "",
        'doc_id == "a" and version == 2',
        'is_current == true and kind == "api"',
        "",
        'doc_id == "a" and version < 2',  # the count taken right before deleting
        'delete: doc_id == "a" and version < 2',
        'chunk_id in ["c#0", "c#1"]',
        'delete: chunk_id in ["c#0", "c#1"]',
        'ordinal == 0 and doc_id in ["a", "b"]',
    ]
    with pytest.raises(ValueError, match="empty expr"):
        store.delete(expr=Filter())


def test_describe_and_execute_are_the_public_way_to_raw_calls():
    store = MilvusStore("http://127.0.0.1:1", "specrag", dim=4)
    client = store._client = _RecordingClient()
    assert store.describe()["collection_name"] == "specrag_20240101000000"
    assert store.describe("specrag_x")["collection_name"] == "specrag_x_20240101000000"
    assert client.described == ["specrag", "specrag_x"]
    assert store.execute("raw", lambda c: c is client)
    store._client = _FakeClient(MilvusException(2, "Fail connecting to server"))
    with pytest.raises(StoreUnavailable, match="Milvus raw failed"):
        store.execute("raw", lambda c: c.query("x"))
    store._client = _FakeClient(MilvusException(6, "unexpected character"))
    with pytest.raises(ValueError, match="Milvus rejected raw"):
        store.execute("raw", lambda c: c.query("x"))


def test_make_store_uses_the_milvus_settings():
    from serve_app.settings import Settings

    settings = Settings(
        milvus={
            "uri": "http://milvus:19530",
            "collection": "docs",
            "token": "t0k",
            "timeout_s": 4.0,
            "search_ef": 64,
        }
    )
    store = make_store(settings, 8)
    assert isinstance(store, MilvusStore) and isinstance(store, Store)
    assert (store.uri, store.collection, store.dim, store.timeout_s) == (
        "http://milvus:19530",
        "docs",
        8,
        4.0,
    )
    assert store.search_ef == 64 and store._token == "t0k"
    assert store.hnsw_m == settings.milvus.hnsw_m


def test_a_data_scope_says_the_same_to_milvus_and_in_python() -> None:
    """``scope_filter`` (the Milvus expression and its in-memory twin) and ``DataScope.allows``
    agree on every combination of sources, kinds and tags."""
    scope = DataScope(sources=["team-a/", "shared/"], kinds=["spec", "api"], tags=["public", "x"])
    flt = scope_filter(scope)
    assert flt is not None and flt.expr() == (
        '(source like "team-a/%" or source like "shared/%") and kind in ["spec", "api"]'
        f' and (tags_key like "%{tag_key("public")}%" or tags_key like "%{tag_key("x")}%")'
    )
    for source in ("team-a/s.md", "shared/s.md", "team-b/s.md", "", "xteam-a/s.md"):
        for kind in ("spec", "api", "faq"):
            for tags in ([], ["public"], ["x", "y"], ["y"]):
                row = {"source": source, "kind": kind, "tags": tags}
                assert flt.matches(row) == scope.allows(source, kind, tags), row
    assert scope_filter(None) is None and scope_filter(DataScope()) is None
    with pytest.raises(ValueError, match="'%'"):
        scope_filter(DataScope(sources=["50%/"]))


class _AliasStub:
    """``resolve`` and ``model_of`` of a store whose alias a test switches."""

    collection = "specrag"

    def __init__(self) -> None:
        self.physical, self.models, self.reads = "specrag_1", {"specrag_1": "m3@a"}, 0

    def resolve(self) -> str:
        from serve_app.core.store import StoreUnavailable

        if self.physical is None:
            raise StoreUnavailable("collection 'specrag' does not exist (yet)")
        return self.physical

    def model_of(self, name: str) -> str | None:
        self.reads += 1
        return self.models.get(name)


def test_model_guard_refuses_a_switched_index_naming_both_models() -> None:
    from serve_app.core.store import IndexModelMismatch, ModelGuard

    store = _AliasStub()
    guard = ModelGuard(store, every_s=3600)  # type: ignore[arg-type]
    assert guard.stale()
    guard.refresh()
    guard.check("m3@a")  # same model: passes
    store.physical, store.models["specrag_2"] = "specrag_2", "m3@b"  # a re-embed switched the alias
    guard.check("m3@a")  # not re-read yet (every_s): still the old reading
    assert not guard.stale() and store.reads == 1
    guard.refresh()
    with pytest.raises(IndexModelMismatch, match=r"'m3@b'.*'m3@a'"):
        guard.check("m3@a")
    store.models["specrag_2"] = None  # a collection from before models were recorded passes
    guard.refresh()
    guard.check("m3@a")
    store.physical = None  # nothing ingested yet: nothing to compare
    guard.refresh()
    guard.check("m3@a")
