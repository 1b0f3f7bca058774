"""Retriever: two stages (pure ANN, then versions + metadata filters), fusion weights, IDF weighting.

``FakeStore`` (``serve_app.testing.doubles``) answers like Milvus from an in-memory table
(dense inner product, lexical sparse scores, the store's structured filters evaluated as such), so
what is tested is the Retriever's logic; the real Milvus path runs in the integration tests.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from serve_app.core.lexical import IdfTable
from serve_app.core.retrieval import Retriever
from serve_app.core.store import doc_ids_filter
from serve_app.settings import DataScope, SearchSettings
from serve_app.testing.doubles import FakeStore


def _settings(**kw: Any) -> SearchSettings:
    """Settings with language balance off unless a test turns it on (it adds searches per language)."""
    return SearchSettings(**{"language_balance": False, **kw})


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
        "is_current": True,
        "dense": vec,
        "sparse": dict.fromkeys(tokens, 1.0),
    }


def _search(
    retriever: Retriever, vectors: list[dict[str, Any]], **kw: Any
) -> tuple[list[Any], dict[str, Any]]:
    fan = asyncio.run(retriever.search(vectors, **{"top_k": 3, **kw}))
    return fan.candidates, {**fan.timings_ms, "searches": float(fan.searches), "plan": fan.plan}


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
    r = Retriever(store, _settings(sparse_weight=0.5))
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
    r = Retriever(store, _settings())
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
    settings = _settings(dense_weight=1.0, sparse_weight=0.5, variant_weights={"original": 1, "llm": 0.4})
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
    r = Retriever(store, _settings(sparse_weight=1.0, sparse_coverage=(0.1, 0.4)), idf=idf)
    # every query token found in one chunk: full weight
    _, t = _search(r, [{"dense": [0, 1, 0], "sparse": {13: 1.0}}], explain=True)
    assert t["plan"][1]["weight"] == pytest.approx(1.0)
    # only a common token matches and most of the query's mass is unknown to the corpus: no weight
    _, t = _search(r, [{"dense": [0, 1, 0], "sparse": {10: 1.0, 900: 1.0, 901: 1.0}}], explain=True)
    assert t["plan"][1]["weight"] == pytest.approx(0.0)


def test_lexical_evidence_is_the_matched_idf_share_times_the_query_confidence(store: FakeStore) -> None:
    idf = IdfTable.build(store)
    vectors = [{"dense": [0, 1, 0], "sparse": {13: 1.0, 11: 1.0}, "lang": "en"}]
    r = Retriever(store, _settings(sparse_coverage=(0.1, 0.4)), idf=idf, languages={"ja": 0, "en": 16})
    fused, _ = _search(r, vectors, top_k=5)
    lexical = {c.chunk_id: c.channel_scores["lexical"] for c in fused}
    mass = idf.idf[13] + idf.idf[11]
    # gloss holds token 13, spec-a token 11: each matches its token's share of the query's IDF mass;
    # the best share (13's, over 0.4) makes the query's lexical confidence full
    assert lexical["gloss-v1"] == pytest.approx(idf.idf[13] / mass)
    assert lexical["spec-a-v2"] == pytest.approx(idf.idf[11] / mass)
    assert all(v == 0.0 for k, v in lexical.items() if k not in ("gloss-v1", "spec-a-v2"))
    # a corpus with another language in it: no lexical evidence (it would favour the query's own)
    r.languages = {"ja": 1, "en": 15}
    fused, _ = _search(r, vectors, top_k=5)
    assert all("lexical" not in c.channel_scores for c in fused)
    # a search without the sparse channel has no lexical confidence: no evidence (not evidence 0,
    # which would still count in the rerank's weights and shrink every score)
    r.languages = {"ja": 0, "en": 16}
    fused, _ = _search(r, vectors, top_k=5, channels=("dense",))
    assert all("lexical" not in c.channel_scores for c in fused)


def test_language_balance_lists_each_language_separately(store: FakeStore) -> None:
    # English chunks fill a list of 6 (2 x overfetch 3) before the one Japanese chunk.
    vectors = [{"dense": [1, 0.05, 0.3], "sparse": {}, "lang": "en"}]
    r = Retriever(store, _settings(language_balance=False))
    fused, _ = _search(r, vectors, top_k=1, limit=2)
    assert "spec-b" not in {c.fields["doc_id"] for c in fused}
    r = Retriever(store, _settings(language_balance=True), languages={"ja": 1, "en": 14})
    fused, t = _search(r, vectors, top_k=1, limit=2, explain=True)
    assert [(s["channel"], s["lang"]) for s in t["plan"]] == [("dense", "ja"), ("dense", "en")]
    # one list per language, equal weights: each language's best chunk ties for first place
    assert {fused[0].fields["lang"], fused[1].fields["lang"]} == {"ja", "en"}
    assert fused[0].rrf == pytest.approx(fused[1].rrf)


def test_a_query_with_a_variant_in_every_language_is_not_balanced(store: FakeStore) -> None:
    r = Retriever(store, _settings(language_balance=True), languages={"ja": 1, "en": 14})
    vectors = [
        {"dense": [1, 0, 0], "sparse": {}, "lang": "ja", "origin": "original"},
        {"dense": [1, 0.1, 0], "sparse": {}, "lang": "en", "origin": "lexicon"},
    ]
    _, t = _search(r, vectors, explain=True)
    assert [(s["variant"], s["lang"]) for s in t["plan"]] == [(0, None), (1, None)]
    _, t = _search(r, vectors[:1], explain=True)  # the same question without its translation
    assert [(s["variant"], s["lang"]) for s in t["plan"]] == [(0, "ja"), (0, "en")]
    _, t = _search(r, vectors[:1], explain=True, filters={"langs": ["ja"]})  # the client chose
    assert [(s["variant"], s["lang"]) for s in t["plan"]] == [(0, None)]


@pytest.mark.parametrize(
    ("languages", "lists"),
    [
        (None, ["ja", "en"]),  # not measured yet: both
        ({"ja": 0, "en": 15}, [None]),  # one language: one list, as without balance
        ({"ja": 1, "en": 999}, [None]),  # 0.1 %, under language_min_share
        ({"ja": 20, "en": 980}, ["ja", "en"]),
    ],
)
def test_language_balance_follows_the_corpus_language_mix(
    store: FakeStore, languages: dict[str, int] | None, lists: list[str | None]
) -> None:
    r = Retriever(store, _settings(language_balance=True, language_min_share=0.01), languages=languages)
    _, t = _search(r, [{"dense": [1, 0, 0], "sparse": {}, "lang": "ja"}], explain=True)
    assert [s["lang"] for s in t["plan"]] == lists


def test_sequential_and_parallel_fan_out_agree(store: FakeStore) -> None:
    r = Retriever(store, _settings())
    vectors = [{"dense": [1, 0.2, 0], "sparse": {10: 1.0}}, {"dense": [0.2, 1, 0], "sparse": {13: 1.0}}]
    a, _ = _search(r, vectors, parallel=True)
    b, _ = _search(r, vectors, parallel=False)
    assert [c.chunk_id for c in a] == [c.chunk_id for c in b]


def test_a_channel_that_saw_only_the_old_version_ranks_the_new_one_in_its_place() -> None:
    # Version 2 of "doc" no longer has token 99: the sparse ANN finds only version 1, which stage 2
    # replaces by version 2's best chunk, scored from its stored vectors (no shared token: 0).
    store = FakeStore(
        [_row("doc", 1, "spec", "en", [1, 0, 0], [99]), _row("doc", 2, "spec", "en", [1, 0, 0], [98])]
    )
    r = Retriever(store, _settings())
    fused, _ = _search(r, [{"dense": [1, 0, 0], "sparse": {99: 1.0}}], channels=("sparse",))
    assert [c.chunk_id for c in fused] == ["doc-v2"]
    assert fused[0].fields["version"] == 2 and "sparse" not in fused[0].fields
    assert fused[0].fields["doc_updated_at"] == 102


def test_the_replacement_keeps_the_language_restriction_of_its_search() -> None:
    # "doc" was Japanese in version 1 and is English in version 2: the Japanese-only search found
    # version 1, and its replacement must come from Japanese rows too, so that list ends up empty.
    rows = [
        _row("doc", 1, "spec", "ja", [1, 0, 0], [99]),
        _row("doc", 2, "spec", "en", [1, 0, 0], [98]),
        _row("other", 1, "spec", "en", [0.9, 0.1, 0], [99]),
    ]
    store = FakeStore(rows)
    r = Retriever(store, _settings(language_balance=True))
    vectors = [{"dense": [1, 0, 0], "sparse": {99: 1.0}, "lang": "en"}]
    fused, t = _search(r, vectors, channels=("sparse",), explain=True, parallel=False)
    assert [(s["channel"], s["lang"], s["kept"]) for s in t["plan"]] == [
        ("sparse", "ja", 0),
        ("sparse", "en", 1),
    ]
    assert store.exprs == ['lang == "ja"', 'lang == "en"']
    assert {c.chunk_id for c in fused} == {"other-v1"}


def test_a_document_deleted_since_the_ann_ran_is_dropped(store: FakeStore) -> None:
    class Deleting(FakeStore):
        def doc_versions(self, doc_ids=None):  # the delete lands between stage 1 and stage 2
            self.delete(expr=doc_ids_filter(["gloss"]))
            return super().doc_versions(doc_ids)

    racing = Deleting(store.rows)
    fused, _ = _search(Retriever(racing, _settings()), [{"dense": [0.2, 1, 0], "sparse": {13: 1.0}}])
    assert "gloss" not in {c.fields["doc_id"] for c in fused} and fused


def test_a_chunk_holding_the_querys_identifier_ranks_first(store: FakeStore) -> None:
    planted = _row("ticket", 1, "spec", "en", [0.0, 0.0, 1.0], [99])
    planted["text"] = "Refund failures are tracked as PAY-4821 since May."
    store.upsert([planted])
    r = Retriever(store, _settings())
    query = {"dense": [1.0, 0.0, 0.0], "sparse": {10: 1.0}, "text": "PAY-4821"}
    cands, t = _search(r, [query], explain=True)
    assert cands[0].fields["doc_id"] == "ticket"  # found by no vector channel's top, first anyway
    assert cands[0].channel_scores["exact"] == 1.0 and cands[0].channel_scores["pinned"] == 1.0
    # In a longer question the exact match joins the pool without being pinned.
    asked = {**query, "text": "why do refund failures still show up under PAY-4821 today"}
    cands, _ = _search(r, [asked], top_k=20)
    ticket = next(c for c in cands if c.fields["doc_id"] == "ticket")
    assert "pinned" not in ticket.channel_scores and ticket.channel_scores["exact"] == 1.0
    assert any(p["channel"] == "exact" for p in t["plan"])
    # A filter that excludes it keeps it out; without identifiers there is no exact search at all.
    cands, _ = _search(r, [query], filters={"kinds": ["glossary"]})
    assert all(c.fields["doc_id"] != "ticket" for c in cands)
    _, t = _search(r, [{**query, "text": "refund failures"}], explain=True)
    assert all(p["channel"] != "exact" for p in t["plan"])
    off = Retriever(store, _settings(identifier_match=False))
    assert off_first(off, query) != "ticket"


def off_first(r: Retriever, query: dict[str, Any]) -> str:
    cands, _ = _search(r, [query])
    return str(cands[0].fields["doc_id"])


def test_bm25_channel_searches_the_variant_text(store: FakeStore) -> None:
    from serve_app.core.bm25 import Bm25Index

    r = Retriever(store, _settings(), bm25=Bm25Index.build(store))
    cands, t = _search(
        r, [{"dense": [1.0, 0.0, 0.0], "sparse": {}, "text": "gloss"}], channels=("bm25",), explain=True
    )
    assert [c.fields["doc_id"] for c in cands] == ["gloss"]
    assert [p["channel"] for p in t["plan"]] == ["bm25"]
    # Without an index the channel is not served (a search asking only for it finds nothing).
    cands, _ = _search(
        Retriever(store, _settings()),
        [{"dense": [1.0, 0, 0], "sparse": {}, "text": "gloss"}],
        channels=("bm25",),
    )
    assert cands == []


def test_rrf_max_scales_a_first_everywhere_chunk_to_one(store: FakeStore) -> None:
    r = Retriever(store, _settings(sparse_weight=0.5, sparse_coverage=None))
    fan = asyncio.run(r.search([{"dense": [1.0, 0.1, 0.0], "sparse": {10: 1.0, 11: 1.0}}], top_k=3))
    assert fan.rrf_max == pytest.approx(1.5 / 61)
    assert 0 < fan.candidates[0].rrf <= fan.rrf_max


def test_a_data_scope_is_a_filter_the_request_cannot_widen(store: FakeStore) -> None:
    """Only documents the caller may read come back, however the query and its filters look."""
    for row in store.rows:
        row["source"] = "team-b/" + row["source"] if row["doc_id"].startswith("noise") else "team-a/x.md"
    r = Retriever(store, _settings())
    scope = DataScope(sources=["team-a/"])
    vectors = [{"dense": [0.8, 0, 1.0], "sparse": {10: 1.0}}]  # the noise docs (team B) match best
    fused, t = _search(r, vectors, top_k=3, scope=scope, explain=True)
    assert fused and {c.fields["source"] for c in fused} == {"team-a/x.md"}
    assert any(s["refetched"] for s in t["plan"]), "short lists are searched again with the scope pushed down"
    assert any('source like "team-a/%"' in (e or "") for e in store.exprs)
    # the request's own filters narrow inside the scope, never outside it
    fused, _ = _search(r, vectors, top_k=3, scope=scope, filters={"sources": ["team-b/noise-1.md"]})
    assert fused == []
    # every channel: the exact identifier list too
    idents = [{"dense": [0.8, 0, 1.0], "sparse": {}, "text": "noise"}]
    fused, _ = _search(r, idents, top_k=3, scope=scope)
    assert all(c.fields["source"].startswith("team-a/") for c in fused)
