"""The text rerank engine (``ColbertReranker.score_texts``), its score mapping and its truncation,
over the real embedding service with the hash encoder (no model)."""

from __future__ import annotations

import asyncio
import pickle
from typing import Any

import numpy as np
import pytest

from serve_app.core.batching import truncate_start_at_sentence
from serve_app.core.embedding import EmbeddingService, EmbedItem
from serve_app.core.encoder import InputTooLong
from serve_app.core.fusion import Candidate
from serve_app.core.pipeline import LocalEmbedder
from serve_app.core.rerank import ColbertReranker, RerankerUnavailable, relevance
from serve_app.core.retrieval import rerank
from serve_app.settings import SearchSettings
from serve_app.testing.doubles import HashEncoder

QUERY = "token expiry refresh"
TEXTS = [
    "inventory is allocated first in first out",
    "the access token expiry is sixty minutes; refresh it before expiry",
    "token refresh needs the client secret",
]


def _engine(max_length: int = 512, cross: Any = None, **settings: Any) -> ColbertReranker:
    embedder = LocalEmbedder(EmbeddingService(HashEncoder(dim=32, max_length=max_length)))
    return ColbertReranker(embedder, SearchSettings(**settings), cross)


def _score(engine: ColbertReranker, texts: list[str], truncate: Any = "end", query: str = QUERY) -> list:
    return asyncio.run(engine.score_texts(query, texts, truncate))


def _rerank(engine: ColbertReranker, candidates: list[Candidate], *also: str) -> list[Candidate]:
    """A search's rerank: the query (and the variants it reads) embedded with ColBERT rows, as the
    pipeline's one embedding call gives them."""
    queries = asyncio.run(engine.embedder.embed([QUERY, *also], "query", True))
    return asyncio.run(engine.rerank(QUERY, candidates, queries))


@pytest.mark.parametrize(("raw", "mapped"), [(-0.4, 0.0), (0.0, 0.0), (0.37, 0.37), (1.0, 1.0), (1.8, 1.0)])
def test_relevance_clips_the_raw_score_to_the_unit_interval(raw: float, mapped: float) -> None:
    assert relevance(raw) == pytest.approx(mapped)


def test_relevance_never_reverses_an_order() -> None:
    raws = np.linspace(-2, 3, 101)
    mapped = [relevance(float(r)) for r in raws]
    assert mapped == sorted(mapped) and min(mapped) == 0.0 and max(mapped) == 1.0


def test_texts_are_ranked_best_first_with_every_score() -> None:
    scored = _score(_engine(), TEXTS)
    assert [t["index"] for t in scored] == [1, 2, 0], "the texts sharing the query's words lead"
    assert [t["score"] for t in scored] == sorted((t["score"] for t in scored), reverse=True)
    for t in scored:
        assert 0.0 <= t["relevance"] <= 1.0 and t["relevance"] == relevance(t["score"])
        assert set(t["scores"]) == {"colbert", "m3_dense", "m3_sparse"}
        assert t["tokens"] > 2 and t["truncated"] is False


def test_text_scores_are_the_search_rerank_scores() -> None:
    """/v1/rerank and /v1/search's rerank stage score one passage alike (one formula); the search
    adds only the candidate's place in the fused list, which a posted text does not have."""
    settings = {"rerank_dense_weight": 0.5, "rerank_sparse_weight": 0.2, "rerank_fusion_weight": 0.0}
    engine = _engine(**settings)
    scored = {t["index"]: t for t in _score(engine, TEXTS)}
    candidates = [Candidate(f"c{i}", {"doc_id": f"d{i}", "text": t}) for i, t in enumerate(TEXTS)]
    _rerank(engine, candidates)
    for cand in candidates:
        i = int(cand.chunk_id[1:])
        assert scored[i]["score"] == pytest.approx(cand.channel_scores["rerank"])
        assert scored[i]["scores"]["colbert"] == pytest.approx(cand.channel_scores["colbert"])
    with_place = _engine(**{**settings, "rerank_fusion_weight": 0.1})
    candidates = [Candidate(f"c{i}", {"doc_id": f"d{i}", "text": t}) for i, t in enumerate(TEXTS)]
    _rerank(with_place, candidates)
    for cand in candidates:
        i = int(cand.chunk_id[1:])
        place = 61 / (61 + i)  # fused order = the order they were given in
        assert cand.channel_scores["fusion"] == pytest.approx(place)
        expected = (scored[i]["score"] * 1.7 + 0.1 * place) / 1.8
        assert cand.channel_scores["rerank"] == pytest.approx(expected)


