"""Milvus storage engine for chunks: schema, blue/green aliases, writes and the three searches.

Plain Python (no Ray) so that Serve deployments, ingestion jobs and tests share one code path.

Layout
    ``collection`` (e.g. ``specrag``) is an *alias*; the rows live in a physical collection named
    ``{collection}_{YYYYmmddHHMMSS}`` (UTC).  A full re-index writes into a fresh physical
    collection (``create_physical`` + ``upsert(into=...)``) and then ``switch_alias`` flips readers
    over atomically.  A real collection that is already called ``collection`` (created by hand or by
    an older version) is used as it is.

Vectors
    dense: ``FLOAT_VECTOR(dim)``, HNSW, metric IP.  Vectors are L2-normalised here (queries and rows)
    so IP equals cosine whatever the caller did.
    sparse: ``SPARSE_FLOAT_VECTOR``, ``SPARSE_INVERTED_INDEX``, metric IP (the only sparse index
    Milvus Lite has).

Filters
    The store owns its query language: every expression is a ``Filter`` built by the helpers in
    the "filters" section below (``build_filter``, ``doc_ids_filter``, ``doc_version_filter``, ...);
    ``Filter.expr()`` renders the Milvus string and ``Filter.matches`` evaluates it on a row dict.
    Store methods take ``Filter | str | None``; nobody outside this module writes Milvus syntax.

Interface
    ``Store`` (a Protocol) is what the retriever needs: the two ANN searches, ``doc_versions`` and
    ``query``, with structured filters.  ``MilvusStore`` implements it; the in-memory double is
    ``serve_app.testing.doubles.FakeStore``.  ``make_store`` builds a ``MilvusStore`` from settings.
    Code that keeps its own collection next to the alias (``MetaStore``) runs raw client calls
    through ``MilvusStore.execute``, which applies the store's reconnects and error mapping.

Errors
    Unreachable/slow/not-ready Milvus -> ``StoreUnavailable`` (HTTP 503); a filter expression or
    argument Milvus rejects -> ``ValueError`` (HTTP 400); anything else propagates unchanged.
"""

from __future__ import annotations

import logging
import math
import numbers
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import methodcaller
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, runtime_checkable

import numpy as np
import pymilvus  # noqa: F401  (configures its loggers when imported: ours must come after)
from pymilvus.client.utils import SciPyHelper

# pymilvus checks for scipy.sparse on its first sparse vector by executing that module's code
# itself, unguarded: two search threads doing it at once fail with "deadlock detected by
# _ModuleLock('scipy.sparse')". Do it once here, on import.
SciPyHelper.is_scipy_sparse(None)

if TYPE_CHECKING:
    from serve_app.settings import DataScope, Settings

logger = logging.getLogger(__name__)
# pymilvus logs every failed call at ERROR (an outage floods the logs); failures are mapped to
# StoreUnavailable / ValueError below and logged once, here.
logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
# pymilvus pings every 10 s even on idle channels; gRPC servers that keep the default policy
# (Milvus Lite's does: one ping per 5 minutes without data) answer GOAWAY "too_many_pings", and
# the channel then refuses calls. Ping only while calls are in flight, at the policy's pace.
GRPC_OPTIONS = {"grpc.keepalive_time_ms": 300_000, "grpc.keepalive_permit_without_calls": False}
_NOT_LOADED = 101  # Milvus: collection released (Milvus Lite forgets load state across restarts)
MODEL_PROPERTY = "specrag.model"

T = TypeVar("T")

__all__ = [
    "ChunkRecord",
    "Clause",
    "Filter",
    "FilterArg",
    "Hit",
    "MilvusStore",
    "Store",
    "StoreUnavailable",
    "and_",
    "build_filter",
    "chunk_ids_filter",
    "doc_ids_filter",
    "doc_version_filter",
    "filter_expr",
    "first_chunks_filter",
    "make_store",
    "newest_versions",
]

# --------------------------------------------------------------------------------------------- schema

DENSE_FIELD = "dense"
SPARSE_FIELD = "sparse"
DENSE_INDEX = "dense_hnsw"
SPARSE_INDEX = "sparse_inverted"

# VARCHAR limits are UTF-8 *bytes* in Milvus.
CHUNK_ID_MAX = 128
TEXT_MAX = 65_535
_VARCHAR_LIMITS: dict[str, int] = {
    "chunk_id": CHUNK_ID_MAX,
    "doc_id": 512,
    "text": TEXT_MAX,
    "title": 2048,
    "lang": 16,
    "kind": 32,
    "source": 2048,
    "content_hash": 128,
}
# ARRAY<VARCHAR>: (max_capacity, max_length of one element in bytes)
_ARRAY_LIMITS: dict[str, tuple[int, int]] = {
    "title_path": (32, 512),
    "tags": (64, 256),
}
_INT_FIELDS = ("version", "ordinal", "updated_at")
# Hidden mirror of ``tags`` for fast filtering (see build_filter); never returned to callers.
TAGS_KEY_FIELD = "tags_key"
TAGS_KEY_MAX = 65_535

#: every non-vector field, in schema order; this is what searches/get/query return.
SCALAR_FIELDS: tuple[str, ...] = (
    "chunk_id",
    "doc_id",
    "version",
    "ordinal",
    "text",
    "title",
    "title_path",
    "lang",
    "kind",
    "source",
    "tags",
    "updated_at",
    "content_hash",
    "is_current",
)

# Milvus refuses a sparse vector without a non-zero weight, but a chunk can legitimately have no
# lexical weights (only punctuation, or an encoder without a sparse head).  Such rows get one tiny
# weight on token id 1, which is <pad> in the XLM-R vocabulary used by BGE-M3: the encoder never
# emits it for real text, and ``_clean_sparse(..., for_query=True)`` strips it from every query, so
# the placeholder can never match and the row is simply invisible to sparse search (the inverted
# index only scores rows sharing a query token).  Dense search still finds the row.
SPARSE_PLACEHOLDER_TOKEN = 1
SPARSE_PLACEHOLDER_WEIGHT = 1e-9

UPSERT_BATCH = 500
_ID_BATCH = 1000
MAX_WINDOW = 16_384  # Milvus caps offset+limit of search/query at 16384

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
_SUFFIX_RE = re.compile(r"^[A-Za-z0-9_]{1,64}$")


# ---------------------------------------------------------------------------------------------- types


class StoreUnavailable(RuntimeError):
    """Milvus could not be reached, timed out, or the collection is not there (yet): answer 503."""


@dataclass(slots=True)
class ChunkRecord:
    chunk_id: str
    doc_id: str
    version: int
    ordinal: int
    text: str
    title: str
    title_path: list[str]
    lang: str
    kind: str  # spec, glossary, api, design, faq, other
    source: str
    tags: list[str]
    updated_at: int  # unix seconds
    content_hash: str
    is_current: bool
    dense: list[float] | np.ndarray
    sparse: dict[int, float] = field(default_factory=dict)  # empty -> placeholder, see above


