from __future__ import annotations

import pytest

from serve_app.core.batching import (
    is_out_of_memory,
    plan_batches,
    run_isolating_failures,
    truncate_at_sentence,
)


def test_batches_are_sorted_and_capped_by_padded_tokens() -> None:
    lengths = [10] * 64 + [4200, 8000]
    batches = plan_batches(lengths, max_items=32, max_tokens=8192)
    assert batches[0] == [65], "the longest text goes alone"
    assert batches[1] == [64], "4200 tokens padded twice would exceed 8192"
    assert all(len(b) <= 32 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(66))
    for batch in batches:
        assert len(batch) * max(lengths[i] for i in batch) <= 8192 or len(batch) == 1


def test_short_texts_never_pad_to_a_long_one() -> None:
    lengths = [500, 480, 20, 18, 300, 25]
    assert plan_batches(lengths, max_items=16, max_tokens=16_384) == [[0, 1, 4], [5, 2, 3]]


def test_similar_lengths_share_batches() -> None:
    lengths = [100, 5, 100, 5, 100, 5]
    assert plan_batches(lengths, max_items=3, max_tokens=10_000) == [[0, 2, 4], [1, 3, 5]]


def test_failures_halve_the_batch_until_it_fits() -> None:
    ran: list[list[int]] = []

    def run(batch: list[int]) -> None:
        if len(batch) > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        ran.append(batch)

    splits: list[BaseException] = []
    run_isolating_failures(
        list(range(8)), run, lambda i, e: pytest.fail("no item should fail"), splits.append
    )
    assert sorted(i for b in ran for i in b) == list(range(8))
    assert all(len(b) <= 2 for b in ran) and len(splits) == 3


def test_one_bad_item_fails_alone() -> None:
    done: list[int] = []
    failed: dict[int, str] = {}

    def run(batch: list[int]) -> None:
        if 5 in batch:
            raise ValueError("cannot embed item 5")
        done.extend(batch)

    run_isolating_failures(list(range(8)), run, lambda i, e: failed.setdefault(i, str(e)))
    assert failed == {5: "cannot embed item 5"}
    assert sorted(done) == [0, 1, 2, 3, 4, 6, 7]


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("一文目です。二文目です。三文目", 12, "一文目です。二文目です。"),
        ("First one. Second one. Third", 25, "First one. Second one."),
        ("Version 1.2.3 is out. More", 20, "Version 1.2.3 is out"),
        ("句読点のない長い文章" * 5, 20, ("句読点のない長い文章" * 5)[:20]),
        ("short", 100, "short"),
        # the dot of "1.2" right at the cut is not a sentence end
        ("First sentence. Version 1.2 is out", 26, "First sentence."),
        ("本当？　はい！そうです", 8, "本当？　はい！"),
    ],
)
def test_truncate_at_sentence(text: str, limit: int, expected: str) -> None:
    assert truncate_at_sentence(text, limit) == expected


def test_out_of_memory_detection() -> None:
    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"))
    assert not is_out_of_memory(ValueError("bad input"))
