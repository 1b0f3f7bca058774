"""One thread per process runs every torch call (model loads and forward passes).

PyTorch's CPU ops run their parallel regions on an OpenMP team that belongs to the calling
thread. A second thread that runs ops gets a team of its own, and once a process has more
OpenMP threads than cores, libgomp throttles its spin-waits: every small op then pays a sleep
and a wake-up. Measured on 2 cores: a 64x384 @ 384x1536 matmul takes 280 µs from one thread and
390 µs from a second thread once the first had run one; the Embedder, whose model steps ran on
``asyncio.to_thread``'s pool (a different thread from step to step, and another than the one
that loaded the model), spent 1.55 x the in-process engine's time on the same texts. Passing
every torch call to this one thread keeps one team whoever calls (a replica's loop, a worker
thread, a Ray Data actor, the CLI). Written here because no library does this small thing:
a ``ThreadPoolExecutor`` of one thread, re-entrant for calls made from that thread.
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