@dataclass(slots=True)
class Hit:
    chunk_id: str
    score: float
    fields: dict[str, Any]


# -------------------------------------------------------------------------------------- pure helpers


def quote(value: str) -> str:
    """A Milvus string literal for ``value`` (double quotes; backslash, quote and controls escaped)."""
    out = (
        str(value)
        .replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{out}"'


def _as_list(values: str | Iterable[str] | None) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str):
        return [values]
    return [str(v) for v in values]


# -------------------------------------------------------------------------------------------- filters
#
# Every Milvus boolean expression specrag sends is built here, as a value rather than a string:
#
#     Filter  := Clause ("and" Clause)*         (no clause: no constraint)
#     Clause  := field "==" | "!=" | "<" literal
#              | field "in" "[" string, ... "]"  (one value renders as "==", none matches nothing)
#              | field "like" "<prefix>%"        (prefix match; "%" cannot be escaped, so refused)
#              | any-prefix: (field like "a%" or field like "b%")
#              | field "like" "%<part>%"         (contains; the same refusal of "%")
#              | any-tag: tags_key like "%|hex|%" ("or" of several, in parentheses)
#
# ``Filter.expr()`` gives the Milvus string; ``Filter.matches(row)`` evaluates the same meaning on a
# row dict, so an in-memory double (``serve_app.testing.doubles.FakeStore``) never parses Milvus
# syntax.  Filters combine with ``&`` / ``and_`` (plain concatenation: every clause is an atom, so
# no parentheses are needed).  Builders:
#
#     build_filter(...)                 metadata filters of a search (kinds, langs, tags, ...)
#     doc_ids_filter(ids)               rows of these documents, any version
#     chunk_ids_filter(ids)             rows with these chunk ids
#     doc_version_filter(doc, v, op=)   one document's rows with version ==, < or != v
#     first_chunks_filter()             the ordinal-0 row of every version (publishes a version)
#     scope_filter(scope)               the documents a caller's data scope allows (auth)
#     Filter.eq/ne/lt/isin/prefix       single atoms on any field (the meta collection uses these)
#
# Store methods take ``Filter | str | None``: a string is sent as it is (hand-written expressions,
# e.g. ``array_contains(tags, "x")`` in tests and operator tooling); code in specrag passes Filters.

FilterOp = Literal["==", "!=", "<", "in", "prefix", "any_prefix", "contains", "any_tag"]
_OPS: tuple[str, ...] = ("==", "!=", "<", "in", "prefix", "any_prefix", "contains", "any_tag")


def _literal(value: str | int | bool) -> str:
    if isinstance(value, bool | np.bool_):  # before int: bool is an int
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):  # numpy ints too, never quoted as text
        return str(int(value))
    if isinstance(value, str):
        return quote(value)
    raise TypeError(f"a filter literal is a str, int or bool, not {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class Clause:
    """One atom of a filter: ``field`` compared with literal(s).

    ``==``/``!=``/``<`` take one literal (str, int or bool); ``in`` a tuple of strings; ``prefix`` a
    string without ``%``, ``any_prefix`` a non-empty tuple of them; ``any_tag`` (field ``tags``) a
    non-empty tuple of tags, matched exactly through the hidden ``tags_key`` mirror.
    """

    field: str
    op: FilterOp
    value: str | int | bool | tuple[str, ...]

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.field):  # field names go into the expression unquoted
            raise ValueError(f"invalid field name {self.field!r}")
        if self.op not in _OPS:
            raise ValueError(f"unknown filter operator {self.op!r}")
        if self.op in ("in", "any_tag", "any_prefix"):
            if not isinstance(self.value, tuple):
                raise TypeError(f"{self.op!r} takes a tuple of strings, got {type(self.value).__name__}")
            if self.op in ("any_tag", "any_prefix") and not self.value:
                raise ValueError(f"{self.op} needs at least one value")
            if self.op == "any_prefix" and any("%" in v for v in self.value):
                raise ValueError("a LIKE pattern cannot contain '%' (Milvus has no escape for it)")
        elif isinstance(self.value, tuple):
            raise TypeError(f"{self.op!r} takes one literal, got a tuple")
        else:
            _literal(self.value)  # refuses a float, None, ... now rather than when rendered
        if self.op in ("prefix", "contains") and "%" in str(self.value):
            raise ValueError("a LIKE pattern cannot contain '%' (Milvus has no escape for it)")

    def expr(self) -> str:
        if self.op == "in":
            assert isinstance(self.value, tuple)
            return f"{self.field} in [{', '.join(quote(v) for v in self.value)}]"
        if self.op == "prefix":
            return f'{self.field} like {quote(str(self.value))[:-1]}%"'
        if self.op == "any_prefix":
            assert isinstance(self.value, tuple)
            likes = [f'{self.field} like {quote(v)[:-1]}%"' for v in self.value]
            return likes[0] if len(likes) == 1 else f"({' or '.join(likes)})"
        if self.op == "contains":  # "_" is a one-character wildcard in LIKE: callers recheck exactly
            return f'{self.field} like "%{quote(str(self.value))[1:-1]}%"'
        if self.op == "any_tag":
            assert isinstance(self.value, tuple)
            # Same meaning as array_contains(_any)(tags, ...), but on the VARCHAR mirror ``tags_key``:
            # Milvus Lite evaluates ARRAY/JSON predicates row by row with whole rows materialised
            # (~0.4 s per search over 5k rows at dim 1024) while LIKE on a VARCHAR costs ~nothing.
            likes = [f'{TAGS_KEY_FIELD} like "%{tag_key(v)}%"' for v in self.value]
            return likes[0] if len(likes) == 1 else f"({' or '.join(likes)})"
        assert not isinstance(self.value, tuple)
        return f"{self.field} {self.op} {_literal(self.value)}"

    def matches(self, row: Mapping[str, Any]) -> bool:
        """What Milvus would answer for ``row`` (a stored row: the fields ``record_to_row`` writes)."""
        if self.op == "any_tag":
            assert isinstance(self.value, tuple)
            if TAGS_KEY_FIELD in row:
                key = str(row[TAGS_KEY_FIELD])
            elif "tags" in row:
                key = tags_key(row["tags"] or ())
            else:
                raise ValueError("filter on tags, which the row lacks")
            return any(tag_key(t) in key for t in self.value)
        if self.field not in row:
            raise ValueError(f"filter on {self.field!r}, which the row lacks")
        value = row[self.field]
        if self.op == "==":
            return bool(value == self.value)
        if self.op == "!=":
            return bool(value != self.value)
        if self.op == "<":
            return bool(value < self.value)
        if self.op == "in":
            assert isinstance(self.value, tuple)
            return value in self.value
        if self.op == "contains":
            return str(self.value) in str(value)
        if self.op == "any_prefix":
            assert isinstance(self.value, tuple)
            return any(str(value).startswith(p) for p in self.value)
        return str(value).startswith(str(self.value))  # prefix


