"""Token-aware batching, fault isolation and sentence-boundary truncation for the encoder.

Pure functions (no torch) so the policies are unit-tested without a model.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

SENTENCE_END = re.compile(r"[。！？!?]|\.(?=\s|$)")


def plan_batches(lengths: Sequence[int], *, max_items: int, max_tokens: int) -> list[list[int]]:
    """Indices grouped longest first; a batch's padded size (items × its longest) stays under ``max_tokens``.

    Sorting by length keeps one 8k-token text from padding 63 short ones to 8k; a single text
    longer than ``max_tokens`` still gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and (len(current) >= max_items or (len(current) + 1) * longest > max_tokens):
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
    ends = [m.end() for m in SENTENCE_END.finditer(window)]
    if ends and ends[-1] >= max_chars // 2:
        return window[: ends[-1]]
    return window


def is_out_of_memory(exc: BaseException) -> bool:
    name = type(exc).__name__
    message = str(exc).lower()
    return name == "OutOfMemoryError" or "out of memory" in message or "can't allocate memory" in message
