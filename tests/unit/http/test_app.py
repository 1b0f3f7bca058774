"""The HTTP layer on its own: the app factory over a fake backend, the wire mapping of a search
outcome, and the one mapping from core errors to status codes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serve_app.core.contracts import EmbedOutput, Fanout
from serve_app.core.fusion import Candidate
from serve_app.core.ingest import ModelMismatch
from serve_app.core.pipeline import (
    EmbedderUnavailable,
    OriginalOnly,
    QueryNotEmbedded,
    SearchPipeline,
    SearchRejected,
)
from serve_app.core.store import IndexModelMismatch, StoreUnavailable
from serve_app.http.app import create_app
from serve_app.http.errors import BackendUnavailable
from serve_app.settings import SearchSettings, Settings


def _out() -> EmbedOutput:
    return {
        "dense": np.full(4, 0.5, np.float32),
        "sparse": {7: 0.25},
        "colbert": None,
        "tokens": 3,
        "truncated": False,
        "cached": None,
        "error": None,
    }


class Retriever:
    def __init__(self) -> None:
        self.error: Exception | None = None
        self.filters: Any = None

    async def search(self, vectors: list[Any], **kw: Any) -> Fanout:
        if self.error:
            raise self.error
        self.filters = kw["filters"]
        fields = {"doc_id": "d1", "version": 2, "text": "本文", "title_path": ["A", "B"], "doc_updated_at": 7}
        return Fanout(
            [Candidate("d1#0", fields, rrf=0.03, channel_scores={"dense": 0.8})],
            {"search": 1.0, "versions": 1.0, "fuse": 0.1},
            2,
        )


class Backend:
    """An honest in-process backend: the real pipeline over fakes, embeddings from a constant."""

    def __init__(self) -> None:
        self.retriever = Retriever()
        self.embedder_error: Exception | None = None
        self.indexer_error: Exception | None = None
        self.pipeline = SearchPipeline(
            SearchSettings(rerank=False),
            expander=OriginalOnly(),
            embedder=self,
            retriever=self.retriever,
            reranker=self,  # type: ignore[arg-type]
        )

    async def model_info(self) -> dict[str, Any]:
        return {"model": "fake-m3", "dim": 4, "model_key": "fake"}

    async def embed(
        self, texts: list[str], input_type: str, colbert: bool = False, truncate: str = "end"
    ) -> list[EmbedOutput]:
        if self.embedder_error:
            raise self.embedder_error
        return [_out() for _ in texts]

    async def token_strings(self, ids: list[int]) -> list[str]:
        return [f"tok{i}" for i in ids]

    async def readiness(self, timeout_s: float) -> dict[str, dict[str, Any]]:
        ok = {"status": "ok"}
        return {
            "model": ok,
            "redis": {"status": "disabled"},
            "milvus": {"status": "not_initialized"},
            "expander": ok,
        }

    async def upsert_documents(self, docs: list[dict[str, Any]], scope: Any = None) -> dict[str, Any]:
        if self.indexer_error:
            raise self.indexer_error
        return {"added": len(docs), "updated": 0, "unchanged": 0, "failed": [], "chunks_embedded": 1}

    async def get_document(self, doc_id: str) -> dict[str, Any] | None:
        return None

    async def delete_documents(self, doc_ids: list[str], scope: Any = None) -> dict[str, Any]:
        return {"deleted": 0, "chunks_deleted": 0}

    async def sync_source(self, name: str, commit: str | None, full: bool, wait: bool) -> dict[str, Any]:
        if self.indexer_error:
            raise self.indexer_error
        self.synced = (name, commit, full, wait)
        return {**await self.source_status(name), "state": "queued", "requested": commit or "HEAD"}

    async def source_status(self, name: str) -> dict[str, Any]:
        return {
            "source": name,
            "state": "idle",
            "requested": None,
            "error": None,
            "commit": None,
            "synced_at": None,
            "last": None,
        }


@pytest.fixture
def app() -> tuple[TestClient, Backend]:
    backend = Backend()
    return TestClient(create_app(Settings(), backend), raise_server_exceptions=False), backend


def test_search_maps_the_outcome_to_the_wire(app) -> None:
    client, backend = app
    r = client.post("/v1/search", json={"query": "有効期限", "filters": {"kinds": ["spec"]}, "explain": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert backend.retriever.filters == {"kinds": ["spec"]}
    hit = body["results"][0]
    assert (hit["rank"], hit["chunk_id"], hit["doc_id"], hit["version"]) == (1, "d1#0", "d1", 2)
    assert hit["title_path"] == ["A", "B"] and hit["updated_at"] == 7
    assert hit["score"] == pytest.approx(0.03) and hit["scores"] == {"rrf": 0.03, "dense": 0.8}
    assert body["model"] == "fake-m3" and body["variants"][0]["origin"] == "original"
    assert body["explain"]["rerank"] == "off"


@pytest.mark.parametrize(
    ("error", "status", "reason"),
    [
        (StoreUnavailable("milvus down"), 503, "vector store unavailable"),
        (
            IndexModelMismatch("holds vectors of model 'b', embeds with 'a'"),
            503,
            "the index was built with another model than the one this service runs",
        ),
        (SearchRejected("bad filter"), 400, "the vector store rejected the search"),
    ],
)
def test_store_errors_map_to_their_status(app, error: Exception, status: int, reason: str) -> None:
    client, backend = app
    backend.retriever.error = error
    r = client.post("/v1/search", json={"query": "q"})
    assert (r.status_code, r.json()["error"]) == (status, reason)
    assert r.json()["detail"] == str(error)


def test_embedder_errors_map_to_503_on_every_route(app) -> None:
    client, backend = app
    backend.embedder_error = EmbedderUnavailable("no replica")
    r = client.post("/v1/search", json={"query": "q"})
    assert (r.status_code, r.json()["error"], r.json()["detail"]) == (
        503,
        "embedder unavailable",
        "no replica",
    )
    assert client.post("/v1/embed", json={"input": "x"}).status_code == 503
    r = client.post("/v1/embeddings", json={"model": "fake-m3", "input": "x"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "service_unavailable"
    backend.embedder_error = QueryNotEmbedded("nan")
    r = client.post("/v1/search", json={"query": "q"})
    assert (r.status_code, r.json()["error"]) == (503, "the embedder failed on the query")


def test_indexer_errors_map_to_409_and_503(app) -> None:
    client, backend = app
    doc = {"documents": [{"doc_id": "a", "text": "本文"}]}
    backend.indexer_error = ModelMismatch("built with e5")
    assert client.post("/v1/documents", json=doc).status_code == 409
    backend.indexer_error = BackendUnavailable("indexer unavailable", "actor died")
    r = client.post("/v1/documents", json=doc)
    assert (r.status_code, r.json()["error"], r.json()["detail"]) == (
        503,
        "indexer unavailable",
        "actor died",
    )
    assert client.get("/v1/documents/nope").status_code == 404


def test_readiness_and_embed_routes(app) -> None:
    client, _ = app
    r = client.get("/readyz")
    assert (r.status_code, r.json()["status"]) == (503, "not_initialized")
    r = client.post("/v1/embed", json={"input": ["a", "", 3], "return_sparse": True, "return_tokens": True})
    data = r.json()["data"]
    assert data[0]["sparse"] == {"7": 0.25} and data[0]["sparse_tokens"] == {"tok7": 0.25}
    assert [d["error"] for d in data] == [None, "empty or whitespace-only", "not a string"]


def test_each_call_builds_its_own_app_with_its_own_limits() -> None:
    small = TestClient(create_app(Settings(limits={"max_body_bytes": 1024}), Backend()))
    large = TestClient(create_app(Settings(), Backend()))
    body = {"query": "x" * 1500}
    assert small.post("/v1/search", json=body).status_code == 413
    assert large.post("/v1/search", json=body).status_code == 200


def test_body_parse_errors_and_unknown_routes_answer_in_the_service_error_shape(app) -> None:
    """FastAPI answers an undecodable body with a bare 400 and Starlette a 404 with ``detail``;
    the app turns both into ``{"error": reason}`` and names why the body could not be read."""
    client, _ = app
    j = {"content-type": "application/json"}
    bad_utf8 = client.post("/v1/search", content=b'{"query": "\xff token"}', headers=j)
    assert bad_utf8.status_code == 400
    assert bad_utf8.json()["error"].startswith("request body is not valid UTF-8 (byte 11")
    nested = client.post("/v1/search", content=b'{"query": ' + b"[" * 5000 + b"]" * 5000 + b"}", headers=j)
    assert (nested.status_code, nested.json()["error"]) == (400, "request body is nested too deeply")
    missing = client.get("/v1/nothing")
    assert missing.json() == {
        "error": "Not Found",
        "detail": None,
        "request_id": missing.headers["x-request-id"],
    }
    assert client.put("/v1/search").headers["allow"] == "POST"


SOURCES = {"ingest": {"sources": {"handbook": {"repo": "/srv/handbook.git"}}}}


def test_source_trigger_names_a_registered_source_and_a_commit_only() -> None:
    from serve_app.core.gitrepo import GitError, UnknownRevision

    backend = Backend()
    client = TestClient(create_app(Settings(**SOURCES), backend), raise_server_exceptions=False)
    r = client.post("/v1/sources/handbook/sync", json={"commit": "a1b2c3d"})
    assert r.status_code == 202 and r.json()["requested"] == "a1b2c3d"
    assert backend.synced == ("handbook", "a1b2c3d", False, False)
    assert client.get("/v1/sources").json()[0]["source"] == "handbook"
    assert client.get("/v1/sources/handbook").json()["state"] == "idle"
    for name, body, status in [
        ("other", {}, 404),
        ("handbook", {"repo": "/etc"}, 422),
        ("handbook", {"commit": "-x"}, 422),
        ("handbook", {"commit": "a b"}, 422),
    ]:
        assert client.post(f"/v1/sources/{name}/sync", json=body).status_code == status
    assert client.get("/v1/sources/other").status_code == 404
    backend.indexer_error = UnknownRevision("no commit 'abc' in the repository")
    r = client.post("/v1/sources/handbook/sync", json={"commit": "abc"})
    assert (r.status_code, r.json()["error"]) == (422, "no such commit in the source's repository")
    backend.indexer_error = GitError("git fetch failed in /srv/handbook.git: could not read")
    assert client.post("/v1/sources/handbook/sync", json={}).status_code == 503