@dataclass(frozen=True, slots=True)
class Filter:
    """A conjunction of ``Clause``s; see the grammar above. Immutable, hashable, comparable."""

    clauses: tuple[Clause, ...] = ()

    @classmethod
    def eq(cls, field: str, value: str | int | bool) -> Filter:
        return cls((Clause(field, "==", value),))

    @classmethod
    def ne(cls, field: str, value: str | int | bool) -> Filter:
        return cls((Clause(field, "!=", value),))

    @classmethod
    def lt(cls, field: str, value: int) -> Filter:
        return cls((Clause(field, "<", int(value)),))

    @classmethod
    def isin(cls, field: str, values: str | Iterable[str]) -> Filter:
        """``field`` equals any of ``values`` (deduplicated; one value: ``==``; none: matches nothing)."""
        items = tuple(dict.fromkeys(_as_list(values)))
        if len(items) == 1:
            return cls.eq(field, items[0])
        return cls((Clause(field, "in", items),))

    @classmethod
    def prefix(cls, field: str, text: str) -> Filter:
        """``field`` starts with ``text`` (LIKE; ``text`` must not contain ``%``)."""
        return cls((Clause(field, "prefix", str(text)),))

    @classmethod
    def contains(cls, field: str, text: str) -> Filter:
        """``field`` contains ``text`` (LIKE ``%text%``; ``text`` must not contain ``%``)."""
        return cls((Clause(field, "contains", str(text)),))

    @classmethod
    def any_tag(cls, tags: str | Iterable[str]) -> Filter:
        """Rows carrying any of ``tags`` (exact, case-sensitive; empty tags are ignored)."""
        return cls((Clause("tags", "any_tag", tuple(t for t in dict.fromkeys(_as_list(tags)) if t)),))

    def __and__(self, other: Filter) -> Filter:
        if not isinstance(other, Filter):
            return NotImplemented
        return Filter(self.clauses + other.clauses)

    def expr(self) -> str:
        """The Milvus boolean expression ("" when nothing constrains)."""
        return " and ".join(c.expr() for c in self.clauses)

    def matches(self, row: Mapping[str, Any]) -> bool:
        """``row`` satisfies every clause (``ValueError`` for a field the row lacks, as Milvus)."""
        return all(c.matches(row) for c in self.clauses)

    def __str__(self) -> str:
        return self.expr()


#: what the store's methods accept as a filter: structured, a hand-written expression, or nothing.
FilterArg = Filter | str | None


def and_(*filters: Filter | None) -> Filter | None:
    """The conjunction of the given filters (``None``s skipped); ``None`` when nothing constrains."""
    clauses = tuple(c for f in filters if f is not None for c in f.clauses)
    return Filter(clauses) if clauses else None


def filter_expr(flt: FilterArg) -> str:
    """The Milvus string for a store method's filter argument ("" for none)."""
    if flt is None:
        return ""
    if isinstance(flt, Filter):
        return flt.expr()
    if isinstance(flt, str):
        return flt
    raise TypeError(f"a filter is a Filter, a string or None, not {type(flt).__name__}")


def build_filter(
    *,
    current_only: bool = True,
    doc_ids: str | Iterable[str] | None = None,
    kinds: str | Iterable[str] | None = None,
    langs: str | Iterable[str] | None = None,
    tags: str | Iterable[str] | None = None,
    sources: str | Iterable[str] | None = None,
) -> Filter | None:
    """A search's metadata filter; clauses joined with ``and``; ``None`` when nothing constrains.

    ``doc_ids``/``kinds``/``langs``/``sources`` match any of the values; ``tags`` matches rows carrying *any*
    of the tags (exactly, case-sensitive).  ``None`` or an empty sequence means "no constraint" for
    that field (unlike ``doc_ids_filter``, where an empty list matches nothing).  Hand-written
    expressions may use ``array_contains(tags, "x")`` too (slower on Lite).
    """
    parts: list[Filter] = []
    if current_only:
        parts.append(Filter.eq("is_current", True))
    for name, values in (("doc_id", doc_ids), ("kind", kinds), ("lang", langs), ("source", sources)):
        items = _as_list(values)
        if items:
            parts.append(Filter.isin(name, items))
    tag_items = [t for t in _as_list(tags) if t]
    if tag_items:
        parts.append(Filter.any_tag(tag_items))
    return and_(*parts)


def scope_filter(scope: DataScope | None) -> Filter | None:
    """The documents a data scope allows (``None``: any). Sources are prefixes, tags "any of"."""
    if scope is None:
        return None
    parts: list[Filter] = []
    if scope.sources:
        parts.append(Filter((Clause("source", "any_prefix", tuple(dict.fromkeys(scope.sources))),)))
    if scope.kinds:
        parts.append(Filter.isin("kind", scope.kinds))
    if scope.tags:
        parts.append(Filter.any_tag(scope.tags))
    return and_(*parts)


def doc_ids_filter(doc_ids: str | Iterable[str]) -> Filter:
    """Rows of these documents, every version (an empty list matches nothing)."""
    return Filter.isin("doc_id", doc_ids)


def chunk_ids_filter(chunk_ids: str | Iterable[str]) -> Filter:
    """Rows with these chunk ids (an empty list matches nothing)."""
    return Filter.isin("chunk_id", chunk_ids)


def doc_version_filter(doc_id: str, version: int, *, op: Literal["==", "<", "!="] = "==") -> Filter:
    """One document's rows whose version is ``==`` (pinned), ``<`` (older) or ``!=`` (other) ``version``."""
    if op not in ("==", "<", "!="):
        raise ValueError(f"unknown version comparison {op!r}")
    return Filter.eq("doc_id", doc_id) & Filter((Clause("version", op, int(version)),))


def first_chunks_filter() -> Filter:
    """The ordinal-0 row of every version: one or two rows per document (see ``doc_versions``)."""
    return Filter.eq("ordinal", 0)


def tag_key(tag: str) -> str:
    """``|<utf-8 hex>|``: wildcard- and separator-free, so ``like "%|hex|%"`` is an exact tag match."""
    return f"|{truncate_utf8(str(tag), _ARRAY_LIMITS['tags'][1]).encode('utf-8').hex()}|"


def tags_key(tags: Iterable[str]) -> str:
    return "".join(tag_key(t) for t in dict.fromkeys(tags) if t)


def newest_versions(rows: Iterable[Mapping[str, Any]]) -> dict[str, tuple[int, int]]:
    """doc_id -> (newest version, its updated_at) among ``rows`` (``doc_id``, ``version``, ``updated_at``)."""
    out: dict[str, tuple[int, int]] = {}
    for r in rows:
        entry = (int(r["version"]), int(r["updated_at"]))
        if r["doc_id"] not in out or entry > out[r["doc_id"]]:
            out[r["doc_id"]] = entry
    return out


