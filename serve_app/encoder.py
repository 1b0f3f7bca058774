"""M3 encoders: one forward pass gives dense, sparse (lexical weights) and ColBERT vectors.

``M3Encoder`` loads any M3-format directory (``BAAI/bge-m3`` or the offline build) with
FlagEmbedding's own loading code, then drives the loaded model directly: FlagEmbedding's
``encode`` probes the batch size with an extra forward pass on every call and returns string
token ids, neither of which a server wants. ``HashEncoder`` is the deterministic test double
with the same interface (Haystack-style), for unit tests that must not load a model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

log = logging.getLogger(__name__)

InputType = Literal["query", "passage"]


@dataclass
class Encoded:
    """Outputs for a list of texts, in input order; a channel not asked for is ``None``."""

    dense: np.ndarray | None = None  # (n, dim) float32, L2-normalised
    sparse: list[dict[int, float]] | None = None  # token id -> weight, special tokens removed
    colbert: list[np.ndarray] | None = None  # per text (tokens, dim) float32, L2-normalised rows
    token_counts: list[int] = field(default_factory=list)


class TextEncoder(Protocol):
    """What every node that embeds needs; the Embedder deployment wraps one of these."""

    model_id: str
    dim: int

    def encode(
        self,
        texts: Sequence[str],
        *,
        input_type: InputType = "passage",
        dense: bool = True,
        sparse: bool = True,
        colbert: bool = False,
    ) -> Encoded: ...


def colbert_maxsim(query: np.ndarray, passage: np.ndarray) -> float:
    """ColBERT late interaction as BGE-M3 scores it: mean over query tokens of the best passage token."""
    if query.size == 0 or passage.size == 0:
        return 0.0
    return float((query @ passage.T).max(axis=1).mean())


def lexical_score(query: dict[int, float], passage: dict[int, float]) -> float:
    """BGE-M3's sparse score: sum of weight products over shared tokens."""
    if len(query) > len(passage):
        query, passage = passage, query
    return float(sum(w * passage[t] for t, w in query.items() if t in passage))


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class M3Encoder:
    """BGE-M3 (or the offline stand-in) in-process; thread-safe for concurrent ``encode`` calls."""

    def __init__(
        self,
        name_or_path: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_length: int = 512,
        batch_size: int = 16,
        num_threads: int = 0,
        pooling: str = "auto",
        query_prefix: str | None = None,
        passage_prefix: str | None = None,
    ) -> None:
        import torch
        from FlagEmbedding import BGEM3FlagModel  # 5-9 s import: only where a model is really loaded

        if num_threads > 0:
            torch.set_num_threads(num_threads)
        meta = self._sidecar(name_or_path)
        self.device = _resolve_device(device)
        on_gpu = self.device.startswith("cuda")
        if dtype == "auto":
            dtype = "float16" if on_gpu else "float32"
        if not on_gpu and dtype == "float16":
            raise ValueError("float16 does not run on CPU; use float32 or bfloat16")
        self.dtype = dtype
        self.pooling = meta.get("pooling", "cls") if pooling == "auto" else pooling
        self.query_prefix = meta.get("query_prefix", "") if query_prefix is None else query_prefix
        self.passage_prefix = meta.get("passage_prefix", "") if passage_prefix is None else passage_prefix
        self.max_length = min(max_length, int(meta.get("max_length", max_length)))
        self.batch_size = batch_size
        self.model_id = meta.get("model_id") or Path(name_or_path).name or name_or_path

        flag = BGEM3FlagModel(
            name_or_path,
            use_fp16=dtype == "float16",
            use_bf16=dtype == "bfloat16",
            devices=self.device,
            pooling_method=self.pooling,
            normalize_embeddings=True,
            query_max_length=self.max_length,
            passage_max_length=self.max_length,
        )
        self.tokenizer = flag.tokenizer
        self.model = flag.model
        torch_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
        self.model.to(device=self.device, dtype=torch_dtype)
        self.model.eval()
        self.dim = int(self.model.model.config.hidden_size)
        tok = self.tokenizer
        self._special_ids = {
            tok.convert_tokens_to_ids(t)
            for t in (tok.cls_token, tok.eos_token, tok.pad_token, tok.unk_token)
            if t is not None
        }
        self._lock = threading.Lock()  # one forward at a time per replica; torch uses the cores
        log.info(
            "loaded %s on %s (%s, pooling=%s, dim=%d)",
            name_or_path,
            self.device,
            dtype,
            self.pooling,
            self.dim,
        )

    @staticmethod
    def _sidecar(name_or_path: str) -> dict:
        path = Path(name_or_path) / "specrag_model.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def _prefixed(self, texts: Sequence[str], input_type: InputType) -> list[str]:
        prefix = self.query_prefix if input_type == "query" else self.passage_prefix
        return [prefix + t for t in texts] if prefix else list(texts)

    def count_tokens(self, texts: Sequence[str], *, input_type: InputType = "passage") -> list[int]:
        enc = self.tokenizer(self._prefixed(texts, input_type), add_special_tokens=True, truncation=False)
        return [len(ids) for ids in enc["input_ids"]]

    def encode(
        self,
        texts: Sequence[str],
        *,
        input_type: InputType = "passage",
        dense: bool = True,
        sparse: bool = True,
        colbert: bool = False,
    ) -> Encoded:
        import torch

        if not (dense or sparse or colbert):
            raise ValueError("ask for at least one of dense, sparse, colbert")
        n = len(texts)
        out = Encoded(
            dense=np.zeros((n, self.dim), np.float32) if dense else None,
            sparse=[{} for _ in range(n)] if sparse else None,
            colbert=[np.zeros((0, self.dim), np.float32) for _ in range(n)] if colbert else None,
            token_counts=[0] * n,
        )
        if n == 0:
            return out
        enc = self.tokenizer(
            self._prefixed(texts, input_type), truncation=True, max_length=self.max_length, padding=False
        )
        ids = enc["input_ids"]
        order = sorted(range(n), key=lambda i: -len(ids[i]))  # similar lengths share a batch: less padding
        with self._lock, torch.inference_mode():
            for start in range(0, n, self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = self.tokenizer.pad(
                    {"input_ids": [ids[i] for i in idx]}, padding=True, return_tensors="pt"
                ).to(self.device)
                result = self.model(
                    batch, return_dense=dense, return_sparse=sparse, return_colbert_vecs=colbert
                )
                mask = batch["attention_mask"].sum(dim=1).tolist()
                if dense:
                    out.dense[idx] = result["dense_vecs"].float().cpu().numpy()
                if sparse:
                    weights = result["sparse_vecs"].squeeze(-1).float().cpu().numpy()
                    for row, i in enumerate(idx):
                        out.sparse[i] = self._lexical(ids[i], weights[row])
                if colbert:
                    vecs = result["colbert_vecs"].float().cpu().numpy()
                    for row, i in enumerate(idx):
                        out.colbert[i] = vecs[row, : mask[row] - 1]  # tokens after CLS, as FlagEmbedding
                for row, i in enumerate(idx):
                    out.token_counts[i] = int(mask[row])
        return out

    def _lexical(self, token_ids: list[int], weights: np.ndarray) -> dict[int, float]:
        lexical: dict[int, float] = {}
        for token, weight in zip(token_ids, weights[: len(token_ids)].tolist(), strict=True):
            if weight > 0 and token not in self._special_ids and weight > lexical.get(token, 0.0):
                lexical[token] = weight
        return lexical


_WORD = re.compile(r"[A-Za-z0-9_]+|[^\sA-Za-z0-9_]")


class HashEncoder:
    """Deterministic stand-in: words (and single CJK characters) hashed to random unit vectors.

    Texts sharing words get similar vectors, so ranking tests mean something, yet no model loads.
    """

    def __init__(self, dim: int = 32, model_id: str = "hash-encoder") -> None:
        self.dim = dim
        self.model_id = model_id
        self.calls = 0

    def _token_id(self, token: str) -> int:
        return 5 + int.from_bytes(hashlib.blake2b(token.lower().encode(), digest_size=4).digest()) % 250_000

    def _vector(self, token: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.blake2b(token.lower().encode(), digest_size=8).digest())
        v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
        return v / np.linalg.norm(v)

    def encode(
        self,
        texts: Sequence[str],
        *,
        input_type: InputType = "passage",
        dense: bool = True,
        sparse: bool = True,
        colbert: bool = False,
    ) -> Encoded:
        self.calls += 1
        tokens = [_WORD.findall(t) or [""] for t in texts]
        vectors = [np.stack([self._vector(tok) for tok in toks]) for toks in tokens]
        out = Encoded(token_counts=[len(t) + 2 for t in tokens])
        if dense:
            pooled = np.stack([v.mean(axis=0) for v in vectors]) if vectors else np.zeros((0, self.dim))
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            out.dense = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        if sparse:
            out.sparse = [{self._token_id(tok): 1.0 for tok in toks if tok} for toks in tokens]
        if colbert:
            out.colbert = vectors
        return out
