"""Durable bookkeeping next to an alias: job state, ingest runs and failed documents/chunks.

Kept in Milvus (collection ``{alias}_meta``) rather than a local file because ingest runs and
re-embed jobs may run on any node of a cluster, and ``--status`` must see them from anywhere;
Milvus is the one durable store every part of specrag already reaches. Milvus needs a vector
field in every collection, so the rows carry a 2-d placeholder vector nothing searches.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from operator import methodcaller
from typing import Any

from serve_app.core.store import Filter, MilvusStore, meta_collection

__all__ = ["MetaStore"]

_KEY_MAX = 1024
_VALUE_MAX = 65_535
_PLACEHOLDER = [1.0, 0.0]


def _fit(value: dict[str, Any]) -> str:
    """JSON of ``value`` within the field's byte limit: long strings and lists are shortened
    (never the serialised text, which would no longer parse)."""
    limit = 2000
    while True:
        text = json.dumps(value, ensure_ascii=False, default=str)
        if len(text.encode()) <= _VALUE_MAX or limit < 16:
            return text if len(text.encode()) <= _VALUE_MAX else json.dumps({"truncated": True})
        value = {k: _shorten(v, limit) for k, v in value.items()}
        limit //= 2


def _shorten(value: Any, limit: int) -> Any:
    if isinstance(value, str):
        return value[:limit]
    if isinstance(value, list):
        return [_shorten(v, limit) for v in value[: max(limit // 100, 1)]]
    if isinstance(value, dict):
        return {k: _shorten(v, limit) for k, v in value.items()}
    return value


class MetaStore:
    """Records ``(kind, key) -> JSON``; ``kind`` groups them (``failed``, ``run``, ``reindex``)."""

    def __init__(self, store: MilvusStore) -> None:
        self.store = store
        self.name = meta_collection(store.collection)
        self._ready = False

    def _ensure(self) -> None:
        if self._ready:
            return

        def run(client: Any) -> None:
            from pymilvus import DataType

            if client.has_collection(self.name, timeout=self.store.timeout_s):
                return
            schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=_KEY_MAX)
            schema.add_field("kind", DataType.VARCHAR, max_length=32)
            schema.add_field("value", DataType.VARCHAR, max_length=_VALUE_MAX)
            schema.add_field("updated_at", DataType.INT64)
            schema.add_field("vec", DataType.FLOAT_VECTOR, dim=2)
            index = client.prepare_index_params()
            index.add_index(field_name="vec", index_type="FLAT", metric_type="IP")
            try:
                client.create_collection(
                    self.name,
                    schema=schema,
                    index_params=index,
                    consistency_level="Strong",
                    timeout=self.store.timeout_s,
                )
            except Exception:
                if not client.has_collection(self.name, timeout=self.store.timeout_s):
                    raise  # not a lost creation race

        self.store.execute("meta_create", run)
        self._ready = True

    @staticmethod
    def _key(kind: str, key: str) -> str:
        full = f"{kind}:{key}"
        if len(full.encode()) > _KEY_MAX:
            raise ValueError(f"meta key too long: {full[:60]!r}...")
        return full

    def put_many(self, kind: str, items: dict[str, dict[str, Any]]) -> None:
        if not items:
            return
        self._ensure()
        now = int(time.time())
        rows = []
        for key, value in items.items():
            text = _fit(value)
            rows.append(
                {
                    "key": self._key(kind, key),
                    "kind": kind,
                    "value": text,
                    "updated_at": now,
                    "vec": _PLACEHOLDER,
                }
            )
        self.store.execute(
            "meta_put", lambda c: c.upsert(self.name, rows, timeout=self.store.timeout_s), target=self.name
        )

    def put(self, kind: str, key: str, value: dict[str, Any]) -> None:
        self.put_many(kind, {key: value})

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        self._ensure()
        rows = self.store.execute(
            "meta_get",
            # A filter we quote, not ``ids=``: pymilvus does not escape a newline in an id it
            # turns into an expression, and document ids may hold one.
            lambda c: c.query(
                self.name,
                filter=Filter.eq("key", self._key(kind, key)).expr(),
                output_fields=["value"],
                timeout=self.store.timeout_s,
            ),
            target=self.name,
        )
        return json.loads(rows[0]["value"]) if rows else None

    def list(self, kind: str, prefix: str = "", *, limit: int = 16_384) -> dict[str, dict[str, Any]]:
        """key -> value for every record of ``kind`` whose key starts with ``prefix``."""
        self._ensure()
        flt = Filter.eq("kind", kind)
        if prefix:
            # LIKE has one wildcard (%); a literal % in the prefix cannot be escaped, so match wider
            # and filter here.
            safe = prefix.split("%", 1)[0]
            flt &= Filter.prefix("key", self._key(kind, safe))
        expr = flt.expr()
        rows = self.store.execute(
            "meta_list",
            lambda c: c.query(
                self.name,
                filter=expr,
                output_fields=["key", "value"],
                limit=limit,
                timeout=self.store.timeout_s,
            ),
            target=self.name,
        )
        head = f"{kind}:"
        out = {r["key"][len(head) :]: json.loads(r["value"]) for r in rows}
        return {k: v for k, v in sorted(out.items()) if k.startswith(prefix)}

    def delete(self, kind: str, keys: Sequence[str]) -> None:
        if not keys:
            return
        self._ensure()
        ids = [self._key(kind, k) for k in keys]
        for start in range(0, len(ids), 1000):
            batch = ids[start : start + 1000]
            expr = Filter.isin("key", batch).expr()
            self.store.execute(
                "meta_delete",
                methodcaller("delete", self.name, filter=expr, timeout=self.store.timeout_s),
                target=self.name,
            )