def test_a_variant_read_by_the_rerank_averages_with_the_query() -> None:
    """``rerank_variants``: the query's translation is read too, ColBERT and dense are the means."""
    engine = _engine()
    alone = {t["index"]: t["scores"] for t in _score(engine, TEXTS)}
    other = {t["index"]: t["scores"] for t in _score(engine, TEXTS, query="inventory first")}
    candidates = [Candidate(f"c{i}", {"doc_id": f"d{i}", "text": t}) for i, t in enumerate(TEXTS)]
    ranked = _rerank(engine, candidates, "inventory first")
    for cand in ranked:
        i = int(cand.chunk_id[1:])
        mean = (alone[i]["colbert"] + other[i]["colbert"]) / 2
        assert cand.channel_scores["colbert"] == pytest.approx(mean)
        assert cand.channel_scores["m3_dense"] == pytest.approx(
            (alone[i]["m3_dense"] + other[i]["m3_dense"]) / 2
        )
        assert cand.channel_scores["m3_sparse"] == pytest.approx(alone[i]["m3_sparse"]), "the query's own"


def test_lexical_evidence_joins_with_its_weight() -> None:
    """A candidate's ``lexical`` score (set by the fan-out) counts with ``rerank_lexical_weight``."""
    engine = _engine(rerank_lexical_weight=0.5)
    plain = {t["index"]: t["score"] for t in _score(engine, TEXTS)}
    candidates = [Candidate(f"c{i}", {"doc_id": f"d{i}", "text": t}) for i, t in enumerate(TEXTS)]
    candidates[0].channel_scores["lexical"] = 1.0  # the fan-out found all of the query's words in it
    _rerank(engine, candidates)
    by_id = {c.chunk_id: c.channel_scores["rerank"] for c in candidates}
    assert by_id["c0"] == pytest.approx((plain[0] + 0.5) / 1.5)
    assert by_id["c1"] == pytest.approx(plain[1]), "no lexical score: the formula without it"


def test_equal_scores_keep_the_request_order_and_no_texts_is_no_call() -> None:
    engine = _engine()
    scored = _score(engine, ["same words", "other", "same words"])
    assert [t["index"] for t in scored][:2] == [0, 2]
    assert scored[0]["score"] == scored[1]["score"]
    assert _score(engine, []) == []


def test_the_cross_encoder_joins_with_its_weight() -> None:
    class Cross:
        def compute_score(self, pairs: list[list[str]], normalize: bool) -> list[float]:
            assert normalize and all(q == QUERY for q, _ in pairs)
            return [0.9 if "inventory" in p else 0.1 for _, p in pairs]

    scored = _score(_engine(cross=Cross(), cross_encoder_weight=3.0), TEXTS)
    assert scored[0]["index"] == 0, "a heavy cross-encoder outvotes ColBERT"
    top = scored[0]
    assert top["scores"]["cross_encoder"] == pytest.approx(0.9)
    assert top["score"] == pytest.approx((top["scores"]["colbert"] + 3.0 * 0.9) / 4.0)


def test_over_long_texts_are_cut_at_the_end_or_the_start() -> None:
    engine = _engine(max_length=6)  # four words fit
    long = "inventory allocation order first token expiry refresh"
    end = _score(engine, [long], "end")[0]
    start = _score(engine, [long], "start")[0]
    assert end["truncated"] and start["truncated"] and end["tokens"] == start["tokens"] == 6
    assert start["score"] > end["score"], "the end of the text holds the query's words"


def test_no_truncation_names_the_over_long_text_and_the_limit() -> None:
    engine = _engine(max_length=6)
    with pytest.raises(InputTooLong) as err:
        _score(engine, ["short text", "one two three four five six"], "none")
    assert (err.value.over, err.value.limit, err.value.what) == ({1: 8}, 6, "documents")
    assert str(err.value) == "documents[1] has 8 tokens, over the model's limit of 6 tokens"
    with pytest.raises(InputTooLong) as err:
        _score(engine, ["short"], "none", query="one two three four five six")
    assert err.value.what == "query" and str(err.value).startswith("query has 8 tokens")


def test_input_too_long_survives_pickling() -> None:
    """It crosses Ray calls (Embedder -> Reranker -> Ingress) with its fields."""
    again = pickle.loads(pickle.dumps(InputTooLong({3: 700, 5: 900}, 512, "documents")))
    assert (again.over, again.limit, again.what) == ({3: 700, 5: 900}, 512, "documents")
    assert "(and 1 more)" in str(again)


