"""Honest test doubles for the engines: a deterministic encoder and an in-memory chunk store.

``HashEncoder``
    The ``TextEncoder`` interface without a model: words (and single CJK characters) hashed to
    random unit vectors, so texts sharing words get similar vectors and ranking tests mean something.

``FakeStore``
    The ``serve_app.core.store.Store`` protocol (what ``Retriever`` reads) over a list of row dicts,
    answering as Milvus does: dense search by inner product of L2-normalised vectors, sparse search
    by the lexical score (sum of weight products over shared tokens) over rows sharing a query
    token, ``doc_versions`` from the ordinal-0 rows, hits carrying the scalar fields only.  Filters
    are the structured ``Filter`` values the store's builders make, evaluated with
    ``Filter.matches`` (the same clauses whose ``expr()`` Milvus would receive); a raw Milvus string
    is refused with ``TypeError`` rather than guessed at, so code under test must build its filters
    through the store.  It reuses the real store's row and query cleaning (``record_to_row``, the
    placeholder handling of sparse vectors, limit checks), so the two cannot drift apart there.
    What it does not model: HNSW's approximation (results are exact), Milvus' consistency delays
    and physical collections (there is one table; no ``on=``).
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from serve_app.core.contracts import Truncate
from serve_app.core.encoder import Encoded, InputTooLong, InputType, lexical_score
from serve_app.core.ingest import IngestReport, SourceDocument
from serve_app.core.store import (
    SCALAR_FIELDS,
    TAGS_KEY_FIELD,
    ChunkRecord,
    Filter,
    Hit,
    _check_limit,
    _clean_sparse,
    _normalize,
    chunk_ids_filter,
    doc_ids_filter,
    first_chunks_filter,
    newest_versions,
    record_to_row,
    tags_key,
)

__all__ = ["FakeStore", "HashEncoder", "MemoryMeta", "RecordingIngestor"]

_WORD = re.compile(r"[A-Za-z0-9_]+|[^\sA-Za-z0-9_]")


class HashEncoder:
    """Deterministic stand-in: words (and single CJK characters) hashed to random unit vectors.

    Texts sharing words get similar vectors, so ranking tests mean something, yet no model loads.
    """

    def __init__(self, dim: int = 32, model_id: str = "hash-encoder", max_length: int = 512) -> None:
        self.dim = dim
        self.model_id = model_id
        self.revision = "hash"
        self.max_length = max_length
        self.fingerprint = self.model_key = f"{model_id}@hash|{dim}"
        self.calls = 0

    def _token_id(self, token: str) -> int:
        return 5 + int.from_bytes(hashlib.blake2b(token.lower().encode(), digest_size=4).digest()) % 250_000

    def _vector(self, token: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.blake2b(token.lower().encode(), digest_size=8).digest())
        v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
        return v / np.linalg.norm(v)

    def count_tokens(self, texts: Sequence[str], *, input_type: InputType = "passage") -> list[int]:
        """Words plus the two special tokens, as ``encode`` counts them before any cut."""
        return [len(_WORD.findall(t) or [""]) + 2 for t in texts]

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
        """Like ``M3Encoder.encode``, a text over ``max_length`` words is cut at its end or start
        (by words, not sentences) or refused with ``InputTooLong``."""
        self.calls += 1
        tokens = [_WORD.findall(t) or [""] for t in texts]
        room = self.max_length - 2
        over = {i: len(toks) + 2 for i, toks in enumerate(tokens) if len(toks) > room}
        if over and truncate == "none":
            raise InputTooLong(over, self.max_length)
        tokens = [
            (toks[-room:] if truncate == "start" else toks[:room]) if i in over else toks
            for i, toks in enumerate(tokens)
        ]
        vectors = [np.stack([self._vector(tok) for tok in toks]) for toks in tokens]
        n = len(texts)
        out = Encoded(
            token_counts=[len(t) + 2 for t in tokens],
            truncated=[i in over for i in range(n)],
            errors=[None] * n,
        )
        if dense:
            pooled = np.stack([v.mean(axis=0) for v in vectors]) if vectors else np.zeros((0, self.dim))
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            out.dense = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        if sparse:
            out.sparse = [{self._token_id(tok): 1.0 for tok in toks if tok} for toks in tokens]
        if colbert:
            out.colbert = vectors
        return out


def _structured(expr: Filter | None) -> Filter | None:
    if expr is None or isinstance(expr, Filter):
        return expr
    raise TypeError(
        f"FakeStore evaluates structured filters only; build {expr!r} with serve_app.core.store's"
        " filter builders (build_filter, doc_version_filter, ...)"
    )


class FakeStore:
    """In-memory ``Store``; see the module docstring for what it models and what it does not.

    ``rows``: stored rows, one dict per chunk: ``chunk_id``, ``dense`` and the scalar fields that
    filters and callers use (a filter on a field a row lacks raises ``ValueError``, as Milvus
    rejects an unknown field).  On the way in, like ``MilvusStore.upsert``: ``dense`` is
    L2-normalised, ``sparse`` cleaned (an empty one becomes the placeholder nothing matches) and
    the hidden ``tags_key`` mirror derived from ``tags``; a later row with the same ``chunk_id``
    replaces the earlier one.  ``dim`` defaults to the first row's.

    ``exprs`` logs, per ``search_dense`` / ``search_sparse`` call, the Milvus expression its filter
    renders to (``None``: unfiltered), so a test can check what a real Milvus would have been sent.
    """

    def __init__(
        self, rows: Iterable[Mapping[str, Any] | ChunkRecord] = (), *, dim: int | None = None
    ) -> None:
        self.dim = dim
        self.rows: list[dict[str, Any]] = []
        self.exprs: list[str | None] = []
        self.upsert(list(rows))

    # ------------------------------------------------------------------------------- writes

    def _stored(self, row: Mapping[str, Any] | ChunkRecord) -> dict[str, Any]:
        if isinstance(row, ChunkRecord):
            if self.dim is None:
                self.dim = len(row.dense)
            return record_to_row(row, self.dim)
        if "chunk_id" not in row or "dense" not in row:
            raise ValueError("a stored row needs at least chunk_id and dense")
        out = copy.deepcopy(dict(row))
        if self.dim is None:
            self.dim = int(np.asarray(out["dense"]).reshape(-1).shape[0])
        out["dense"] = _normalize(out["dense"], self.dim)
        out["sparse"] = _clean_sparse(out.get("sparse"), for_query=False)
        if "tags" in out:
            out[TAGS_KEY_FIELD] = tags_key(out["tags"] or ())
        return out

    def upsert(self, rows: Sequence[Mapping[str, Any] | ChunkRecord]) -> int:
        """Insert or replace rows (dicts or ``ChunkRecord``s) by ``chunk_id``. Returns rows written."""
        stored = [self._stored(r) for r in rows]
        new_ids = {r["chunk_id"] for r in stored}
        latest = {r["chunk_id"]: r for r in stored}  # the last duplicate wins
        self.rows = [r for r in self.rows if r["chunk_id"] not in new_ids] + list(latest.values())
        return len(latest)

    def delete(self, *, chunk_ids: Sequence[str] | None = None, expr: Filter | None = None) -> int:
        """Delete by ids or by filter (exactly one); returns the rows that matched."""
        if (chunk_ids is None) == (expr is None):
            raise ValueError("pass exactly one of chunk_ids or expr")
        flt = chunk_ids_filter(chunk_ids or ()) if expr is None else _structured(expr)
        if flt is None or not flt.clauses:
            raise ValueError("an empty expr would delete everything; refusing")
        kept = [r for r in self.rows if not flt.matches(r)]
        deleted = len(self.rows) - len(kept)
        self.rows = kept
        return deleted

    # -------------------------------------------------------------------------------- reads

    def _log(self, expr: Filter | None) -> None:
        flt = _structured(expr)
        self.exprs.append(None if flt is None else flt.expr())

    def _matching(self, expr: Filter | None) -> list[dict[str, Any]]:
        flt = _structured(expr)
        return [r for r in self.rows if flt is None or flt.matches(r)]

    @staticmethod
    def _project(row: Mapping[str, Any], fields: Sequence[str] | None) -> dict[str, Any]:
        # A fresh copy, as every Milvus answer is: callers may mutate what they get.
        wanted = list(dict.fromkeys(["chunk_id", *(fields or SCALAR_FIELDS)]))
        return {k: copy.deepcopy(row[k]) for k in wanted if k in row}

    def _hits(self, scored: list[tuple[float, dict[str, Any]]], limit: int) -> list[Hit]:
        best = sorted(scored, key=lambda s: -s[0])[:limit]  # stable: ties keep row order
        return [Hit(r["chunk_id"], score, self._project(r, SCALAR_FIELDS)) for score, r in best]

    def search_dense(
        self, vector: Sequence[float] | np.ndarray, *, limit: int, expr: Filter | None = None
    ) -> list[Hit]:
        self._log(expr)
        _check_limit(limit)
        query = np.asarray(_normalize(vector, self.dim or len(np.asarray(vector).reshape(-1))))
        rows = self._matching(expr)
        return self._hits([(float(query @ np.asarray(r["dense"])), r) for r in rows], limit)

    def search_sparse(
        self, weights: dict[int, float], *, limit: int, expr: Filter | None = None
    ) -> list[Hit]:
        self._log(expr)
        _check_limit(limit)
        query = _clean_sparse(weights, for_query=True)
        if not query:
            return []
        scored = [(lexical_score(query, r["sparse"]), r) for r in self._matching(expr)]
        return self._hits([(s, r) for s, r in scored if s > 0.0], limit)  # the inverted index's reach

    def doc_versions(self, doc_ids: Sequence[str] | None = None) -> dict[str, tuple[int, int]]:
        flt = first_chunks_filter()
        if doc_ids is not None:
            ids = list(dict.fromkeys(doc_ids))
            if not ids:
                return {}
            flt = flt & doc_ids_filter(ids)
        return newest_versions(self._matching(flt))

    def query(
        self, expr: Filter, *, limit: int = 1000, fields: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        _check_limit(limit)
        return [self._project(r, fields) for r in self._matching(expr)[:limit]]

    def count(self, expr: Filter | None = None) -> int:
        return len(self._matching(expr))

    def iter_rows(
        self, expr: Filter | None = None, *, fields: Sequence[str] | None = None, batch_size: int = 1000
    ) -> Iterator[list[dict[str, Any]]]:
        rows = self._matching(expr)
        for start in range(0, len(rows), batch_size):
            yield [self._project(r, fields) for r in rows[start : start + batch_size]]


class MemoryMeta:
    """``MetaStore``'s get/put/list/delete over a dict (what a git sync keeps between runs)."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], dict[str, Any]] = {}

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        value = self.records.get((kind, key))
        return copy.deepcopy(value) if value is not None else None

    def put(self, kind: str, key: str, value: dict[str, Any]) -> None:
        self.records[(kind, key)] = copy.deepcopy(value)

    def put_many(self, kind: str, items: dict[str, dict[str, Any]]) -> None:
        for key, value in items.items():
            self.put(kind, key, value)

    def list(self, kind: str, prefix: str = "") -> dict[str, dict[str, Any]]:
        return {
            k: copy.deepcopy(v)
            for (kd, k), v in sorted(self.records.items())
            if kd == kind and k.startswith(prefix)
        }

    def delete(self, kind: str, keys: Sequence[str]) -> None:
        for key in keys:
            self.records.pop((kind, key), None)


