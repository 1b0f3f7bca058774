"""The GPU benchmark script on the CPU with a tiny model: it keeps running where no GPU is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from serve_app.devtools.bench.gpu import LARGE, flops_per_token, main


def test_it_needs_only_torch_and_transformers() -> None:
    """The GPU machine has Python, torch and transformers: nothing that pulls pydantic or Ray."""
    code = (
        "import sys, serve_app.devtools.bench.gpu as g; "
        "bad = [m for m in ('pydantic', 'ray', 'FlagEmbedding', 'fastapi', 'typer') if m in sys.modules]; "
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_flops_per_token_of_a_bge_m3_shaped_model() -> None:
    # linear layers about 0.6 GFLOP per token; attention adds 4 x seq x hidden x layers
    assert flops_per_token(LARGE, 1) / 1e9 == pytest.approx(0.61, abs=0.01)
    assert flops_per_token(LARGE, 8192) - flops_per_token(LARGE, 512) == pytest.approx(4 * 7680 * 1024 * 24)


def test_the_tiny_run_measures_every_shape_and_halves_an_oversized_batch(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    report = main(["--tiny", "--seconds", "0.05", "--out", str(out)])
    assert json.loads(out.read_text()) == report
    assert report["matmul_tflops"] > 0
    rows = report["runs"]["float32"]
    assert [(r["texts"], r["seq"]) for r in rows] == [(1, 16), (8, 64), (2, 256)]
    assert all(r["tokens_per_s"] > 0 and r["share_of_matmul_peak"] > 0 for r in rows)
    oom = report["oom_halving"]
    assert (oom["out_of_memory"], oom["largest_pass_that_fit"], oom["failed_texts"]) == (1, 4, 0)
