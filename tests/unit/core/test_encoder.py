from __future__ import annotations

import numpy as np
import pytest

from serve_app.core.encoder import colbert_maxsim, lexical_score
from serve_app.core.fusion import Candidate
from serve_app.core.retrieval import passage_text, rerank
from serve_app.settings import SearchSettings
from serve_app.testing.doubles import HashEncoder


def test_hash_encoder_is_deterministic_and_ranks_overlap_higher() -> None:
    enc = HashEncoder(dim=64)
    a = enc.encode(["token expiry is 60 minutes"], colbert=True)
    b = HashEncoder(dim=64).encode(["token expiry is 60 minutes"], colbert=True)
    assert np.array_equal(a.dense, b.dense)
    docs = enc.encode(["token expiry is 60 minutes", "warehouse stock allocation"]).dense
    q = enc.encode(["token expiry"], input_type="query").dense[0]
    assert docs[0] @ q > docs[1] @ q
    assert a.colbert[0].shape == (5, 64)


def test_colbert_maxsim_matches_definition() -> None:
    q = np.array([[1.0, 0.0], [0.0, 1.0]])
    p = np.array([[1.0, 0.0], [0.6, 0.8]])
    assert colbert_maxsim(q, p) == pytest.approx((1.0 + 0.8) / 2)
    assert colbert_maxsim(q, np.zeros((0, 2))) == 0.0


def test_lexical_score_sums_shared_tokens() -> None:
    assert lexical_score({1: 0.5, 2: 1.0}, {2: 0.3, 3: 9.0}) == pytest.approx(0.3)
    assert lexical_score({}, {1: 1.0}) == 0.0


def test_rerank_orders_by_weighted_m3_score() -> None:
    enc = HashEncoder(dim=64)
    texts = ["warehouse stock allocation", "token expiry is 60 minutes"]
    cands = [Candidate(f"c{i}", {"text": t, "title_path": []}) for i, t in enumerate(texts)]
    q = enc.encode(["token expiry"], input_type="query", colbert=True)
    p = enc.encode([passage_text(c.fields) for c in cands], colbert=True)
    query = {"dense": q.dense[0], "sparse": q.sparse[0], "colbert": q.colbert[0]}
    passages = [{"dense": p.dense[i], "sparse": p.sparse[i], "colbert": p.colbert[i]} for i in range(2)]
    ranked = rerank([query], passages, cands, SearchSettings())
    assert [c.chunk_id for c in ranked] == ["c1", "c0"]
    assert {"colbert", "m3_dense", "m3_sparse", "rerank"} <= set(ranked[0].channel_scores)


def test_passage_text_prefixes_heading_trail() -> None:
    assert passage_text({"text": "body", "title_path": ["Doc", "Sec"]}) == "Doc / Sec\nbody"
    assert passage_text({"text": "body", "title_path": []}) == "body"
