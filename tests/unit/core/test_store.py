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
    MilvusStore,
    StoreUnavailable,
    _classify,
    _clean_sparse,
    build_filter,
    quote,
    record_to_row,
    tag_key,
    truncate_utf8,
)


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


def test_build_filter_default_is_current_only():
    assert build_filter() == "is_current == true"
    assert build_filter(current_only=False) is None


def test_build_filter_sources():
    assert build_filter(current_only=False, sources=["a.md", "b.md"]) == 'source in ["a.md", "b.md"]'


def test_build_filter_combines_with_and():
    expr = build_filter(doc_ids=["a", "b"], kinds=["spec"], langs=["ja", "en"], tags=["x"])
    assert expr == (
        'is_current == true and doc_id in ["a", "b"] and kind == "spec" and lang in ["ja", "en"]'
        ' and tags_key like "%|78|%"'
    )


def test_build_filter_multiple_tags_match_any():
    assert build_filter(current_only=False, tags=["a", "b", "a"]) == (
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
    assert build_filter(current_only=False, kinds="api") == 'kind == "api"'


def test_build_filter_escapes_quotes_and_backslashes():
    expr = build_filter(current_only=False, doc_ids=['a"b\\c'])
    assert expr == 'doc_id == "a\\"b\\\\c"'
    # an injection attempt stays inside the literal
    evil = 'x" or kind != "'
    assert build_filter(current_only=False, doc_ids=[evil]) == 'doc_id == "x\\" or kind != \\""'


def test_quote_escapes_control_characters_and_keeps_japanese():
    assert quote("改行\nタブ\t") == '"改行\\nタブ\\t"'


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
        (MilvusException(1, ""), "other"),
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

    other = _FakeClient(MilvusException(1, "boom"))
    store._client = other
    with pytest.raises(MilvusException):
        store.ping()
