"""Data scopes through the HTTP layer: every route that reads or writes documents gets the
caller's scope (the real pipeline over fakes), and the probes a fresh deployment is gated on."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serve_app.core.contracts import Expansion, Fanout
from serve_app.core.fusion import Candidate
from serve_app.core.ingest import OutOfScope
from serve_app.core.pipeline import SearchPipeline
from serve_app.http.app import create_app
from serve_app.http.security import hash_key, new_key
from serve_app.settings import DataScope, SearchSettings, Settings

KEY_A, KEY_ALL = new_key(), new_key()
SCOPE_A = {"sources": ["team-a/"]}
DOCS = {
    "a-spec": {"doc_id": "a-spec", "source": "team-a/spec.md", "kind": "spec", "tags": []},
    "b-spec": {"doc_id": "b-spec", "source": "team-b/spec.md", "kind": "spec", "tags": []},
}


class Backend:
    """Records the scope each call carried; the pipeline is the real one over fakes."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.pipeline = SearchPipeline(
            SearchSettings(rerank=False), expander=self, embedder=self, retriever=self, reranker=self
        )
        self.milvus = "not_initialized"

    async def expand(self, query: str, enabled: bool = True, scope: DataScope | None = None) -> Expansion:
        self.calls.append(("expand", scope))
        return {"variants": [{"text": query, "lang": "ja", "origin": "original"}], "llm": "off"}

    async def embed(
        self, texts: list[str], input_type: str, colbert: bool = False, truncate: str = "end"
    ) -> list:
        vec = np.full(4, 0.5, np.float32)
        out = {"dense": vec, "sparse": {}, "colbert": None, "tokens": 1, "truncated": False, "cached": None}
        return [{**out, "error": None} for _ in texts]

    async def search(self, vectors: list[Any], **kw: Any) -> Fanout:
        self.calls.append(("search", kw["scope"]))
        fields = {**DOCS["a-spec"], "version": 1, "text": "本文"}
        return Fanout([Candidate("a#0", fields, rrf=0.03)], {"search": 1.0, "versions": 1.0, "fuse": 0.1}, 1)

    async def rerank(self, query: str, candidates: list[Candidate], queries: Any = ()) -> list[Candidate]:
        for c in candidates:
            c.channel_scores["rerank"] = 0.5
        return candidates

    async def model_info(self) -> dict[str, Any]:
        return {"model": "fake", "dim": 4, "max_length": 512, "model_key": "k"}

    async def readiness(self, timeout_s: float) -> dict[str, dict[str, Any]]:
        ok = {"status": "ok"}
        return {
            "model": ok,
            "redis": {"status": "disabled"},
            "milvus": {"status": self.milvus},
            "expander": ok,
        }

    async def upsert_documents(self, docs: list[dict[str, Any]], scope: DataScope | None = None) -> dict:
        self.calls.append(("upsert", scope))
        if scope is not None and not all(scope.allows(d["source"], d["kind"], d["tags"]) for d in docs):
            raise OutOfScope(f"document {docs[0]['doc_id']!r} is outside this caller's write scope")
        counts = dict.fromkeys(("updated", "unchanged", "chunks_reused", "chunks_deleted", "seconds"), 0)
        return {
            **counts,
            "documents": len(docs),
            "added": len(docs),
            "failed": [],
            "chunks_embedded": 1,
            "chunks_written": 1,
        }

    async def get_document(self, doc_id: str) -> dict[str, Any] | None:
        doc = DOCS.get(doc_id)
        return (
            None
            if doc is None
            else {**doc, "version": 1, "updated_at": 1, "chunks": 1, "title": "", "langs": []}
        )

    async def delete_documents(self, doc_ids: list[str], scope: DataScope | None = None) -> dict[str, Any]:
        self.calls.append(("delete", scope))
        return {"deleted": 1, "chunks_deleted": 1}


@pytest.fixture
def app() -> tuple[TestClient, Backend]:
    keys = [
        {
            "name": "team-a",
            "sha256": hash_key(KEY_A),
            "scopes": ["search", "ingest"],
            "read": SCOPE_A,
            "write": SCOPE_A,
        },
        {"name": "ops", "sha256": hash_key(KEY_ALL), "scopes": ["admin"]},
    ]
    settings = Settings(auth={"keys": keys}, dify={"profiles": {"kb": {}}})
    backend = Backend()
    return TestClient(create_app(settings, backend), raise_server_exceptions=False), backend


def _as(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_searches_carry_the_read_scope_to_the_fan_out_and_the_expansion(app) -> None:
    client, backend = app
    assert client.post("/v1/search", json={"query": "仕様"}, headers=_as(KEY_A)).status_code == 200
    body = {"knowledge_id": "kb", "query": "仕様", "retrieval_setting": {"top_k": 3, "score_threshold": 0}}
    assert client.post("/retrieval", json=body, headers=_as(KEY_A)).status_code == 200
    scope = DataScope(**SCOPE_A)
    assert backend.calls == [("expand", scope), ("search", scope), ("expand", scope), ("search", scope)]
    backend.calls.clear()
    client.post("/v1/search", json={"query": "仕様"}, headers=_as(KEY_ALL))
    assert backend.calls == [("expand", None), ("search", None)], "an unscoped key reads everything"


def test_a_document_outside_the_read_scope_is_not_found(app) -> None:
    client, _ = app
    assert client.get("/v1/documents/a-spec", headers=_as(KEY_A)).status_code == 200
    hidden = client.get("/v1/documents/b-spec", headers=_as(KEY_A))
    assert hidden.status_code == 404 and hidden.json()["error"] == "no document 'b-spec'"
    assert client.get("/v1/documents/b-spec", headers=_as(KEY_ALL)).status_code == 200


def test_writes_carry_the_write_scope_and_a_refusal_is_403(app) -> None:
    client, backend = app
    doc = {"doc_id": "n", "text": "本文", "source": "team-a/n.md"}
    assert client.post("/v1/documents", json={"documents": [doc]}, headers=_as(KEY_A)).status_code == 200
    refused = client.post(
        "/v1/documents", json={"documents": [{**doc, "source": "team-b/n.md"}]}, headers=_as(KEY_A)
    )
    assert refused.status_code == 403 and refused.json()["error"] == "outside this caller's write scope"
    assert "'n' is outside" in refused.json()["detail"]
    assert client.delete("/v1/documents/b-spec", headers=_as(KEY_A)).status_code == 200
    assert [c for c in backend.calls if c[0] != "expand"] == [
        ("upsert", DataScope(**SCOPE_A)),
        ("upsert", DataScope(**SCOPE_A)),
        ("delete", DataScope(**SCOPE_A)),
    ]


def test_probes_let_a_fresh_deployment_take_writes(app) -> None:
    client, backend = app
    assert client.get("/livez").json() == {"status": "ok"}
    write, search = client.get("/readyz/write"), client.get("/readyz/search")
    assert (write.status_code, write.json()["status"]) == (200, "not_initialized")
    assert (search.status_code, search.json()["status"]) == (503, "not_initialized")
    backend.milvus = "ok"
    assert client.get("/readyz/search").status_code == 200
    backend.milvus = "down"
    assert client.get("/readyz/write").status_code == 503 and client.get("/livez").status_code == 200
