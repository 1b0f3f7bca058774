"""Resilient batch embedding: retries with backoff, then splitting to isolate failing chunks."""

from __future__ import annotations

import numpy as np
import pytest

from serve_app.core.ingest import embed_resilient
from serve_app.settings import IngestSettings

FAST = IngestSettings(attempts=3, backoff_s=0.0, backoff_max_s=0.0)


class FakeEmbed:
    """Fails for texts containing "BAD"; fails the first ``transient`` calls whatever they hold."""

    def __init__(self, transient: int = 0, error: type[Exception] = RuntimeError) -> None:
        self.transient = transient
        self.error = error
        self.calls: list[int] = []

    def __call__(self, texts: list[str]):
        self.calls.append(len(texts))
        if self.transient > 0:
            self.transient -= 1
            raise self.error("replica restarting")
        if any("BAD" in t for t in texts):
            raise self.error("cannot embed this")
        return np.ones((len(texts), 4), np.float32), [{7: 1.0} for _ in texts]


def test_transient_failure_is_retried_without_losing_anything():
    embed = FakeEmbed(transient=2)
    out = embed_resilient(embed, [f"t{i}" for i in range(10)], batch_size=10, settings=FAST)
    assert all(not isinstance(o, str) for o in out)
    assert embed.calls == [10, 10, 10], "two failed attempts, then the whole batch succeeds"


def test_persistent_failure_is_isolated_to_the_bad_chunks():
    texts = [f"t{i}" for i in range(16)]
    texts[5] = "BAD one"
    texts[11] = "BAD two"
    embed = FakeEmbed()
    out = embed_resilient(embed, texts, batch_size=16, settings=FAST)
    failed = [i for i, o in enumerate(out) if isinstance(o, str)]
    assert failed == [5, 11]
    assert "cannot embed this" in out[5]
    assert all(isinstance(o, tuple) and o[0].shape == (4,) for i, o in enumerate(out) if i not in failed)
    assert len(embed.calls) < 40, "halving, not one call per text"


def test_bad_input_is_split_at_once_without_backoff():
    embed = FakeEmbed(error=ValueError)
    out = embed_resilient(embed, ["ok", "BAD"], batch_size=2, settings=FAST)
    assert isinstance(out[0], tuple) and isinstance(out[1], str)
    assert embed.calls[0] == 2 and embed.calls.count(2) == 1, "a ValueError is not retried as a batch"


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_batches_are_bounded(batch_size: int):
    embed = FakeEmbed()
    embed_resilient(embed, ["x"] * 10, batch_size=batch_size, settings=FAST)
    assert max(embed.calls) <= batch_size


def test_only_the_planned_batch_and_single_texts_are_retried():
    """The whole batch gets its retries, the halves of a split one try each, and a text alone one
    try plus its retries (a blip during the split is not taken for a bad chunk)."""
    embed = FakeEmbed()
    out = embed_resilient(embed, ["a", "b", "c", "BAD"], batch_size=4, settings=FAST)
    assert [isinstance(o, str) for o in out] == [False, False, False, True]
    # 3 tries of 4, halves [a b] ok and [c BAD] once, then c ok, BAD once + 3 retries
    assert embed.calls == [4, 4, 4, 2, 2, 1, 1, 1, 1, 1]


def test_a_dead_embedder_stops_the_run_instead_of_isolating_every_text():
    from serve_app.core.ingest import EmbedderUnavailable

    embed = FakeEmbed(transient=10_000)
    with pytest.raises(EmbedderUnavailable, match="in a row"):
        embed_resilient(embed, [f"t{i}" for i in range(64)], batch_size=64, settings=FAST)
    assert len(embed.calls) < 64 * 4, "stopped after abort_after_failures texts"
