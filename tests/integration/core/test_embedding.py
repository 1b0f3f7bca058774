"""The embedding engine on the real offline model: long input, fault isolation, token batching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve_app.core.embedding import EmbeddingService, EmbedItem
from serve_app.core.encoder import InputTooLong, M3Encoder

pytestmark = pytest.mark.integration

LONG_JA = "".join(f"第{i}条 注文基盤の在庫引当は作成から三十分で自動的に解放される。" for i in range(620))


@pytest.fixture(scope="module")
def encoder(model_dir: Path) -> M3Encoder:
    return M3Encoder(str(model_dir), device="cpu", num_threads=2, batch_size=8, max_tokens_per_batch=2048)


def test_long_japanese_document_is_cut_at_a_sentence_end(encoder: M3Encoder) -> None:
    assert len(LONG_JA) > 20_000
    out = encoder.encode([LONG_JA, "短い文。"], colbert=True)
    assert out.truncated == [True, False] and out.errors == [None, None]
    assert out.token_counts[0] <= encoder.max_length
    assert out.token_counts[0] > encoder.max_length * 0.8, "the cut keeps most of the window"
    ids, _ = encoder._tokenize([LONG_JA], "passage")
    text = encoder.tokenizer.decode(ids[0], skip_special_tokens=True)
    assert text.rstrip().endswith("。"), text[-30:]
    assert np.isclose(np.linalg.norm(out.dense[0]), 1.0, atol=1e-4)


def test_long_text_cut_at_its_start_keeps_the_prefix_and_a_sentence_start(encoder: M3Encoder) -> None:
    numbered = "".join(
        f"第{i}条 注文基盤の在庫引当は作成から三十分で自動的に解放される。" for i in range(620)
    )
    ids, truncated = encoder._tokenize([numbered, "短い文。"], "query", "start")
    assert truncated == [True, False] and encoder.max_length * 0.8 < len(ids[0]) <= encoder.max_length
    text = encoder.tokenizer.decode(ids[0], skip_special_tokens=True)
    assert text.startswith(encoder.query_prefix + "第") and text.rstrip().endswith(
        "第619条 " + numbered[-28:]
    )
    with pytest.raises(InputTooLong) as err:
        encoder.encode([numbered, "短い文。"], truncate="none")
    assert list(err.value.over) == [0] and err.value.limit == encoder.max_length


def test_out_of_memory_halves_the_batch_and_every_item_still_embeds(encoder: M3Encoder, monkeypatch) -> None:
    texts = [f"文書 {i} の本文です。" for i in range(8)]
    reference = encoder.encode(texts).dense
    real_forward = encoder._forward

    def forward(idx, *args, **kwargs):
        if len(idx) > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return real_forward(idx, *args, **kwargs)

    monkeypatch.setattr(encoder, "_forward", forward)
    out = encoder.encode(texts)
    assert out.errors == [None] * 8 and max(out.batches) <= 2
    assert np.allclose(out.dense, reference, atol=1e-4)
    monkeypatch.setattr(encoder, "_forward", real_forward)
    assert encoder.encode(texts).batches == [8], "the next call is back at the full batch size"


def test_an_item_that_fails_alone_does_not_fail_the_others(model_dir: Path, monkeypatch) -> None:
    encoder = M3Encoder(str(model_dir), device="cpu", batch_size=8)
    service = EmbeddingService(encoder)
    real_forward = encoder._forward
    texts = ["ok one", "poison", "ok two", "ok three"]

    def forward(idx, ids, out, **kwargs):
        if 1 in idx:
            raise ValueError("cannot embed this input")
        return real_forward(idx, ids, out, **kwargs)

    monkeypatch.setattr(encoder, "_forward", forward)
    results = service.embed_items([EmbedItem(t) for t in texts])
    assert [r["error"] is None for r in results] == [True, False, True, True]
    assert "cannot embed this input" in results[1]["error"]
    assert all(np.isclose(np.linalg.norm(results[i]["dense"]), 1.0, atol=1e-4) for i in (0, 2, 3))


def test_token_budget_separates_long_from_short(encoder: M3Encoder) -> None:
    texts = ["短い。"] * 12 + [LONG_JA[:1500]]
    out = encoder.encode(texts)
    longest = out.token_counts[-1]
    assert longest > 400
    assert out.batches[0] <= 2048 // longest, "the long text's batch is capped by padded tokens"
    assert sum(out.batches) == 13 and max(out.batches) <= 8


# --- property tests: the tokenizer-truncation path on any text ----------------------------------

_SCRIPTS = st.sampled_from(
    [
        "仕様書の要件を満たすこと。",
        "The token expires after 3600 s. ",
        "срок действия токена. ",
        "صلاحية الرمز. ",
        "🔑🚀 ",
        "\x00\x07\x1b[0m\u202e\ufeff\u200b",
        "\r\n\t  \u3000",
        "テスト",
        "a" * 50,
    ]
)
_HOSTILE_TEXT = st.one_of(
    st.text(max_size=300),  # any code points except surrogates, control characters included
    st.lists(_SCRIPTS, max_size=40).map("".join),  # mixed scripts
    st.builds(lambda part, n: part * n, _SCRIPTS, st.integers(100, 2500)),  # up to ~30k chars
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(
    texts=st.lists(_HOSTILE_TEXT, min_size=1, max_size=3),
    input_type=st.sampled_from(["query", "passage"]),
    truncate=st.sampled_from(["end", "start"]),
)
def test_property_tokenizing_any_text_fits_the_window(
    encoder: M3Encoder, texts: list[str], input_type, truncate
) -> None:
    """Any text, however long or strange, becomes at most ``max_length`` tokens, cut at its end or
    its start; a text is cut only when it is over the window."""
    ids, truncated = encoder._tokenize(texts, input_type, truncate)
    full = encoder.count_tokens(texts, input_type=input_type)
    for row, cut, n in zip(ids, truncated, full, strict=True):
        assert 2 <= len(row) <= encoder.max_length
        assert cut == (n > encoder.max_length)
        if not cut:
            assert len(row) == n


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(texts=st.lists(_HOSTILE_TEXT, min_size=1, max_size=2))
def test_property_encoding_any_text_gives_finite_unit_vectors(encoder: M3Encoder, texts: list[str]) -> None:
    out = encoder.encode(texts, colbert=True)
    assert out.errors == [None] * len(texts)
    assert np.all(np.isfinite(out.dense))
    assert np.allclose(np.linalg.norm(out.dense, axis=1), 1.0, atol=1e-3)
    assert all(np.isfinite(list(s.values())).all() for s in out.sparse if s)


def test_rerank_colbert_vectors_are_shared_through_redis(encoder: M3Encoder, redis_url: str) -> None:
    """Two services on one Redis, as two Embedder replicas: what one computed for a rerank, the
    other serves from Redis without the model, and scores it the same."""
    from serve_app.core.encoder import colbert_maxsim
    from serve_app.settings import Settings

    settings = Settings(redis={"url": redis_url, "timeout_s": 2.0})
    first = EmbeddingService.from_settings(settings, encoder)
    second = EmbeddingService.from_settings(settings, encoder)
    texts = [f"冪等キーは {i} 時間保持される。Idempotency keys are kept for {i} hours." for i in range(6)]
    items = [EmbedItem(t, "passage", colbert=True) for t in texts]
    query = first.embed_items([EmbedItem("冪等キーの保持期間", "query", colbert=True)])[0]
    computed = first.embed_items(items)
    served = second.embed_items(items)
    assert [r["cached"] for r in computed] == [None] * 6 and [r["cached"] for r in served] == ["redis"] * 6
    for a, b in zip(computed, served, strict=True):
        assert a["colbert"].shape == b["colbert"].shape and a["colbert"].shape[1] == encoder.dim
        assert np.array_equal(a["colbert"], b["colbert"])
        q = query["colbert"]
        assert colbert_maxsim(q, a["colbert"]) == colbert_maxsim(q, b["colbert"])
    plain = second.embed_items([EmbedItem(texts[0], "passage")])[0]
    assert plain["cached"] is None, "a ColBERT entry is not the dense + sparse cache's"


def test_forward_passes_run_on_the_torch_thread_whoever_calls(encoder: M3Encoder, monkeypatch) -> None:
    """One OpenMP team per process: a forward from a second thread would make every op slower."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    threads: set[str] = set()
    forward = encoder._forward

    def spy(*args: object, **kwargs: object) -> None:
        threads.add(threading.current_thread().name)
        return forward(*args, **kwargs)

    monkeypatch.setattr(encoder, "_forward", spy)
    with ThreadPoolExecutor(3) as pool:
        outs = list(pool.map(lambda t: encoder.encode([t]), ["一つ目", "second", "三つ目の文"]))
    assert all(o.errors == [None] for o in outs)
    assert len(threads) == 1 and threads.pop().startswith("specrag-torch")