def truncate_utf8(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` UTF-8 bytes, never splitting a character."""
    if len(text) * 4 <= max_bytes:  # fast path: cannot exceed
        return text
    raw = text.encode("utf-8", errors="replace")
    if len(raw) <= max_bytes:
        return text
    return raw[:max_bytes].decode("utf-8", errors="ignore")


def _normalize(vector: Sequence[float] | np.ndarray, dim: int) -> list[float]:
    arr = np.asarray(vector, dtype=np.float32).reshape(-1)
    if arr.shape[0] != dim:
        raise ValueError(f"dense vector has dimension {arr.shape[0]}, the collection expects {dim}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("dense vector contains NaN or infinity")
    norm = float(np.linalg.norm(arr))
    if norm > 0.0:
        arr = arr / norm
    return arr.tolist()


def _clean_sparse(weights: dict[int, float] | None, *, for_query: bool) -> dict[int, float]:
    """Keep finite positive weights with valid int token ids.

    Rows: an empty result becomes the placeholder.  Queries: the placeholder token is removed, so an
    all-placeholder row can never be hit; an empty result means "skip sparse search".
    """
    out: dict[int, float] = {}
    for key, value in (weights or {}).items():
        token, weight = int(key), float(value)
        if token < 0 or token >= 2**32 - 1 or not math.isfinite(weight) or weight <= 0.0:
            continue
        if for_query and token == SPARSE_PLACEHOLDER_TOKEN:
            continue
        out[token] = weight
    if not out and not for_query:
        out = {SPARSE_PLACEHOLDER_TOKEN: SPARSE_PLACEHOLDER_WEIGHT}
    return out


def record_to_row(record: ChunkRecord, dim: int) -> dict[str, Any]:
    """One Milvus row for ``record``: strings truncated to their byte limits, vectors cleaned."""
    chunk_id = str(record.chunk_id)
    if not chunk_id:
        raise ValueError("chunk_id must not be empty")
    if len(chunk_id.encode("utf-8")) > CHUNK_ID_MAX:
        # Truncating a primary key would merge distinct chunks; refuse instead.
        raise ValueError(f"chunk_id longer than {CHUNK_ID_MAX} bytes: {chunk_id[:40]!r}...")
    row: dict[str, Any] = {"chunk_id": chunk_id}
    for name, limit in _VARCHAR_LIMITS.items():
        if name != "chunk_id":
            value = getattr(record, name)
            row[name] = truncate_utf8("" if value is None else str(value), limit)
    for name, (capacity, limit) in _ARRAY_LIMITS.items():
        items = [str(v) for v in (getattr(record, name) or [])][:capacity]
        row[name] = [truncate_utf8(v, limit) for v in items]
    row[TAGS_KEY_FIELD] = tags_key(row["tags"])
    for name in _INT_FIELDS:
        row[name] = int(getattr(record, name))
    row["is_current"] = bool(record.is_current)
    row[DENSE_FIELD] = _normalize(record.dense, dim)
    row[SPARSE_FIELD] = _clean_sparse(record.sparse, for_query=False)
    return row


def _plain(entity: dict[str, Any]) -> dict[str, Any]:
    """Result entity -> plain JSON-able python (ARRAY fields come back as protobuf containers)."""
    out: dict[str, Any] = {}
    for key, value in entity.items():
        if key in _ARRAY_LIMITS and value is not None:
            value = [str(v) for v in value]
        elif key == "is_current" and value is not None:
            value = bool(value)
        out[key] = value
    return out


# ------------------------------------------------------------------------------------ error mapping

_UNAVAILABLE_CODES = {2, 8, 9, 100}  # ConnectFailed, RateLimit, ForceDeny, CollectionNotFound
_INVALID_CODES = {5, 6, 1100, 1101}  # IllegalArgument, Lite's parse/range errors, ParameterInvalid/Missing


def _classify(exc: BaseException) -> Literal["unavailable", "invalid", "other"]:
    import grpc
    from pymilvus.exceptions import MilvusException, ParamError

    if isinstance(exc, StoreUnavailable):
        return "unavailable"
    if isinstance(exc, ConnectionError | TimeoutError | grpc.FutureTimeoutError):
        return "unavailable"
    if isinstance(exc, grpc.RpcError):
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        return "invalid" if code == grpc.StatusCode.INVALID_ARGUMENT else "unavailable"
    if isinstance(exc, MilvusException):
        code = exc.code
        if isinstance(code, grpc.StatusCode):  # pymilvus' retry loop re-raises grpc codes this way
            return "invalid" if code == grpc.StatusCode.INVALID_ARGUMENT else "unavailable"
        if isinstance(exc, ParamError) or getattr(exc, "is_input_error", False) or code in _INVALID_CODES:
            return "invalid"
        if code in _UNAVAILABLE_CODES:
            return "unavailable"
        # Any other Milvus failure is the store's, not the caller's: a 503 with its reason.
        return "unavailable"
    return "other"


def _is_connection_failure(exc: BaseException) -> bool:
    """Unavailable because of the transport (not e.g. a missing collection or rate limit)."""
    from pymilvus.exceptions import MilvusException

    if isinstance(exc, StoreUnavailable):
        return False
    return not (isinstance(exc, MilvusException) and exc.code in _UNAVAILABLE_CODES - {2})


def _reason(exc: BaseException) -> str:
    message = getattr(exc, "message", None)
    details = getattr(exc, "details", None)  # a grpc.RpcError's
    if not message and callable(details):
        try:
            message = details()
        except Exception:
            message = None
    return str(message or exc or type(exc).__name__).strip()


# -------------------------------------------------------------------------------------------- store


class MilvusStore:
    """One Milvus collection (alias) for chunks; one lazily created client, rebuilt after failures."""

    def __init__(
        self,
        uri: str,
        collection: str,
        dim: int,
        *,
        token: str | None = None,
        hnsw_m: int = 16,
        hnsw_ef_construction: int = 200,
        search_ef: int = 128,
        timeout_s: float = 10.0,
    ) -> None:
        if not _NAME_RE.match(collection):
            raise ValueError(f"invalid collection name {collection!r}")
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        self.uri = uri
        self.collection = collection
        self.dim = int(dim)
        self._token = token
        self.hnsw_m = int(hnsw_m)
        self.hnsw_ef_construction = int(hnsw_ef_construction)
        self.search_ef = int(search_ef)
        self.timeout_s = float(timeout_s)
        self._client: Any = None
        self._lock = threading.Lock()
        self._dirty: set[str] = set()

    # pickling (Ray ships the object to replicas): never carry a live client or lock
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None
        state["_lock"] = None
        state["_dirty"] = set()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MilvusStore(uri={self.uri!r}, collection={self.collection!r}, dim={self.dim})"

    # ------------------------------------------------------------------------------- connection

    def _get_client(self) -> Any:
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._client is None:
                from pymilvus import MilvusClient

                try:
                    # dedicated: our own channel, so close() really drops it and a reconnect is fresh
                    self._client = MilvusClient(
                        uri=self.uri,
                        token=self._token or "",
                        timeout=self.timeout_s,
                        dedicated=True,
                        grpc_options=GRPC_OPTIONS,
                    )
                except Exception as exc:
                    if _classify(exc) == "invalid":
                        raise ValueError(f"bad Milvus connection settings: {_reason(exc)}") from exc
                    raise StoreUnavailable(f"cannot connect to Milvus at {self.uri}: {_reason(exc)}") from exc
            return self._client

    def _drop_client(self, client: Any) -> None:
        with self._lock:
            if self._client is not client:
                return  # another thread already replaced it
            self._client = None
        try:
            client.close()
        except Exception:  # pragma: no cover - best effort
            logger.debug("closing a failed Milvus client raised", exc_info=True)

    def _call(self, op: str, fn: Callable[[Any], T], *, target: str | None = None) -> T:
        client = self._get_client()
        try:
            try:
                return fn(client)
            except Exception as exc:
                if getattr(exc, "code", None) != _NOT_LOADED:
                    raise
                logger.warning("Milvus %s: collection not loaded (server restarted?); loading it", op)
                name = target or self.collection
                physical = self._describe(client, name).get("collection_name") or name
                client.load_collection(physical, timeout=self.timeout_s)
                return fn(client)
        except Exception as exc:
            kind = _classify(exc)
            if kind == "unavailable":
                logger.warning("Milvus %s failed: %s", op, _reason(exc))
                if _is_connection_failure(exc):
                    self._drop_client(client)  # the next call builds a fresh channel
                raise StoreUnavailable(f"Milvus {op} failed: {_reason(exc)}") from exc
            if kind == "invalid":
                raise ValueError(f"Milvus rejected {op}: {_reason(exc)}") from exc
            raise

    def execute(self, op: str, fn: Callable[[Any], T], *, target: str | None = None) -> T:
        """Run ``fn(client)``, one raw pymilvus ``MilvusClient`` operation, the way every method here does.

        The client is created lazily; a collection found released (code 101) is loaded and ``fn``
        retried once (``target``: the collection ``fn`` works on, the alias by default); failures are
        mapped as the module docstring says (``StoreUnavailable`` / ``ValueError``), and a broken
        channel is dropped so the next call reconnects.  ``op`` names the operation in logs and errors.

        For parts of the store component that keep their own collection next to the alias (the
        meta store); pass ``timeout=store.timeout_s`` to client calls.  Chunk reads and writes use the
        typed methods instead.
        """
        return self._call(op, fn, target=target)

    def ping(self) -> None:
        self._call("ping", lambda c: c.get_server_version(timeout=self.timeout_s))

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # pragma: no cover
                logger.debug("closing the Milvus client raised", exc_info=True)

    # ------------------------------------------------------------------------------ collections

    def _schema(self, client: Any) -> Any:
        from pymilvus import DataType

        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("chunk_id", DataType.VARCHAR, is_primary=True, max_length=CHUNK_ID_MAX)
        for name in SCALAR_FIELDS[1:]:
            if name in _VARCHAR_LIMITS:
                schema.add_field(name, DataType.VARCHAR, max_length=_VARCHAR_LIMITS[name])
            elif name in _ARRAY_LIMITS:
                capacity, length = _ARRAY_LIMITS[name]
                schema.add_field(
                    name,
                    DataType.ARRAY,
                    element_type=DataType.VARCHAR,
                    max_capacity=capacity,
                    max_length=length,
                )
            elif name in _INT_FIELDS:
                schema.add_field(name, DataType.INT64)
            elif name == "is_current":
                schema.add_field(name, DataType.BOOL)
        schema.add_field(TAGS_KEY_FIELD, DataType.VARCHAR, max_length=TAGS_KEY_MAX)
        schema.add_field(DENSE_FIELD, DataType.FLOAT_VECTOR, dim=self.dim)
        schema.add_field(SPARSE_FIELD, DataType.SPARSE_FLOAT_VECTOR)
        return schema

    def _index_params(self, client: Any) -> Any:
        params = client.prepare_index_params()
        params.add_index(
            field_name=DENSE_FIELD,
            index_name=DENSE_INDEX,  # Milvus Lite ignores it (names indexes after the field)
            index_type="HNSW",
            metric_type="IP",
            params={"M": self.hnsw_m, "efConstruction": self.hnsw_ef_construction},
        )
        params.add_index(
            field_name=SPARSE_FIELD,
            index_name=SPARSE_INDEX,
            index_type="SPARSE_INVERTED_INDEX",
            metric_type="IP",
        )
        return params

    def _describe(self, client: Any, name: str) -> dict[str, Any]:
        return client.describe_collection(name, timeout=self.timeout_s)

    def _check_schema(self, desc: dict[str, Any]) -> None:
        fields = {f.get("name"): f for f in desc.get("fields", [])}
        name = desc.get("collection_name", "?")
        missing = [f for f in (*SCALAR_FIELDS, TAGS_KEY_FIELD, DENSE_FIELD, SPARSE_FIELD) if f not in fields]
        if missing:
            raise ValueError(
                f"collection {name!r} lacks fields {missing}; it was not created by this version of"
                " specrag (re-index into a new collection)"
            )
        existing = int((fields[DENSE_FIELD].get("params") or {}).get("dim", -1))
        if existing != self.dim:
            raise ValueError(
                f"collection {name!r} stores dense vectors of dim {existing}, but the model produces"
                f" dim {self.dim}; re-index into a new collection"
            )

    def _ensure_loaded(self, client: Any, name: str) -> None:
        from pymilvus.client.types import LoadState

        state = client.get_load_state(name, timeout=self.timeout_s)
        if (state.get("state") if isinstance(state, dict) else state) != LoadState.Loaded:
            client.load_collection(name, timeout=self.timeout_s)

    def _alias_target(self, client: Any) -> str | None:
        """Physical name behind the alias; None if nothing named ``collection`` exists.

        Raises ValueError when ``collection`` is a real collection, not an alias.
        """
        if not client.has_collection(self.collection, timeout=self.timeout_s):
            return None
        physical = self._describe(client, self.collection).get("collection_name")
        if physical == self.collection:
            raise ValueError(f"{self.collection!r} is a real collection, not an alias")
        return physical

    def ensure_collection(self) -> str:
        def run(client: Any) -> str:
            if client.has_collection(self.collection, timeout=self.timeout_s):
                desc = self._describe(client, self.collection)
                physical = desc.get("collection_name") or self.collection  # == name if not an alias
                self._check_schema(desc)
                self._ensure_loaded(client, physical)
                return physical
            physical = self._create_physical(client, None)
            try:
                client.create_alias(physical, self.collection, timeout=self.timeout_s)
            except Exception:
                # Lost a race with another replica: use its collection, drop our empty one.
                if not client.has_collection(self.collection, timeout=self.timeout_s):
                    raise
                winner = self._describe(client, self.collection)
                if winner.get("collection_name") != physical:
                    client.drop_collection(physical, timeout=self.timeout_s)
                self._check_schema(winner)
                physical = winner.get("collection_name") or self.collection
                self._ensure_loaded(client, physical)
            logger.info("collection alias %s -> %s", self.collection, physical)
            return physical

        return self._call("ensure_collection", run)

    def _create_physical(self, client: Any, suffix: str | None, model: str | None = None) -> str:
        if suffix is not None:
            if not _SUFFIX_RE.match(suffix):
                raise ValueError(f"invalid collection suffix {suffix!r}")
            name = f"{self.collection}_{suffix}"
            if client.has_collection(name, timeout=self.timeout_s):
                raise ValueError(f"collection {name!r} already exists")
        else:
            base = f"{self.collection}_{time.strftime('%Y%m%d%H%M%S', time.gmtime())}"
            name, n = base, 1
            while client.has_collection(name, timeout=self.timeout_s):
                n += 1
                name = f"{base}_{n}"
        client.create_collection(
            name,
            schema=self._schema(client),
            index_params=self._index_params(client),
            consistency_level="Strong",
            timeout=self.timeout_s,
        )
        if model:
            client.alter_collection_properties(
                name, properties={MODEL_PROPERTY: model}, timeout=self.timeout_s
            )
        self._ensure_loaded(client, name)
        return name

    def create_physical(self, suffix: str | None = None, *, model: str | None = None) -> str:
        """A new, loaded, empty physical collection ``{collection}_{suffix or UTC timestamp}``.

        ``model`` (the embedding model's key) is stored as a collection property: writers and
        searchers refuse a collection whose vectors another model made.
        """
        return self._call("create_physical", lambda c: self._create_physical(c, suffix, model))

    def resolve(self) -> str:
        """The physical collection the alias points at now (writers pin it for one batch)."""

        def run(client: Any) -> str:
            if not client.has_collection(self.collection, timeout=self.timeout_s):
                raise StoreUnavailable(f"collection {self.collection!r} does not exist (yet)")
            return self._describe(client, self.collection).get("collection_name") or self.collection

        return self._call("resolve", run)

    def describe(self, name: str | None = None) -> dict[str, Any]:
        """Milvus' description of collection ``name`` (the alias by default).

        Has ``collection_name`` (the physical name behind an alias), ``fields`` (with ``params``,
        e.g. the dense field's ``dim``) and ``properties``.
        """
        target = name or self.collection
        return self._call("describe", lambda c: self._describe(c, target))

    def model_of(self, name: str | None = None) -> str | None:
        """The model key stored on a collection (None for one created without it)."""

        def run(client: Any) -> str | None:
            props = self._describe(client, name or self.collection).get("properties") or {}
            return props.get(MODEL_PROPERTY)

        return self._call("describe", run)

    def set_model(self, model: str, name: str | None = None) -> None:
        target = name or self.resolve()
        self._call(
            "alter_properties",
            lambda c: c.alter_collection_properties(
                target, properties={MODEL_PROPERTY: model}, timeout=self.timeout_s
            ),
        )

    def physical_collections(self) -> list[str]:
        """Physical collections that belong to this alias (``{collection}_...``), oldest first."""
        # Exactly the names _create_physical makes: another alias may share the prefix (specrag_ja).
        own = re.compile(rf"^{re.escape(self.collection)}_\d{{14}}(_\d+)?$")
        names = self._call("list_collections", lambda c: c.list_collections(timeout=self.timeout_s))
        return sorted(n for n in names if own.match(n))

    def drop_physical(self, name: str) -> None:
        """Drop a physical collection of this alias; the live one is refused."""
        if name not in self.physical_collections():
            raise ValueError(f"{name!r} is not a physical collection of {self.collection!r}")
        if name == self.resolve():
            raise ValueError(f"{name!r} is live behind {self.collection!r}; switch the alias first")
        self._call("drop_collection", lambda c: c.drop_collection(name, timeout=self.timeout_s))

    def switch_alias(self, physical: str) -> str | None:
        """Point the alias at ``physical`` (loaded first); return the previous target or None.

        The previous collection is kept (callers drop it once nothing reads it; an alias does not
        protect a collection from being dropped).
        """

        def run(client: Any) -> str | None:
            if not client.has_collection(physical, timeout=self.timeout_s):
                raise ValueError(f"collection {physical!r} does not exist")
            desc = self._describe(client, physical)
            if desc.get("collection_name") != physical:
                raise ValueError(f"{physical!r} is an alias, not a physical collection")
            self._check_schema(desc)
            self._ensure_loaded(client, physical)
            previous = self._alias_target(client)
            if previous is None:
                client.create_alias(physical, self.collection, timeout=self.timeout_s)
            elif previous != physical:
                client.alter_alias(physical, self.collection, timeout=self.timeout_s)
            logger.info("alias %s: %s -> %s", self.collection, previous, physical)
            return previous

        return self._call("switch_alias", run)

    # -------------------------------------------------------------------------------------- writes

    def upsert(self, records: Sequence[ChunkRecord], *, into: str | None = None) -> int:
        """Insert or replace rows (by chunk_id; the last duplicate wins). Returns rows written."""
        target = into or self.collection
        latest: dict[str, dict[str, Any]] = {}
        for record in records:
            row = record_to_row(record, self.dim)
            latest.pop(row["chunk_id"], None)
            latest[row["chunk_id"]] = row
        # A version becomes visible through its ordinal-0 row (``doc_versions``), so those go last:
        # a writer killed between two calls leaves chunks nobody reads, never half a version.
        rows = sorted(latest.values(), key=lambda r: r["ordinal"] == 0)
        written = 0
        for start in range(0, len(rows), UPSERT_BATCH):
            batch = rows[start : start + UPSERT_BATCH]
            result = self._call(
                "upsert", methodcaller("upsert", target, batch, timeout=self.timeout_s), target=target
            )
            written += int(_result_count(result, "upsert_count", len(batch)))
        if rows:
            self._dirty.add(target)
        return written

    def delete(
        self, *, chunk_ids: Sequence[str] | None = None, expr: FilterArg = None, on: str | None = None
    ) -> int:
        """Delete by ids or by filter (exactly one). Returns the number of rows that matched.

        The count is taken right before deleting: Milvus Lite's delete result lists the requested
        ids whether they existed or not, and real Milvus does not count filter deletes reliably.
        """
        if (chunk_ids is None) == (expr is None):
            raise ValueError("pass exactly one of chunk_ids or expr")
        target = on or self.collection
        if expr is not None:
            text = filter_expr(expr)
            if not text.strip():
                raise ValueError("an empty expr would delete everything; refusing")
            filters = [text]
        else:
            ids = list(dict.fromkeys(str(i) for i in chunk_ids or ()))
            filters = [chunk_ids_filter(ids[i : i + _ID_BATCH]).expr() for i in range(0, len(ids), _ID_BATCH)]
        deleted = 0
        for flt in filters:
            matched = self.count(flt, on=target)
            if matched:
                self._call(
                    "delete",
                    methodcaller("delete", target, filter=flt, timeout=self.timeout_s),
                    target=target,
                )
                deleted += matched
                self._dirty.add(target)
        return deleted

    def flush(self) -> None:
        """Seal what this store wrote since the last flush (or the alias if it wrote nothing).

        Searches over unflushed rows are much slower on Milvus Lite; flush after bulk writes.
        """
        targets = set(self._dirty) or {self.collection}
        for name in sorted(targets):
            self._call("flush", methodcaller("flush", name, timeout=self.timeout_s), target=name)
        self._dirty -= targets

    # --------------------------------------------------------------------------------------- reads
    # ``on`` reads a given physical collection instead of the alias (re-index, validation).

    def count(self, expr: FilterArg = None, *, on: str | None = None) -> int:
        target = on or self.collection
        text = filter_expr(expr)
        result = self._call(
            "count",
            lambda c: c.query(target, filter=text, output_fields=["count(*)"], timeout=self.timeout_s),
            target=target,
        )
        return int(result[0]["count(*)"]) if result else 0

    def get(self, chunk_ids: Sequence[str], *, on: str | None = None) -> list[dict[str, Any]]:
        """Rows (scalar fields) for the ids that exist, in the order asked."""
        target = on or self.collection
        ids = list(dict.fromkeys(str(i) for i in chunk_ids))
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), _ID_BATCH):
            batch = ids[start : start + _ID_BATCH]

            def get_batch(c: Any, b: list[str] = batch) -> list[dict[str, Any]]:
                return c.get(target, ids=b, output_fields=list(SCALAR_FIELDS), timeout=self.timeout_s)

            rows = self._call("get", get_batch, target=target)
            for row in rows:
                found[str(row["chunk_id"])] = _plain(dict(row))
        return [found[i] for i in ids if i in found]

    def query(
        self,
        expr: FilterArg,
        *,
        limit: int = 1000,
        fields: Sequence[str] | None = None,
        on: str | None = None,
    ) -> list[dict[str, Any]]:
        _check_limit(limit)
        target = on or self.collection
        output = list(fields) if fields else list(SCALAR_FIELDS)
        text = filter_expr(expr)
        rows = self._call(
            "query",
            lambda c: c.query(target, filter=text, output_fields=output, limit=limit, timeout=self.timeout_s),
            target=target,
        )
        return [_plain(dict(r)) for r in rows]

    def iter_rows(
        self,
        expr: FilterArg = None,
        *,
        fields: Sequence[str] | None = None,
        batch_size: int = 1000,
        on: str | None = None,
    ) -> Iterable[list[dict[str, Any]]]:
        """Every row matching ``expr``, in pages (a plain query stops at 16384 rows)."""
        target = on or self.collection
        output = list(dict.fromkeys(["chunk_id", *(fields or SCALAR_FIELDS)]))
        text = filter_expr(expr)
        iterator = self._call(
            "query_iterator",
            lambda c: c.query_iterator(
                target, batch_size=batch_size, filter=text, output_fields=output, timeout=self.timeout_s
            ),
            target=target,
        )
        try:
            while True:
                page = self._call("query_iterator", lambda _c: iterator.next(), target=target)
                if not page:
                    return
                yield [_plain(dict(r)) for r in page]
        finally:
            iterator.close()

    def doc_versions(
        self, doc_ids: Sequence[str] | None = None, *, on: str | None = None
    ) -> dict[str, tuple[int, int]]:
        """doc_id -> (newest version, its updated_at) as stored now (all documents when ``doc_ids`` is None).

        Every version has an ordinal-0 chunk, so this reads one or two rows per document.
        """
        expr = first_chunks_filter()
        fields = ["doc_id", "version", "updated_at"]
        if doc_ids is None:
            rows = [r for page in self.iter_rows(expr, fields=fields, batch_size=5000, on=on) for r in page]
        else:
            ids = list(dict.fromkeys(doc_ids))
            if not ids:
                return {}
            # One plain query (the search path calls this): a few rows per document at most.
            rows = self.query(expr & doc_ids_filter(ids), limit=MAX_WINDOW, fields=fields, on=on)
        return newest_versions(rows)

    def _search(
        self,
        op: str,
        data: Any,
        field_name: str,
        params: dict[str, Any],
        limit: int,
        expr: FilterArg,
        on: str | None = None,
    ) -> list[Hit]:
        target = on or self.collection
        text = filter_expr(expr)
        result = self._call(
            op,
            lambda c: c.search(
                target,
                data=[data],
                anns_field=field_name,
                filter=text,
                limit=limit,
                output_fields=list(SCALAR_FIELDS),
                search_params=params,
                timeout=self.timeout_s,
            ),
            target=target,
        )
        return _hits(result)

    def search_dense_each(
        self,
        vectors: Sequence[Sequence[float] | np.ndarray],
        *,
        limit: int,
        expr: FilterArg = None,
        on: str | None = None,
    ) -> list[list[Hit]]:
        """One ANN request with one query per vector (nq = len(vectors)): hits per vector, in order."""
        _check_limit(limit)
        if not vectors:
            return []
        target = on or self.collection
        data = [_normalize(v, self.dim) for v in vectors]
        text = filter_expr(expr)
        result = self._call(
            "search_dense",
            lambda c: c.search(
                target,
                data=data,
                anns_field=DENSE_FIELD,
                filter=text,
                limit=limit,
                output_fields=["chunk_id"],
                search_params=self._dense_params(limit),
                timeout=self.timeout_s,
            ),
            target=target,
        )
        return [_hits([row]) for row in (result or [[] for _ in data])]

    def _dense_params(self, limit: int) -> dict[str, Any]:
        return {"metric_type": "IP", "params": {"ef": max(self.search_ef, limit)}}

    def search_dense(
        self,
        vector: Sequence[float] | np.ndarray,
        *,
        limit: int,
        expr: FilterArg = None,
        on: str | None = None,
    ) -> list[Hit]:
        _check_limit(limit)
        query = _normalize(vector, self.dim)
        return self._search("search_dense", query, DENSE_FIELD, self._dense_params(limit), limit, expr, on)

    def search_sparse(
        self, weights: dict[int, float], *, limit: int, expr: FilterArg = None, on: str | None = None
    ) -> list[Hit]:
        _check_limit(limit)
        query = _clean_sparse(weights, for_query=True)
        if not query:
            return []
        return self._search("search_sparse", query, SPARSE_FIELD, {"metric_type": "IP"}, limit, expr, on)

    def hybrid_search(
        self,
        vector: Sequence[float] | np.ndarray,
        weights: dict[int, float] | None,
        *,
        limit: int,
        expr: FilterArg = None,
        ranker: Literal["rrf", "weighted"] = "rrf",
        rrf_k: int = 60,
        weights_dense_sparse: tuple[float, float] = (1.0, 0.3),
    ) -> list[Hit]:
        """Dense + sparse ANN fused in Milvus (each leg fetches ``limit``).

        Without usable sparse weights it fuses the dense leg alone, so scores keep the ranker's scale.
        ``weighted`` uses Milvus' arctan score normalisation before weighting.
        """
        from pymilvus import AnnSearchRequest, RRFRanker, WeightedRanker

        _check_limit(limit)
        if ranker not in ("rrf", "weighted"):
            raise ValueError(f"unknown ranker {ranker!r}")
        dense = _normalize(vector, self.dim)
        sparse = _clean_sparse(weights, for_query=True)
        text = None if expr is None else filter_expr(expr)
        reqs = [
            AnnSearchRequest(
                data=[dense], anns_field=DENSE_FIELD, param=self._dense_params(limit), limit=limit, expr=text
            )
        ]
        leg_weights = [float(weights_dense_sparse[0])]
        if sparse:
            reqs.append(
                AnnSearchRequest(
                    data=[sparse],
                    anns_field=SPARSE_FIELD,
                    param={"metric_type": "IP"},
                    limit=limit,
                    expr=text,
                )
            )
            leg_weights.append(float(weights_dense_sparse[1]))
        fuser = RRFRanker(int(rrf_k)) if ranker == "rrf" else WeightedRanker(*leg_weights)
        result = self._call(
            "hybrid_search",
            lambda c: c.hybrid_search(
                self.collection,
                reqs,
                fuser,
                limit=limit,
                output_fields=list(SCALAR_FIELDS),
                timeout=self.timeout_s,
            ),
        )
        return _hits(result)


def make_store(settings: Settings, dim: int) -> MilvusStore:
    """The store of ``settings.milvus`` (alias, connection, HNSW, timeout) for ``dim``-d dense vectors."""
    m = settings.milvus
    return MilvusStore(
        m.uri,
        m.collection,
        dim,
        token=m.token.get_secret_value() if m.token else None,
        hnsw_m=m.hnsw_m,
        hnsw_ef_construction=m.hnsw_ef_construction,
        search_ef=m.search_ef,
        timeout_s=m.timeout_s,
    )


class IndexModelMismatch(RuntimeError):
    """The collection behind the alias holds vectors of another model than the one embedding the
    queries (a re-embed with a new model switched the alias): searching would compare vectors of
    two spaces, so the search is refused (503) until the service runs that model."""


class ModelGuard:
    """Whether the collection behind the alias was built with the model that embeds the queries.

    The physical collection and its recorded model are re-read every ``every_s`` seconds, so an
    alias switch is noticed within that time; between reads a search costs one comparison. A
    collection that records no model (built before models were recorded) passes.
    """

    def __init__(self, store: MilvusStore, every_s: float = 5.0) -> None:
        self.store, self.every_s = store, every_s
        self.recorded: tuple[str, str | None] | None = None  # (physical collection, its model)
        self.read_at = float("-inf")

    def stale(self) -> bool:
        return time.monotonic() - self.read_at > self.every_s

    def refresh(self) -> None:
        """Blocking: resolve the alias and read its model (run it off the event loop)."""
        try:
            physical = self.store.resolve()
        except StoreUnavailable as exc:
            if "does not exist" not in str(exc):
                raise
            self.recorded = None  # nothing ingested yet: nothing to compare
        else:
            self.recorded = (physical, self.store.model_of(physical))
        self.read_at = time.monotonic()

    def check(self, model: str | None) -> None:
        """``IndexModelMismatch`` naming both models when the index's differs from ``model``."""
        if model is None or self.recorded is None:
            return
        physical, recorded = self.recorded
        if recorded is not None and recorded != model:
            # Short enough for a client's error line (300 characters) with two full model keys.
            raise IndexModelMismatch(
                f"index {self.store.collection!r} ({physical}) holds vectors of model {recorded!r}, queries"
                f" are embedded with {model!r}: deploy that model, or run specrag rollback"
            )


@runtime_checkable
class Store(Protocol):
    """What the retriever reads from a chunk store; ``MilvusStore`` and ``FakeStore`` implement it.

    Filters are structured (``Filter``, built by this module's helpers), never Milvus strings, so
    an in-memory implementation can evaluate them (``Filter.matches``).  Semantics, as Milvus has them:

    ``search_dense``
        the ``limit`` rows nearest to ``vector`` by inner product, both L2-normalised (cosine),
        best first; every filtered row is a candidate whatever its score.
    ``search_sparse``
        the ``limit`` best rows by lexical score (sum of weight products over shared tokens,
        ``encoder.lexical_score``); only rows sharing a query token score at all, the placeholder
        token never matches, and a query without usable weights finds nothing.
    ``doc_versions``
        doc_id -> (newest stored version, its updated_at), read from the ordinal-0 rows.
    ``query``
        up to ``limit`` rows matching ``expr`` with ``fields`` (all scalar fields by default) and
        always ``chunk_id``; no order.
    Hits carry the scalar fields (``SCALAR_FIELDS``), never vectors.
    """

    def search_dense(
        self, vector: Sequence[float] | np.ndarray, *, limit: int, expr: Filter | None = None
    ) -> list[Hit]: ...

    def search_sparse(
        self, weights: dict[int, float], *, limit: int, expr: Filter | None = None
    ) -> list[Hit]: ...

    def doc_versions(self, doc_ids: Sequence[str] | None = None) -> dict[str, tuple[int, int]]: ...

    def query(
        self, expr: Filter, *, limit: int = 1000, fields: Sequence[str] | None = None
    ) -> list[dict[str, Any]]: ...

    def count(self, expr: Filter | None = None) -> int: ...


LANGUAGES = ("ja", "en")  # what ``chunking.detect_lang`` assigns to documents and chunks


def language_counts(store: Store) -> dict[str, int]:
    """Current chunks per language: the corpus' language mix, which decides whether a search
    balances languages and whether a Japanese query gets an English dictionary variant."""
    return {lang: store.count(build_filter(langs=lang)) for lang in LANGUAGES}


def meta_collection(alias: str) -> str:
    """Where job state and failure records of ``alias`` live (outside the alias, so they survive a switch)."""
    return f"{alias}_meta"


def _check_limit(limit: int) -> None:
    if not 1 <= int(limit) <= MAX_WINDOW:
        raise ValueError(f"limit must be between 1 and {MAX_WINDOW}, got {limit}")


def _result_count(result: Any, key: str, default: int) -> int:
    if isinstance(result, dict):
        return int(result.get(key, default))
    getter = getattr(result, "get", None)
    if callable(getter):
        value = getter(key)
        if value is not None:
            return int(value)
    return default


def _hits(result: Any) -> list[Hit]:
    if not result:
        return []
    hits: list[Hit] = []
    for hit in result[0]:
        entity = hit.get("entity") or {}
        fields = _plain(dict(entity))
        chunk_id = str(fields.get("chunk_id") or hit.get("id") or hit.get("chunk_id"))
        fields.setdefault("chunk_id", chunk_id)
        hits.append(Hit(chunk_id=chunk_id, score=float(hit.get("distance", 0.0)), fields=fields))
    return hits
