"""Every torch call of a process runs on one thread, whoever calls; numpy's BLAS runs on one."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from serve_app.core.compute_threads import on_torch_thread


def _name() -> str:
    return threading.current_thread().name


def test_calls_from_many_threads_run_on_one_thread() -> None:
    with ThreadPoolExecutor(4) as pool:
        names = set(pool.map(lambda _: on_torch_thread(_name), range(16)))
    assert len(names) == 1 and names.pop().startswith("specrag-torch")
    assert on_torch_thread(_name) != _name(), "the caller's thread is not the torch thread"


def test_a_call_made_on_the_torch_thread_runs_at_once() -> None:
    # Re-entrant: queueing it behind its own caller would deadlock.
    assert on_torch_thread(lambda: on_torch_thread(_name)) == on_torch_thread(_name)


def test_errors_reach_the_caller() -> None:
    def boom() -> None:
        raise ValueError("model failed")

    with pytest.raises(ValueError, match="model failed"):
        on_torch_thread(boom)
    assert on_torch_thread(lambda: 2 + 2) == 4, "the thread survives a failed call"


def test_numpy_blas_runs_on_one_thread_after_the_limit() -> None:
    import numpy as np
    from threadpoolctl import threadpool_info

    from serve_app.core.compute_threads import one_blas_thread

    one_blas_thread()
    one_blas_thread()  # idempotent
    blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
    assert blas and all(p["num_threads"] == 1 for p in blas), blas
    a = np.ones((64, 384), np.float32)
    assert float((a @ a.T)[0, 0]) == 384.0