def test_a_text_the_model_fails_on_is_an_error_not_a_zero_score() -> None:
    inner = LocalEmbedder(EmbeddingService(HashEncoder()))

    class Failing:
        async def embed(
            self, texts: list[str], input_type: Any, colbert: bool = False, truncate: Any = "end"
        ):
            out = await inner.embed(texts, input_type, colbert, truncate)
            return [
                {**o, "error": "out of memory"} if "bad" in t else o for o, t in zip(out, texts, strict=True)
            ]

    engine = ColbertReranker(Failing(), SearchSettings())
    with pytest.raises(RerankerUnavailable, match=r"documents\[1\]: out of memory"):
        asyncio.run(engine.score_texts(QUERY, ["fine", "bad one"]))


def test_start_cuts_get_their_own_cache_entries() -> None:
    encoder = HashEncoder(dim=8, max_length=4)
    service = EmbeddingService(encoder)
    from serve_app.core.cache import EmbeddingCache

    service.cache = EmbeddingCache(None, "hash", lru_items=10)
    text = "alpha beta gamma delta"
    end, start = service.embed_items([EmbedItem(text, truncate="end"), EmbedItem(text, truncate="start")])
    assert not np.allclose(end["dense"], start["dense"])
    again = service.embed_items([EmbedItem(text, truncate="start"), EmbedItem(text, truncate="none")])
    assert again[0]["cached"] == "lru" and np.array_equal(again[0]["dense"], start["dense"])
    assert again[1]["cached"] == "lru" and np.array_equal(again[1]["dense"], end["dense"])


def test_check_fits_refuses_before_any_forward_pass() -> None:
    encoder = HashEncoder(max_length=5)
    service = EmbeddingService(encoder)
    service.check_fits(["one two three"], "query")
    with pytest.raises(InputTooLong) as err:
        service.check_fits(["ok", "one two three four"], "passage")
    assert err.value.over == {1: 6} and encoder.calls == 0


@pytest.mark.parametrize(
    ("text", "start", "cut"),
    [
        ("First one. Second one. Third one.", 5, "Second one. Third one."),
        ("一文目。二文目。三文目。", 2, "二文目。三文目。"),
        ("no sentence ends here at all", 10, "e ends here at all"),
        ("a long first sentence. end", 2, "long first sentence. end"),  # a late start: hard cut
        ("short", 0, "short"),
    ],
)
def test_start_cut_begins_at_a_sentence_start(text: str, start: int, cut: str) -> None:
    assert truncate_start_at_sentence(text, start) == cut


def test_rerank_of_search_candidates_is_unchanged_by_the_shared_formula() -> None:
    unit = np.eye(4, dtype=np.float32)
    query = {"dense": unit[0], "sparse": {1: 1.0}, "colbert": unit[:2]}
    passages = [
        {"dense": unit[0], "sparse": {1: 0.5}, "colbert": unit[:1]},
        {"dense": unit[1], "sparse": {}, "colbert": unit[:2]},
    ]
    cands = [Candidate("a", {"text": "a"}), Candidate("b", {"text": "b"})]
    settings = SearchSettings(rerank_dense_weight=1.0, rerank_sparse_weight=1.0, rerank_fusion_weight=0.5)
    ranked = rerank([query], passages, cands, settings)
    assert [c.chunk_id for c in ranked] == ["a", "b"]
    # colbert + dense + sparse + 0.5 x place in the fused list (1 for the first, 61/62 for the second)
    assert ranked[0].channel_scores["rerank"] == pytest.approx((0.5 + 1.0 + 0.5 + 0.5 * 1.0) / 3.5)
    assert ranked[1].channel_scores["rerank"] == pytest.approx((1.0 + 0.0 + 0.0 + 0.5 * 61 / 62) / 3.5)


def test_the_rerank_reads_the_query_vectors_it_is_given_and_embeds_only_the_candidates() -> None:
    engine = _engine()
    calls: list[tuple[int, str, bool]] = []
    embed = engine.embedder.embed

    async def counting(
        texts: list[str], input_type: Any, colbert: bool = False, truncate: Any = "end"
    ) -> Any:
        calls.append((len(texts), input_type, colbert))
        return await embed(texts, input_type, colbert, truncate)

    queries = asyncio.run(embed([QUERY], "query", True))
    engine.embedder.embed = counting  # type: ignore[method-assign]
    candidates = [Candidate(f"c{i}", {"doc_id": f"d{i}", "text": t}) for i, t in enumerate(TEXTS)]
    asyncio.run(engine.rerank(QUERY, candidates, queries))
    assert calls == [(3, "passage", True)], "no second embedding of the query"
    without_rows = asyncio.run(embed([QUERY], "query", False))
    with pytest.raises(ValueError, match="ColBERT rows"):
        asyncio.run(engine.rerank(QUERY, candidates, without_rows))