class RecordingIngestor:
    """The ``Ingestor`` calls a git sync makes, kept as a dict index ``docs`` (doc_id -> document)
    with the ``moved_from`` of each run; ``fail`` names doc ids whose write fails (as an embedding
    failure would), ``runs`` lists the doc ids each ``ingest`` call received."""

    def __init__(self, fail: Iterable[str] = ()) -> None:
        self.docs: dict[str, SourceDocument] = {}
        self.fail = set(fail)
        self.runs: list[list[str]] = []
        self.moves: list[dict[str, str]] = []
        self.deleted: list[str] = []

    def ingest(
        self,
        docs: Iterable[SourceDocument],
        *,
        total: int | None = None,
        moved_from: Mapping[str, str] | None = None,
    ) -> IngestReport:
        report = IngestReport(run_id=f"run{len(self.runs)}", total=total)
        batch = list(docs)
        self.runs.append([d.doc_id for d in batch])
        self.moves.append(dict(moved_from or {}))
        for doc in batch:
            report.documents += 1
            if doc.error is not None:  # unreadable: failed for good, as the Ingestor reports it
                report.failed.append({"doc_id": doc.doc_id, "error": doc.error, "permanent": True})
                continue
            if doc.doc_id in self.fail:  # as an embedding failure: redone by the next sync
                report.failed.append({"doc_id": doc.doc_id, "error": "injected failure"})
                continue
            report.added += doc.doc_id not in self.docs
            report.updated += doc.doc_id in self.docs
            self.docs[doc.doc_id] = doc
        return report

    def delete_documents(self, doc_ids: Sequence[str]) -> IngestReport:
        report = IngestReport()
        for doc_id in doc_ids:
            report.deleted += self.docs.pop(doc_id, None) is not None
            self.deleted.append(doc_id)
        return report
