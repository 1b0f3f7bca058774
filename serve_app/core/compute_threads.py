"""The threads of the numeric libraries: one thread runs every torch call; numpy's BLAS runs on one.

**torch.** PyTorch's CPU ops run their parallel regions on an OpenMP team that belongs to the
calling thread. A second thread that runs ops gets a team of its own, and once a process has
more OpenMP threads than cores, libgomp throttles its spin-waits: every small op then pays a
sleep and a wake-up. Measured on 2 cores: a 64x384 @ 384x1536 matmul takes 280 µs from one
thread and 390 µs from a second thread once the first had run one; the Embedder, whose model
steps ran on ``asyncio.to_thread``'s pool (a different thread from step to step, and another than
the one that loaded the model), spent 1.55 x the in-process engine's time on the same texts.
``on_torch_thread`` passes every torch call to one thread, whoever calls (a replica's loop, a
worker thread, a Ray Data actor, the CLI): the standard library's ``ThreadPoolExecutor`` of one
thread, re-entrant for calls made from that thread (no library offers this; it is ten lines).

**numpy.** The ColBERT MaxSim (a few small matmuls per rerank) is numpy's only BLAS work here.
OpenBLAS runs it on a thread per core and its threads then spin, waiting for more work, for
about 0.1 s: CPU the model on the same cores needed. Measured on the local stack: a search's
embed stage took 104 ms right after a rerank in the same process against 39 ms 0.3 s later,
and 41 ms either way with one BLAS thread. ``one_blas_thread`` (threadpoolctl) limits numpy's
BLAS to one thread in the process; torch's own math library is not numpy's and keeps its threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_local = threading.local()
_executor: ThreadPoolExecutor | None = None
_create = threading.Lock()
_blas_limited = False


def _mark() -> None:
    _local.torch_thread = True


def on_torch_thread(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` run on the process's torch thread; the caller blocks until it returns."""
    global _executor
    if getattr(_local, "torch_thread", False):
        return fn(*args, **kwargs)
    if _executor is None:
        with _create:
            if _executor is None:
                _executor = ThreadPoolExecutor(1, thread_name_prefix="specrag-torch", initializer=_mark)
    return _executor.submit(fn, *args, **kwargs).result()


def one_blas_thread() -> None:
    """numpy's BLAS on one thread from now on, in this process (idempotent; call where MaxSim runs)."""
    global _blas_limited
    if not _blas_limited:
        import numpy  # noqa: F401  (threadpoolctl limits the BLAS libraries already loaded)
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1, user_api="blas")
        _blas_limited = True
