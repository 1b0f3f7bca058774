"""Token-aware batching, continuous batching, fault isolation and sentence-boundary truncation.

No torch here, so the policies are unit-tested without a model.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence

SENTENCE_END = re.compile(r"[。！？!?]|\.(?=\s|$)")


def plan_batches(
    lengths: Sequence[int], *, max_items: int, max_tokens: int, min_fill: float = 0.5
) -> list[list[int]]:
    """Indices grouped longest first into forward passes that waste little on padding.

    A pass ends when it holds ``max_items`` texts, when its padded size (texts × its longest)
    would pass ``max_tokens``, or when the next text is shorter than ``min_fill`` × its longest,
    so short texts never pad to a long one's length: on a CPU, padding is paid in full (measured:
    steps mixing 20- and 500-token texts ran at 0.6-0.7 x the throughput of length-sorted ones).
    A text longer than ``max_tokens`` still gets a pass of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current:
            longest = lengths[current[0]]
            full = len(current) >= max_items or (len(current) + 1) * longest > max_tokens
            if full or lengths[i] < longest * min_fill:
                batches.append(current)
                current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def run_isolating_failures(
    batch: list[int],
    run: Callable[[list[int]], None],
    on_item_error: Callable[[int, BaseException], None],
    on_split: Callable[[BaseException], None] | None = None,
) -> None:
    """Run ``batch``; on any failure halve it and retry each half, down to single items.

    Out-of-memory therefore shrinks the batch until it fits, and one bad input fails only
    itself. The next call starts again at the full size: the batch size recovers by itself.
    """
    try:
        run(batch)
    except Exception as exc:
        if len(batch) == 1:
            on_item_error(batch[0], exc)
            return
        if on_split is not None:
            on_split(exc)
        half = len(batch) // 2
        run_isolating_failures(batch[:half], run, on_item_error, on_split)
        run_isolating_failures(batch[half:], run, on_item_error, on_split)


def truncate_at_sentence(text: str, max_chars: int) -> str:
    """The longest prefix of ``text`` within ``max_chars`` that ends at a sentence end (。！？.!?).

    Falls back to a hard cut at ``max_chars`` when no sentence ends in the second half of the
    window, so a text without punctuation is not cut to almost nothing.
    """
    if len(text) <= max_chars:
        return text
    window = text[:max_chars]
    # One character more, so "1.2" cut right after its dot is not taken for a sentence end.
    ends = [m.end() for m in SENTENCE_END.finditer(text[: max_chars + 1]) if m.end() <= max_chars]
    if ends and ends[-1] >= max_chars // 2:
        return window[: ends[-1]]
    return window


def truncate_start_at_sentence(text: str, min_start: int) -> str:
    """The longest suffix of ``text`` starting at or after ``min_start`` that begins a sentence.

    The mirror of ``truncate_at_sentence`` for cutting the start (``truncate="start"``): the
    suffix starts right after a sentence end (leading whitespace dropped), else at ``min_start``
    when no sentence starts in the first half of the window.
    """
    if min_start <= 0:
        return text
    window = len(text) - min_start
    starts = [m.end() for m in SENTENCE_END.finditer(text) if m.end() >= min_start]
    if starts and len(text) - starts[0] >= window // 2:
        return text[starts[0] :].lstrip()
    return text[min_start:]


def is_out_of_memory(exc: BaseException) -> bool:
    name = type(exc).__name__
    message = str(exc).lower()
    return name == "OutOfMemoryError" or "out of memory" in message or "can't allocate memory" in message


class ContinuousBatcher:
    """Runs ``work`` on everything that is pending whenever the worker is free.

    The Embedder's batching, as text-embeddings-inference does it: a text that arrives while the
    model is idle starts a step at once (no wait for company), and every text that arrives
    while a step runs joins the next one, up to ``max_items``. ``wait_s`` > 0 delays an idle
    model's step by that long for company (a lone request then pays it; kept as a knob).

    ``@serve.batch`` alone cannot do this: with a wait of 0 it cuts a batch of whatever is queued
    the instant it looks (one text, under load too), and with a wait it makes every lone request
    pay it, while batches cut during a model step queue behind it one small batch after another
    (measured: a mean of 1.8 texts per step at 64 concurrent clients on 2 CPUs).
    """

    def __init__(self, work: Callable[[list], list], max_items: int, wait_s: float = 0.0) -> None:
        self.work = work
        self.max_items = max_items
        self.wait_s = wait_s
        self._pending: list[tuple[list, asyncio.Future]] = []
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None

    async def submit(self, items: list) -> list:
        loop = asyncio.get_running_loop()
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        future: asyncio.Future = loop.create_future()
        self._pending.append((items, future))
        self._wakeup.set()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run())
        return await future

    def _take(self) -> list[tuple[list, asyncio.Future]]:
        taken: list[tuple[list, asyncio.Future]] = []
        count = 0
        while self._pending and (not taken or count + len(self._pending[0][0]) <= self.max_items):
            items, future = self._pending.pop(0)
            taken.append((items, future))
            count += len(items)
        return taken

    async def _run(self) -> None:
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self.wait_s > 0 and sum(len(items) for items, _ in self._pending) < self.max_items:
                await asyncio.sleep(self.wait_s)  # the model was idle: wait for company
            while self._pending:
                taken = self._take()
                flat = [item for items, _ in taken for item in items]
                try:
                    # Off the event loop, so requests keep arriving while the model works.
                    results = await asyncio.to_thread(self.work, flat)
                except Exception as exc:
                    for _, future in taken:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                start = 0
                for items, future in taken:
                    if not future.done():
                        future.set_result(results[start : start + len(items)])
                    start += len(items)
