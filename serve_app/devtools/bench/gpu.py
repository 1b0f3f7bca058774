"""GPU benchmark of the embedding engine's model, for a GPU that is at hand for a few minutes only.

Needs nothing but Python, torch and transformers (no Ray, FlagEmbedding or pydantic: run it as
``python -m serve_app.devtools.bench.gpu`` from a checkout on the GPU machine). It builds a
BGE-M3-shaped model with random weights (XLM-R large: 24 layers, hidden 1024, 8,194 positions,
plus M3's dense, sparse and ColBERT heads: the same cost per token as BGE-M3, no download), then

1. measures the device's dense bf16 matmul rate (the peak a transformer forward can approach);
2. runs the engine's forward pass (the M3 heads over XLM-R, batches planned longest first by
   ``serve_app.core.batching.plan_batches`` as the service plans them) in fp16 and bf16 over a grid
   of batch shapes and lengths up to 8,192 tokens: tokens/s, FLOPs per token (linear layers
   ≈ 0.6 GFLOP/token, plus attention, which grows with the sequence), and the share of the
   matmul rate achieved (TEI reaches about a third of peak on its L4 benchmark);
3. exercises the out-of-memory halving for real: one oversized batch through
   ``run_isolating_failures`` (the service's fault isolation), which must shrink it until it fits.

It writes JSON (``--out``, default ``docs/benchmarks/gpu.json``) and prints a table. ``--tiny``
runs the same code on a two-layer model on the CPU in seconds (the unit test keeps it working).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

from serve_app.core.batching import is_out_of_memory, plan_batches, run_isolating_failures

LARGE = {"hidden": 1024, "layers": 24, "heads": 16, "ffn": 4096, "vocab": 250_002, "positions": 8194}
TINY = {"hidden": 64, "layers": 2, "heads": 4, "ffn": 128, "vocab": 1000, "positions": 514}
# (texts per batch, tokens per text): short queries, passages, long documents, BGE-M3's window.
GRID = [(1, 32), (32, 32), (128, 128), (64, 512), (16, 2048), (4, 8192), (1, 8192)]
TINY_GRID = [(1, 16), (8, 64), (2, 256)]


def xlmr_config(shape: dict[str, int], **extra: Any) -> Any:
    """An XLM-R configuration of ``shape`` (``LARGE`` is BGE-M3's), ``extra`` passed through."""
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        intermediate_size=shape["ffn"],
        max_position_embeddings=shape["positions"],
        type_vocab_size=1,
        **extra,
    )


def build_model(shape: dict[str, int], device: str, dtype: Any) -> Any:
    """XLM-R with M3's three heads, random weights (``transformers`` only)."""
    import torch
    from transformers import XLMRobertaModel

    config = xlmr_config(shape, attn_implementation="sdpa")

    class M3(torch.nn.Module):
        """BGE-M3's outputs from one pass: CLS dense, ReLU-linear sparse weights, ColBERT rows."""

        def __init__(self) -> None:
            super().__init__()
            self.encoder = XLMRobertaModel(config, add_pooling_layer=False)
            self.colbert = torch.nn.Linear(shape["hidden"], shape["hidden"])
            self.sparse = torch.nn.Linear(shape["hidden"], 1)

        def forward(self, ids: Any, mask: Any) -> tuple[Any, Any, Any]:
            hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            dense = torch.nn.functional.normalize(hidden[:, 0], dim=-1)
            sparse = torch.relu(self.sparse(hidden)).squeeze(-1)
            colbert = torch.nn.functional.normalize(self.colbert(hidden[:, 1:]), dim=-1)
            return dense, sparse, colbert * mask[:, 1:, None]

    with torch.device(device):  # random init on the device itself: seconds, not a CPU minute
        model = M3()
    return model.to(dtype=dtype).eval()


def flops_per_token(shape: dict[str, int], seq: int) -> float:
    """Forward FLOPs per token: 2 x the weights of the linear layers (Q, K, V, O, FFN, heads), plus
    attention's QK^T and AV (2 x 2 x seq x hidden per layer), which grow with the sequence."""
    h, layers = shape["hidden"], shape["layers"]
    linear = layers * (4 * h * h + 2 * h * shape["ffn"]) + h * h + h
    return 2.0 * linear + 4.0 * seq * h * layers


