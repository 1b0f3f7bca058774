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


class _Steps:
    """A model stand-in that records its steps and can be held busy."""

    def __init__(self) -> None:
        import threading

        self.steps: list[list[str]] = []
        self.release = threading.Event()
        self.release.set()

    def __call__(self, items: list[str]) -> list[str]:
        self.release.wait(5)
        self.steps.append(list(items))
        return [i.upper() for i in items]


def test_a_lone_text_runs_at_once_and_texts_arriving_meanwhile_share_the_next_step() -> None:
    import asyncio

    from serve_app.core.batching import ContinuousBatcher

    model = _Steps()
    batcher = ContinuousBatcher(model, max_items=4)

    async def scenario() -> list[list[str]]:
        model.release.clear()  # the first step blocks until released
        first = asyncio.create_task(batcher.submit(["a"]))
        await asyncio.sleep(0.05)  # the step has started with "a" alone
        later = [asyncio.create_task(batcher.submit([t])) for t in "bcdef"]
        await asyncio.sleep(0.05)
        model.release.set()
        return [await first, *[await t for t in later]]

    results = asyncio.run(scenario())
    assert results == [["A"], ["B"], ["C"], ["D"], ["E"], ["F"]]
    assert model.steps == [["a"], ["b", "c", "d", "e"], ["f"]], "merged up to max_items, in order"


def test_a_wait_delays_an_idle_step_for_company() -> None:
    import asyncio

    from serve_app.core.batching import ContinuousBatcher

    model = _Steps()
    batcher = ContinuousBatcher(model, max_items=8, wait_s=0.2)

    async def scenario() -> None:
        first = asyncio.create_task(batcher.submit(["a"]))
        await asyncio.sleep(0.02)
        await asyncio.gather(first, batcher.submit(["b"]))

    asyncio.run(scenario())
    assert model.steps == [["a", "b"]]


def test_a_failed_step_fails_only_its_own_callers() -> None:
    import asyncio

    import pytest

    from serve_app.core.batching import ContinuousBatcher

    def work(items: list[str]) -> list[str]:
        if "bad" in items:
            raise RuntimeError("model failed")
        return items

    batcher = ContinuousBatcher(work, max_items=1)

    async def scenario() -> list[str]:
        bad = asyncio.create_task(batcher.submit(["bad"]))
        good = asyncio.create_task(batcher.submit(["ok"]))
        with pytest.raises(RuntimeError, match="model failed"):
            await bad
        return await good

    assert asyncio.run(scenario()) == ["ok"]
