"""Embedder: BGE-M3 behind ``@serve.batch``; the engine does the work, this shell batches and reports.

A request's texts join the replica's dynamic batch together: ``@serve.batch`` hands each
request's group over as it arrives (groups of at most one model step, as many in flight as the
replica takes requests, so Ray's ``max_batch_size x max_concurrent_batches`` never exceeds
``max_ongoing_requests``), and a ``ContinuousBatcher`` forms the model steps: a group that finds
the model idle runs at once, groups that arrive during a step join the next one, up to
``batch.max_batch_size`` texts. One group per request matters for a search: its query variants
handed over one by one started a step with the first alone and ran the rest in a second. The engine
splits each step into forward passes by tokens, longest first, so a long text never pads
dozens of short ones. Batch knobs change at run time via ``user_config``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter
from typing import Any

from ray import serve
from ray.serve import metrics

from serve_app.core.batching import ContinuousBatcher
from serve_app.core.contracts import EmbedOutput, Truncate
from serve_app.core.embedding import EmbeddingService, EmbedItem, fill_gaps, load_encoder
from serve_app.core.encoder import InputType, M3Encoder
from serve_app.serving.observability import BREAKER_STATES, metric
from serve_app.settings import Settings

_BATCH_BOUNDARIES: list[float] = [1, 2, 4, 8, 16, 32, 64, 128, 256]
_BATCH_MS_BOUNDARIES: list[float] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000]


#: Groups a replica hands to the batcher at once: its ``max_ongoing_requests`` floor (``app.py``).
HANDOFF = 64


def _redis_check(state: str) -> dict[str, str]:
    return {"status": "down", "detail": state} if state.startswith("down") else {"status": state}


@serve.deployment(
    name="Embedder", max_ongoing_requests=64, health_check_period_s=10, health_check_timeout_s=60
)
class Embedder:
    def __init__(self, settings: Settings) -> None:
        # Ray sets OMP_NUM_THREADS to the actor's num_cpus (often 1): size torch explicitly.
        threads = settings.model.num_threads or os.cpu_count() or 1
        model = settings.model.model_copy(update={"num_threads": threads})
        sized = settings.model_copy(update={"model": model})
        # The model itself, not only the TextEncoder interface: tokens, revision and its lock are read here.
        self.encoder: M3Encoder = load_encoder(sized)
        self.service = EmbeddingService.from_settings(sized, self.encoder)
        self._batcher = ContinuousBatcher(
            self._work, max_items=settings.batch.max_batch_size, wait_s=settings.batch.batch_wait_timeout_s
        )
        self.batch_sizes: Counter[int] = Counter()  # model steps by size (merged @serve.batch groups)
        self.forward_sizes: Counter[int] = Counter()  # forward passes by size
        self._last_ok = 0.0
        self.busy_s = 0.0  # time in model steps: against wall time, the model's utilisation
        self._cache_seen: dict[str, dict[str, int]] = {"dense+sparse": {}, "colbert": {}}
        self._count_lock = threading.Lock()
        self.m_batch = metrics.Histogram(
            "specrag_embed_batch_size",
            "texts per model step (merged dynamic batches)",
            boundaries=_BATCH_BOUNDARIES,
        )
        self.m_forward = metrics.Histogram(
            "specrag_embed_forward_batch_size", "texts per forward pass", boundaries=_BATCH_BOUNDARIES
        )
        self.m_batch_ms = metrics.Histogram(
            "specrag_embed_batch_ms",
            "time of one model step (cache + forward passes)",
            boundaries=_BATCH_MS_BOUNDARIES,
        )
        self.m_cache = metrics.Counter(
            "specrag_embed_cache_total", "cache lookups by outcome", tag_keys=("outcome",)
        )
        self.m_colbert_cache = metrics.Counter(
            "specrag_embed_colbert_cache_total",
            "lookups of the reranker's ColBERT vectors by outcome",
            tag_keys=("outcome",),
        )
        self.m_item_errors = metrics.Counter("specrag_embed_item_errors_total", "texts the model failed on")

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Batch knobs at run time through ``user_config`` (no replica restart)."""
        if "max_batch_size" in user_config:
            self._batcher.max_items = int(user_config["max_batch_size"])
        if "batch_wait_timeout_s" in user_config:
            self._batcher.wait_s = float(user_config["batch_wait_timeout_s"])
        encoder = self.encoder
        if "max_tokens_per_batch" in user_config and hasattr(encoder, "max_tokens_per_batch"):
            encoder.max_tokens_per_batch = int(user_config["max_tokens_per_batch"])
        if "encode_batch_size" in user_config and hasattr(encoder, "batch_size"):
            encoder.batch_size = int(user_config["encode_batch_size"])

    # One group per call, handed over at once: the continuous batcher forms the steps.
    @serve.batch(max_batch_size=1, batch_wait_timeout_s=0.0, max_concurrent_batches=HANDOFF)
    async def _embed_group(self, groups: list[list[EmbedItem]]) -> list[list[EmbedOutput]]:
        return [await self._batcher.submit(groups[0])]

    async def _embed_items(self, items: list[EmbedItem]) -> list[EmbedOutput]:
        """``items`` in groups of at most one model step (a large request still interleaves with
        others step by step), their outputs in order."""
        size = max(1, self._batcher.max_items)
        groups = [items[i : i + size] for i in range(0, len(items), size)]
        done = await asyncio.gather(*(self._embed_group(group) for group in groups))
        return [output for outputs in done for output in outputs]

    def _work(self, items: list[EmbedItem]) -> list[EmbedOutput]:
        """One model step (in the batcher's worker thread): cache, forward passes, bookkeeping."""
        started = time.perf_counter()
        results = self.service.embed_items(items)
        self._record(len(items), (time.perf_counter() - started) * 1000, results)
        if any(r["error"] is None and r["cached"] is None for r in results):
            self._last_ok = time.monotonic()
        return results

    def _record(self, size: int, elapsed_ms: float, results: list[EmbedOutput]) -> None:
        self.busy_s += elapsed_ms / 1000
        self.batch_sizes[size] += 1
        self.m_batch.observe(size)
        self.m_batch_ms.observe(elapsed_ms)
        while self.service.forward_batches:
            n = self.service.forward_batches.popleft()
            self.forward_sizes[n] += 1
            self.m_forward.observe(n)
        errors = sum(1 for r in results if r["error"])
        if errors:
            self.m_item_errors.inc(errors)
        if self.service.cache is not None:
            metric("breaker").set(BREAKER_STATES.get(self.service.cache.redis_state, -1))
        self._count_cache()

    def _count_cache(self) -> None:
        """Cache counters into the metrics. Called from the batch worker's thread and from the event
        loop (in-memory answers): the lock keeps a delta from being counted twice."""
        with self._count_lock:
            for kind, cache, counter in (
                ("dense+sparse", self.service.cache, self.m_cache),
                ("colbert", self.service.colbert_cache, self.m_colbert_cache),
            ):
                if cache is None:
                    continue
                now, seen = cache.stats.as_dict(), self._cache_seen[kind]
                for outcome, value in now.items():
                    if value > seen.get(outcome, 0):
                        counter.inc(value - seen.get(outcome, 0), tags={"outcome": outcome})
                self._cache_seen[kind] = now

    async def embed(
        self,
        texts: list[str],
        input_type: InputType = "passage",
        colbert: bool = False,
        truncate: Truncate = "end",
    ) -> list[EmbedOutput]:
        """A request's texts join the replica's dynamic batch together; concurrent requests share steps.

        ``truncate="none"`` is checked here, per request, before any text joins the batch: a text
        over the window raises ``InputTooLong`` for this request only.
        """
        if truncate == "none":
            await asyncio.to_thread(self.service.check_fits, texts, input_type)
            truncate = "end"  # nothing is over the window: no cut happens
        items = [EmbedItem(t, input_type, colbert, truncate) for t in texts]
        # Texts the in-process cache holds are answered here, on the event loop: no batch queue,
        # no worker thread (a cached query or rerank candidate costs a dict lookup).
        out = self.service.from_memory(items)
        if any(o is not None for o in out):
            self._count_cache()
        return await fill_gaps(out, lambda todo: self._embed_items([items[i] for i in todo]))

    def token_strings(self, token_ids: list[int]) -> list[str]:
        return self.encoder.tokenizer.convert_ids_to_tokens(token_ids)

    def info(self) -> dict[str, Any]:
        encoder = self.encoder
        return {
            "model": self.service.model_id,
            "revision": encoder.revision,
            "dim": self.service.dim,
            "max_length": encoder.max_length,
            "dtype": encoder.dtype,
            "pooling": encoder.pooling,
            "fingerprint": encoder.fingerprint,
            "model_key": encoder.model_key,
        }

    def stats(self) -> dict[str, Any]:
        """Batch-size histograms and cache counters of this replica (benchmarks, debugging)."""

        def cache_stats(cache: Any) -> dict[str, Any] | None:
            return None if cache is None else {**cache.stats.as_dict(), "redis": cache.redis_state}

        return {
            "pid": os.getpid(),  # fault-injection scenarios kill a replica by it
            "batch_sizes": dict(sorted(self.batch_sizes.items())),
            "forward_batches": dict(sorted(self.forward_sizes.items())),
            "busy_s": round(self.busy_s, 3),
            "cache": cache_stats(self.service.cache),
            "colbert_cache": cache_stats(self.service.colbert_cache),
        }

    async def ready(self, timeout_s: float = 5.0) -> dict[str, Any]:
        """Readiness detail: a probe text embeds to the expected dimension within ``timeout_s``
        (the model itself, not the cache), and whether Redis answers."""
        out: dict[str, Any] = {}
        started = time.perf_counter()
        if time.monotonic() - self._last_ok < 10 or self.encoder.busy:
            # Just worked, or working now: a probe would only queue behind real requests.
            out["model"] = {"status": "ok", "dim": self.service.dim, "detail": "recent or running batch"}
            cache = self.service.cache
            state = await asyncio.to_thread(cache.ping) if cache is not None else "disabled"
            out["redis"] = _redis_check(state)
            return out
        try:
            enc = await asyncio.wait_for(
                asyncio.to_thread(self.encoder.encode, ["readiness probe 準備確認"], input_type="query"),
                timeout_s,
            )
            ms = round((time.perf_counter() - started) * 1000, 2)
            good = enc.dense is not None and enc.dense.shape == (1, self.service.dim) and not enc.errors[0]
            out["model"] = {"status": "ok" if good else "down", "ms": ms, "dim": self.service.dim}
            if not good:
                out["model"]["detail"] = "no vector of the expected dimension"
        except TimeoutError:
            out["model"] = {"status": "down", "detail": f"probe took over {timeout_s} s"}
        cache = self.service.cache
        state = await asyncio.to_thread(cache.ping) if cache is not None else "disabled"
        out["redis"] = _redis_check(state)
        return out

    async def check_health(self) -> None:
        """A recent successful batch proves the model works; otherwise embed a probe text.

        The probe runs off the event loop and waits behind a running batch, so a busy replica
        is never declared dead for being busy.
        """
        if time.monotonic() - self._last_ok < 60 or self.encoder.busy:
            return  # recently worked, or working right now: busy is not dead
        out = await asyncio.to_thread(self.encoder.encode, ["health"], input_type="query", sparse=False)
        if out.dense is None or out.dense.shape != (1, self.service.dim) or out.errors[0]:
            raise RuntimeError("embedder produced no vector of the expected dimension")
        self._last_ok = time.monotonic()