def matmul_rate(device: str, dtype: Any, n: int, seconds: float = 3.0) -> float:
    """Dense n x n matmuls for about ``seconds``: FLOP/s."""
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    _sync(device)
    for _ in range(3):
        a @ b
    _sync(device)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(10):
            a @ b
        count += 10
        _sync(device)
    return 2.0 * n**3 * count / (time.perf_counter() - started)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_shape(model: Any, shape: dict[str, int], device: str, texts: int, seq: int, seconds: float) -> dict:
    """Repeated forward passes of ``texts`` x ``seq`` tokens, planned as the service plans them."""
    import torch

    lengths = [seq] * texts
    plan = plan_batches(lengths, max_items=max(texts, 1), max_tokens=max(texts * seq, seq))
    ids = torch.randint(5, shape["vocab"], (texts, seq), device=device)
    mask = torch.ones(texts, seq, dtype=torch.long, device=device)
    with torch.inference_mode():
        for batch in plan:  # warm-up (kernels, allocator)
            model(ids[batch], mask[batch])
        _sync(device)
        passes, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds or passes == 0:
            for batch in plan:
                model(ids[batch], mask[batch])
            passes += 1
            _sync(device)
        elapsed = time.perf_counter() - started
    tokens = texts * seq * passes
    return {
        "texts": texts,
        "seq": seq,
        "tokens_per_s": round(tokens / elapsed, 1),
        "texts_per_s": round(texts * passes / elapsed, 2),
        "ms_per_batch": round(elapsed / passes * 1000, 2),
        "gflop_per_token": round(flops_per_token(shape, seq) / 1e9, 4),
        "tflops": tokens * flops_per_token(shape, seq) / elapsed / 1e12,
    }


def oom_halving(
    model: Any, shape: dict[str, int], device: str, texts: int, seq: int, limit: int | None
) -> dict:
    """One oversized batch through the service's fault isolation: out of memory halves it until
    every half fits. ``limit`` (tokens per pass) simulates the device's memory where none runs out
    (the CPU test); on a GPU it is None and the OOM is real."""
    import torch

    ids = torch.randint(5, shape["vocab"], (texts, seq), device=device)
    mask = torch.ones(texts, seq, dtype=torch.long, device=device)
    passes: list[int] = []
    splits: list[str] = []
    failed: list[int] = []

    def run(batch: list[int]) -> None:
        if limit is not None and len(batch) * seq > limit:
            raise RuntimeError("simulated: CUDA out of memory")
        with torch.inference_mode():
            model(ids[batch], mask[batch])
        _sync(device)
        passes.append(len(batch))

    def split(exc: BaseException) -> None:
        splits.append("out of memory" if is_out_of_memory(exc) else type(exc).__name__)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()

    started = time.perf_counter()
    run_isolating_failures(list(range(texts)), run, lambda i, exc: failed.append(i), split)
    return {
        "texts": texts,
        "seq": seq,
        "halvings": len(splits),
        "out_of_memory": sum(s == "out of memory" for s in splits),
        "largest_pass_that_fit": max(passes, default=0),
        "passes": len(passes),
        "failed_texts": len(failed),
        "seconds": round(time.perf_counter() - started, 2),
    }


def _oversized(shape: dict[str, int], device: str) -> tuple[int, int, int | None]:
    """(texts, seq, simulated limit): on a GPU the smallest power-of-two batch of 8,192-token texts
    whose activations (~2 bytes x (FFN + 4 x hidden) per token, per layer in flight) exceed 1.3 x
    the device's memory, so it fails for real and one or two halvings make it fit; on the CPU a
    small batch and a simulated limit of half of it."""
    import torch

    if device == "cpu":
        return 8, 256, 4 * 256
    seq = 8192
    per_token = 2 * (shape["ffn"] + 4 * shape["hidden"])
    total = torch.cuda.get_device_properties(0).total_memory
    return 2 ** math.ceil(math.log2(1.3 * total / (seq * per_token))), seq, None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a two-layer model on the CPU (the test)")
    parser.add_argument("--seconds", type=float, default=2.0, help="per shape and dtype")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/gpu.json"))
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    shape, grid = (TINY, TINY_GRID) if args.tiny else (LARGE, GRID)
    dtypes = (
        {"float32": torch.float32}
        if device == "cpu"
        else {"float16": torch.float16, "bfloat16": torch.bfloat16}
    )
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "shape": shape,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    peak_dtype = torch.bfloat16 if device == "cuda" else torch.float32
    peak = matmul_rate(device, peak_dtype, 8192 if device == "cuda" else 256) / 1e12
    report["matmul_tflops"] = round(peak, 4)
    report["runs"] = {}
    for name, dtype in dtypes.items():
        model = build_model(shape, device, dtype)
        rows = []
        for texts, seq in grid:
            try:
                row = run_shape(model, shape, device, texts, seq, args.seconds)
                row["share_of_matmul_peak"] = round(row["tflops"] / peak, 4)
                row["tflops"] = round(row["tflops"], 4)
            except Exception as exc:  # one shape out of memory must not lose the others
                if not is_out_of_memory(exc):
                    raise
                row = {"texts": texts, "seq": seq, "error": "out of memory"}
                torch.cuda.empty_cache()
            rows.append(row)
            print(json.dumps({"dtype": name, **row}), flush=True)
        report["runs"][name] = rows
        if name == next(iter(dtypes)):
            report["oom_halving"] = {
                "dtype": name,
                **oom_halving(model, shape, device, *_oversized(shape, device)),
            }
            print(json.dumps(report["oom_halving"]), flush=True)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
