"""The optional cross-encoder: FlagEmbedding's real FlagReranker loading and scoring code.

No reranker checkpoint can be installed offline, so the test builds one the way a
sequence-classification checkpoint is laid out: the offline model's XLM-R encoder with a
one-logit classification head (seeded). Its scores mean nothing; what is tested is that the
configured path loads through FlagReranker, scores every pair in [0, 1], and that the score
joins the rerank with its weight and is reported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serve_app.core.fusion import Candidate
from serve_app.core.rerank import cross_encoder_scores, load_cross_encoder
from serve_app.core.retrieval import rerank
from serve_app.settings import SearchSettings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cross_encoder_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import AutoTokenizer, XLMRobertaForSequenceClassification

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("cross-encoder")
    model = XLMRobertaForSequenceClassification.from_pretrained(str(model_dir), num_labels=1)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(out)
    return out


def test_cross_encoder_loads_scores_and_joins_the_rerank(cross_encoder_dir: Path) -> None:
    model = load_cross_encoder(str(cross_encoder_dir), "cpu")
    passages = ["認証トークンの有効期限は60分です。", "Inventory is allocated first in, first out."]
    scores = cross_encoder_scores(model, "トークンの有効期限", passages)
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)
    assert scores == cross_encoder_scores(model, "トークンの有効期限", passages), "deterministic"

    unit = np.eye(4, dtype=np.float32)
    query = {"dense": unit[0], "sparse": {}, "colbert": unit[:1]}
    outs = [{"dense": unit[0], "sparse": {}, "colbert": unit[:1]} for _ in passages]
    candidates = [Candidate(f"c{i}", {"doc_id": f"d{i}", "text": p}) for i, p in enumerate(passages)]
    # ColBERT and dense tie; only the cross-encoder separates the two candidates
    ranked = rerank(
        [query],
        outs,
        candidates,
        SearchSettings(rerank_dense_weight=1.0, cross_encoder_weight=1.0),
        cross_scores=scores,
    )
    assert [c.chunk_id for c in ranked] == (["c0", "c1"] if scores[0] > scores[1] else ["c1", "c0"])
    assert all({"colbert", "m3_dense", "cross_encoder", "rerank"} <= set(c.channel_scores) for c in ranked)
    assert ranked[0].channel_scores["rerank"] == pytest.approx((1.0 + 1.0 + max(scores)) / 3)
