"""M3 encoders: one forward pass gives dense, sparse (lexical weights) and ColBERT vectors.

``M3Encoder`` loads any M3-format directory (``BAAI/bge-m3`` or the offline build) with
FlagEmbedding's own loading code, then drives the loaded model directly: FlagEmbedding's
``encode`` probes the batch size with an extra forward pass on every call and returns string
token ids, neither of which a server wants. ``TextEncoder`` is the interface every node that
embeds relies on; its deterministic test double, for tests that must not load a model, is
``serve_app.testing.doubles.HashEncoder``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from serve_app.core.batching import (
    is_out_of_memory,
    plan_batches,
    run_isolating_failures,
    truncate_at_sentence,
    truncate_start_at_sentence,
)
from serve_app.core.compute_threads import on_torch_thread
from serve_app.core.contracts import Truncate

log = logging.getLogger(__name__)

InputType = Literal["query", "passage"]


@dataclass
class Encoded:
    """Outputs for a list of texts, in input order; a channel not asked for is ``None``."""

    dense: np.ndarray | None = None  # (n, dim) float32, L2-normalised
    sparse: list[dict[int, float]] | None = None  # token id -> weight, special tokens removed
    colbert: list[np.ndarray] | None = None  # per text (tokens, dim) float32, L2-normalised rows
    token_counts: list[int] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)  # cut at a sentence end to fit max_length
    errors: list[str | None] = field(default_factory=list)  # per item; its vectors are zeros then
    batches: list[int] = field(default_factory=list)  # sizes of the forward passes that ran


class TextEncoder(Protocol):
    """What every node that embeds needs; the Embedder deployment wraps one of these."""

    model_id: str
    dim: int
    fingerprint: str  # every setting that changes a vector bit for bit (cache keys)
    model_key: str  # the vector space (ingest hashes, the model a collection was built with)
    max_length: int  # the token window, special tokens and the input-type prefix included

    def count_tokens(self, texts: Sequence[str], *, input_type: InputType = "passage") -> list[int]: ...

    def encode(
        self,
        texts: Sequence[str],
        *,
        input_type: InputType = "passage",
        dense: bool = True,
        sparse: bool = True,
        colbert: bool = False,
        truncate: Truncate = "end",
    ) -> Encoded: ...


class InputTooLong(ValueError):
    """Texts over the model's token window where the caller asked for no truncation.

    ``over`` maps each such text's position to its token count, ``limit`` is the window and
    ``what`` names the texts for the message (``documents``; ``query`` is one text). A client
    error (the HTTP layer answers it with a 4xx naming the limit), raised before any forward
    pass, so it never fails the other texts of a shared batch.
    """

    def __init__(self, over: dict[int, int], limit: int, what: str = "texts") -> None:
        self.over, self.limit, self.what = dict(over), limit, what
        first = min(self.over)
        name = what if what == "query" else f"{what}[{first}]"
        more = f" (and {len(over) - 1} more)" if len(over) > 1 else ""
        super().__init__(f"{name} has {over[first]} tokens{more}, over the model's limit of {limit} tokens")

    def __reduce__(self) -> tuple[type, tuple[dict[int, int], int, str]]:
        return (InputTooLong, (self.over, self.limit, self.what))  # crosses Ray calls intact


def colbert_maxsim(query: np.ndarray, passage: np.ndarray) -> float:
    """ColBERT late interaction as BGE-M3 scores it: mean over query tokens of the best passage token."""
    if query.size == 0 or passage.size == 0:
        return 0.0
    # Rows travel as float16; CPUs multiply float32 far faster (and exactly the same values).
    q, p = query.astype(np.float32, copy=False), passage.astype(np.float32, copy=False)
    return float((q @ p.T).max(axis=1).mean())


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
        max_tokens_per_batch: int = 16_384,
        num_threads: int = 0,
        pooling: str = "auto",
        query_prefix: str | None = None,
        passage_prefix: str | None = None,
    ) -> None:
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
        self.max_tokens_per_batch = max_tokens_per_batch
        self.model_id = meta.get("model_id") or Path(name_or_path).name or name_or_path
        self.revision = self._revision(name_or_path, meta)
        # What decides the vector space: ingest hashes and collections carry it (fp16 and fp32
        # vectors of one model are interchangeable, so dtype is not part of it).
        self.model_key = (
            f"{self.model_id}@{self.revision}|{self.pooling}|{self.query_prefix}|{self.passage_prefix}"
            f"|{self.max_length}"
        )
        # Everything that changes a vector bit for bit: cache keys carry it.
        self.fingerprint = f"{self.model_key}|{dtype}"

        flag = on_torch_thread(self._load, name_or_path, num_threads)
        self.tokenizer = flag.tokenizer
        self.model = flag.model
        self.dim = int(self.model.model.config.hidden_size)
        tok = self.tokenizer
        self._special_ids = {
            tok.convert_tokens_to_ids(t)
            for t in (tok.cls_token, tok.eos_token, tok.pad_token, tok.unk_token)
            if t is not None
        }
        self._lock = threading.Lock()  # held while a plan runs (``busy``); the torch thread serialises
        log.info(
            "loaded %s on %s (%s, pooling=%s, dim=%d)",
            name_or_path,
            self.device,
            dtype,
            self.pooling,
            self.dim,
        )

    def _load(self, name_or_path: str, num_threads: int) -> Any:
        """FlagEmbedding's model on ``self.device`` in ``self.dtype`` (on the torch thread)."""
        import torch
        from FlagEmbedding import BGEM3FlagModel  # 5-9 s import: only where a model is really loaded

        if num_threads > 0:
            torch.set_num_threads(num_threads)
        flag = BGEM3FlagModel(
            name_or_path,
            use_fp16=self.dtype == "float16",
            use_bf16=self.dtype == "bfloat16",
            devices=self.device,
            pooling_method=self.pooling,
            normalize_embeddings=True,
            query_max_length=self.max_length,
            passage_max_length=self.max_length,
        )
        torch_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
        flag.model.to(device=self.device, dtype=torch_dtype[self.dtype])
        flag.model.eval()
        return flag

    @property
    def busy(self) -> bool:
        """A forward plan is running (health checks do not queue a probe behind it)."""
        return self._lock.locked()

    @staticmethod
    def _revision(name_or_path: str, meta: dict) -> str:
        """Changes whenever the weights do; part of every cache key, so new weights never read old vectors."""
        if meta.get("source_sha256"):
            return meta["source_sha256"][:12]
        path = Path(name_or_path)
        if not path.is_dir():  # a hub id: the cached snapshot's directory names its commit
            try:
                from huggingface_hub import snapshot_download

                return Path(snapshot_download(name_or_path, local_files_only=True)).name[:12]
            except Exception:
                return "unknown"
        files = sorted(p for p in path.glob("*") if p.suffix in {".json", ".safetensors", ".bin", ".pt"})
        stamp = (
            "|".join(f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in files) or name_or_path
        )
        return hashlib.sha256(stamp.encode()).hexdigest()[:12]

    @staticmethod
    def _sidecar(name_or_path: str) -> dict:
        path = Path(name_or_path) / "specrag_model.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def _prefixed(self, texts: Sequence[str], input_type: InputType) -> list[str]:
        prefix = self.query_prefix if input_type == "query" else self.passage_prefix
        return [prefix + t for t in texts] if prefix else list(texts)

    def count_tokens(self, texts: Sequence[str], *, input_type: InputType = "passage") -> list[int]:
        enc = self.tokenizer(self._prefixed(texts, input_type), truncation=False, verbose=False)
        return [len(ids) for ids in enc["input_ids"]]

    def _tokenize(
        self, texts: Sequence[str], input_type: InputType, truncate: Truncate = "end"
    ) -> tuple[list[list[int]], list[bool]]:
        """Token ids per text; a text over ``max_length`` is cut at its last sentence end that fits
        (``end``), at its first sentence start that fits (``start``), or refused (``none``)."""
        prefixed = self._prefixed(texts, input_type)
        enc = self.tokenizer(prefixed, truncation=False, return_offsets_mapping=True, verbose=False)
        ids: list[list[int]] = list(enc["input_ids"])
        truncated = [False] * len(texts)
        over = [i for i, row in enumerate(ids) if len(row) > self.max_length]
        if not over:
            return ids, truncated
        if truncate == "none":
            raise InputTooLong({i: len(ids[i]) for i in over}, self.max_length)
        prefix_len = len(prefixed[0]) - len(texts[0])
        if truncate == "start":
            self._cut_starts(texts, over, ids, enc["offset_mapping"], prefix_len, input_type)
        else:
            cut_texts = []
            for i in over:
                # End of the last content token that fits (<s> ... </s> take two places).
                char_limit = enc["offset_mapping"][i][self.max_length - 2][1] - prefix_len
                cut_texts.append(truncate_at_sentence(texts[i], max(char_limit, 1)))
            again = self.tokenizer(
                self._prefixed(cut_texts, input_type), truncation=True, max_length=self.max_length
            )["input_ids"]
            for i, row in zip(over, again, strict=True):
                ids[i] = row
        for i in over:
            truncated[i] = True
        return ids, truncated

    def _cut_starts(
        self,
        texts: Sequence[str],
        over: list[int],
        ids: list[list[int]],
        offsets: list[list[tuple[int, int]]],
        prefix_len: int,
        input_type: InputType,
    ) -> None:
        """Cut the start of each text in ``over`` (in ``ids``): the prefix stays, the window keeps
        the text's end from a sentence start on, else exactly the last tokens that fit."""
        cuts, kept = [], []
        for i in over:
            n, spans = len(ids[i]), offsets[i]
            p = 0  # prefix tokens ("query: "), kept in front
            while 1 + p < n - 1 and spans[1 + p][1] <= prefix_len:
                p += 1
            first = n - 1 - (self.max_length - 2 - p)  # first content token that still fits
            cuts.append(truncate_start_at_sentence(texts[i], max(spans[first][0] - prefix_len, 0)))
            kept.append((p, first))
        again = self.tokenizer(self._prefixed(cuts, input_type), truncation=False, verbose=False)["input_ids"]
        for i, (p, first), row in zip(over, kept, again, strict=True):
            # A sentence cut re-tokenised a token longer falls back to the exact token cut.
            ids[i] = list(row) if len(row) <= self.max_length else ids[i][: 1 + p] + ids[i][first:]

    def encode(
        self,
        texts: Sequence[str],
        *,
        input_type: InputType = "passage",
        dense: bool = True,
        sparse: bool = True,
        colbert: bool = False,
        truncate: Truncate = "end",
    ) -> Encoded:
        """One forward pass per token-capped batch yields every output asked for.

        ``truncate`` decides what happens to a text over ``max_length`` (``_tokenize``); with
        ``"none"`` such a text raises ``InputTooLong`` before any forward pass.
        A batch that fails (out of memory, or one input the model chokes on) is halved until
        it runs; an item that fails alone is reported in ``errors``, the rest are unaffected.
        """
        if not (dense or sparse or colbert):
            raise ValueError("ask for at least one of dense, sparse, colbert")
        n = len(texts)
        out = Encoded(
            dense=np.zeros((n, self.dim), np.float32) if dense else None,
            sparse=[{} for _ in range(n)] if sparse else None,
            colbert=[np.zeros((0, self.dim), np.float32) for _ in range(n)] if colbert else None,
            token_counts=[0] * n,
            truncated=[False] * n,
            errors=[None] * n,
        )
        if n == 0:
            return out
        ids, out.truncated = self._tokenize(texts, input_type, truncate)
        out.token_counts = [len(row) for row in ids]

        def run(idx: list[int]) -> None:
            self._forward(idx, ids, out, dense=dense, sparse=sparse, colbert=colbert)
            out.batches.append(len(idx))

        def failed(i: int, exc: BaseException) -> None:
            kind = "out of memory" if is_out_of_memory(exc) else type(exc).__name__
            out.errors[i] = f"{kind}: {str(exc).splitlines()[0][:200] if str(exc) else ''}".rstrip(": ")
            log.warning("item %d failed alone (%s tokens): %s", i, out.token_counts[i], out.errors[i])

        def split(exc: BaseException) -> None:
            log.warning("batch failed (%s); halving it", type(exc).__name__)
            self._release_memory()

        plan = plan_batches(out.token_counts, max_items=self.batch_size, max_tokens=self.max_tokens_per_batch)

        def run_plan() -> None:
            with self._lock:
                for batch in plan:
                    run_isolating_failures(batch, run, failed, split)

        on_torch_thread(run_plan)
        return out

    def _release_memory(self) -> None:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def _forward(
        self, idx: list[int], ids: list[list[int]], out: Encoded, *, dense: bool, sparse: bool, colbert: bool
    ) -> None:
        import torch

        with torch.inference_mode():
            batch = self.tokenizer.pad(
                {"input_ids": [ids[i] for i in idx]}, padding=True, return_tensors="pt"
            ).to(self.device)
            result = self.model(batch, return_dense=dense, return_sparse=sparse, return_colbert_vecs=colbert)
            lengths = batch["attention_mask"].sum(dim=1).tolist()
            if dense and out.dense is not None:
                out.dense[idx] = result["dense_vecs"].float().cpu().numpy()  # copied into out's rows
            if sparse and out.sparse is not None:
                weights = result["sparse_vecs"].squeeze(-1).float().cpu().numpy()
                for row, i in enumerate(idx):
                    out.sparse[i] = self._lexical(ids[i], weights[row])
            if colbert and out.colbert is not None:
                vecs = result["colbert_vecs"].float().cpu().numpy()
                for row, i in enumerate(idx):
                    out.colbert[i] = vecs[row, : lengths[row] - 1]  # tokens after CLS, as FlagEmbedding

    def _lexical(self, token_ids: list[int], weights: np.ndarray) -> dict[int, float]:
        lexical: dict[int, float] = {}
        for token, weight in zip(token_ids, weights[: len(token_ids)].tolist(), strict=True):
            if weight > 0 and token not in self._special_ids and weight > lexical.get(token, 0.0):
                lexical[token] = weight
        return lexical
