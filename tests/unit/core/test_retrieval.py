"""Retriever: two stages (pure ANN, then versions + metadata filters), fusion weights, IDF weighting.

``FakeStore`` answers like Milvus from an in-memory table (brute-force dense inner product and
shared-token sparse scores, ``build_filter`` expressions interpreted for the fields used here), so
what is tested is the Retriever's logic; the real Milvus path runs in the integration tests.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import numpy as np
import pytest

from serve_app.core.lexical import IdfTable
from serve_app.core.retrieval import Retriever
from serve_app.core.store import Hit
from serve_app.settings import SearchSettings


def _row(doc: str, version: int, kind: str, lang: str, vec: list[float], tokens: list[int]) -> dict[str, Any]:
    return {
        "chunk_id": f"{doc}-v{version}",
        "doc_id": doc,
        "version": version,
        "ordinal": 0,
        "text": doc,
        "kind": kind,
        "lang": lang,
        "source": f"{doc}.md",
        "tags": [],
        "updated_at": 100 + version,
        "dense": np.asarray(vec, dtype=np.float32) / np.linalg.norm(vec),
        "sparse": dict.fromkeys(tokens, 1.0),
    }


class FakeStore:
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.exprs: list[str | None] = []

    def _ok(self, row: dict[str, Any], expr: str | None) -> bool:
        if not expr:
            return True
        for field, values in re.findall(r'(\w+) (?:==|in) \[?("[^\]]*"|"[^"]*")\]?', expr):
            if row[field] not in re.findall(r'"([^"]*)"', values):
                return False
        return True

    def _hits(self, scored: list[tuple[float, dict[str, Any]]], limit: int) -> list[Hit]:
        scored = sorted((s for s in scored if s[0] > 0), key=lambda s: -s[0])[:limit]
        scalar = lambda r: {k: v for k, v in r.items() if k not in ("dense", "sparse")}  # noqa: E731
        return [Hit(r["chunk_id"], s, scalar(r)) for s, r in scored]

    def search_dense(self, vector: Any, *, limit: int, expr: str | None = None) -> list[Hit]:
        self.exprs.append(expr)
        q = np.asarray(vector, dtype=np.float32)
        return self._hits([(float(q @ r["dense"]) + 1, r) for r in self.rows if self._ok(r, expr)], limit)

    def search_sparse(self, weights: dict[int, float], *, limit: int, expr: str | None = None) -> list[Hit]:
        self.exprs.append(expr)
        scored = [(sum(w for t, w in weights.items() if t in r["sparse"]), r) for r in self.rows]
        return self._hits([(s, r) for s, r in scored if self._ok(r, expr)], limit)

    def doc_versions(self, doc_ids: list[str]) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for r in self.rows:
            if r["doc_id"] in doc_ids and (r["doc_id"] not in out or r["version"] > out[r["doc_id"]][0]):
                out[r["doc_id"]] = (r["version"], r["updated_at"])
        return out

    def query(self, expr: str, *, limit: int, fields: list[str]) -> list[dict[str, Any]]:
        doc = re.search(r'doc_id == "([^"]+)"', expr)
        version = re.search(r"version == (\d+)", expr)
        return [
            {k: r[k] for k in (*fields, "chunk_id") if k in r}
            for r in self.rows
            if doc and r["doc_id"] == doc.group(1) and version and r["version"] == int(version.group(1))
        ]

    def iter_rows(self, expr: str, *, fields: list[str], batch_size: int) -> Any:
        yield [{"sparse": r["sparse"]} for r in self.rows]


def _search(
    retriever: Retriever, vectors: list[dict[str, Any]], **kw: Any
) -> tuple[list[Any], dict[str, Any]]:
    return asyncio.run(retriever.search(vectors, **{"top_k": 3, **kw}))


@pytest.fixture
def store() -> FakeStore:
    rows = [
        _row("spec-a", 1, "spec", "en", [1, 0, 0], [10, 11]),
        _row("spec-a", 2, "spec", "en", [1, 0.1, 0], [10, 11]),  # the current version of spec-a
        _row("spec-b", 1, "spec", "ja", [0.9, 0.3, 0], [10, 12]),
        _row("gloss", 1, "glossary", "en", [0.2, 1, 0], [13]),
    ]
    rows += [_row(f"noise-{i}", 1, "spec", "en", [0.8, 0, 0.5 + i / 10], [10]) for i in range(12)]
    return FakeStore(rows)


def test_stage_one_is_pure_ann_and_old_versions_never_come_back(store: FakeStore) -> None:
    r = Retriever(store, SearchSettings(sparse_weight=0.5))
    fused, timings = _search(r, [{"dense": [1, 0.05, 0], "sparse": {10: 1.0, 11: 1.0}}], explain=True)
    assert store.exprs == [None, None], "stage 1 searches without a filter"
    assert all(c.fields["text"] == c.fields["doc_id"] and "tags" in c.fields for c in fused), (
        "hits carry the chunk's fields"
    )
    ids = [c.chunk_id for c in fused]
    assert "spec-a-v2" in ids and "spec-a-v1" not in ids
    assert len({c.fields["doc_id"] for c in fused}) == len(fused)
    assert fused[0].fields["doc_updated_at"] == 102
    assert [s["channel"] for s in timings["plan"]] == ["dense", "sparse"]


def test_filters_apply_in_stage_two_and_short_lists_are_searched_again(store: FakeStore) -> None:
    r = Retriever(store, SearchSettings())
    fused, timings = _search(
        r, [{"dense": [1, 0, 0], "sparse": {}}], filters={"kinds": ["glossary"]}, explain=True
    )
    assert [c.fields["doc_id"] for c in fused] == ["gloss"]
    assert store.exprs[0] is None and store.exprs[1] is not None and "glossary" in store.exprs[1]
    assert timings["plan"][0]["refetched"]
    store.exprs.clear()
    fused, _ = _search(r, [{"dense": [1, 0, 0], "sparse": {}}], filters={"sources": ["spec-b.md"]})
    assert [c.fields["doc_id"] for c in fused] == ["spec-b"] and 'source == "spec-b.md"' in str(store.exprs)
    # a filter that stage 1 satisfies needs no second search
    store.exprs.clear()
    fused, _ = _search(r, [{"dense": [1, 0, 0], "sparse": {}}], filters={"langs": ["en"]}, limit=2, top_k=2)
    assert all(c.fields["lang"] == "en" for c in fused) and store.exprs == [None]


def test_variant_and_channel_weights_multiply() -> None:
    settings = SearchSettings(
        dense_weight=1.0, sparse_weight=0.5, variant_weights={"original": 1, "llm": 0.4}
    )
    store = FakeStore([_row("a", 1, "spec", "en", [1, 0, 0], [1])])
    r = Retriever(store, settings)
    vectors = [
        {"dense": [1, 0, 0], "sparse": {1: 1.0}, "origin": "original"},
        {"dense": [1, 0, 0], "sparse": {1: 1.0}, "origin": "llm"},
    ]
    _, timings = _search(r, vectors, explain=True)
    weights = {(s["variant"], s["channel"]): s["weight"] for s in timings["plan"]}
    assert weights == {(0, "dense"): 1.0, (0, "sparse"): 0.5, (1, "dense"): 0.4, (1, "sparse"): 0.2}


def test_sparse_weight_follows_the_share_of_idf_mass_matched(store: FakeStore) -> None:
    idf = IdfTable.build(store)
    assert idf.idf[13] > idf.idf[10], "a rare token weighs more than a common one"
    r = Retriever(store, SearchSettings(sparse_weight=1.0, sparse_coverage=(0.1, 0.4)), idf=idf)
    # every query token found in one chunk: full weight
    _, t = _search(r, [{"dense": [0, 1, 0], "sparse": {13: 1.0}}], explain=True)
    assert t["plan"][1]["weight"] == pytest.approx(1.0)
    # only a common token matches and most of the query's mass is unknown to the corpus: no weight
    _, t = _search(r, [{"dense": [0, 1, 0], "sparse": {10: 1.0, 900: 1.0, 901: 1.0}}], explain=True)
    assert t["plan"][1]["weight"] == pytest.approx(0.0)


def test_language_balance_adds_a_search_per_other_language(store: FakeStore) -> None:
    r = Retriever(store, SearchSettings(language_balance=True))
    fused, t = _search(r, [{"dense": [1, 0.3, 0], "sparse": {}, "lang": "en"}], explain=True)
    assert [(s["channel"], s["lang"]) for s in t["plan"]] == [("dense", None), ("dense", "ja")]
    assert "spec-b" in {c.fields["doc_id"] for c in fused}


def test_sequential_and_parallel_fan_out_agree(store: FakeStore) -> None:
    r = Retriever(store, SearchSettings())
    vectors = [{"dense": [1, 0.2, 0], "sparse": {10: 1.0}}, {"dense": [0.2, 1, 0], "sparse": {13: 1.0}}]
    a, _ = _search(r, vectors, parallel=True)
    b, _ = _search(r, vectors, parallel=False)
    assert [c.chunk_id for c in a] == [c.chunk_id for c in b]
