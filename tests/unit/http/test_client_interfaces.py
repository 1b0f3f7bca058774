"""The routes other systems' clients call: Cohere/Jina and TEI rerank, OpenAI's model list, TEI's
/info, and /v1/embeddings' NIM fields, over test_app's backend with a real text-rerank engine and
real embedding service (hash encoder, no model)."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serve_app.core.contracts import EmbedOutput, TextScore
from serve_app.core.embedding import EmbeddingService
from serve_app.core.pipeline import LocalEmbedder
from serve_app.core.rerank import ColbertReranker
from serve_app.http.app import create_app
from serve_app.http.schemas import TOKEN_ARRAYS_REFUSED
from serve_app.http.security import hash_key, new_key, required_scope
from serve_app.settings import SearchSettings, Settings
from serve_app.testing.doubles import HashEncoder
from tests.unit.http.test_app import Backend

WINDOW = 12  # the hash encoder's token window here: ten words fit
QUERY = "token expiry refresh"
DOCS = [
    "inventory is allocated first in first out",
    "the access token expiry is sixty minutes",
    "refresh the token before its expiry",
]
LONG = " ".join(f"word{i}" for i in range(20)) + " token expiry refresh"


class InterfaceBackend(Backend):
    """test_app's backend with real embeddings and a real ``ColbertReranker`` behind ``rerank``;
    it records what the routes asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.embedder_port = LocalEmbedder(EmbeddingService(HashEncoder(dim=16, max_length=WINDOW)))
        self.reranker = ColbertReranker(self.embedder_port, SearchSettings())
        self.embed_calls: list[tuple[list[str], str, str]] = []
        self.rerank_calls: list[tuple[str, list[str], str]] = []

    async def model_info(self) -> dict[str, Any]:
        return {
            "model": "fake-m3",
            "revision": "abc123",
            "dim": 16,
            "max_length": WINDOW,
            "dtype": "float32",
            "pooling": "mean",
            "model_key": "fake",
        }

    async def embed(
        self, texts: list[str], input_type: Any, colbert: bool = False, truncate: Any = "end"
    ) -> list[EmbedOutput]:
        self.embed_calls.append((texts, input_type, truncate))
        return await self.embedder_port.embed(texts, input_type, colbert, truncate)

    async def rerank(self, query: str, texts: list[str], truncate: Any = "end") -> list[TextScore]:
        self.rerank_calls.append((query, texts, truncate))
        return await self.reranker.score_texts(query, texts, truncate)


def _client(**settings: Any) -> tuple[TestClient, InterfaceBackend]:
    backend = InterfaceBackend()
    app = create_app(Settings(**settings), backend)
    return TestClient(app, raise_server_exceptions=False), backend


@pytest.fixture
def app() -> tuple[TestClient, InterfaceBackend]:
    return _client()


def _message(r: Any) -> str:
    """The refusal's text in either error shape."""
    body = r.json()
    error = body["error"]
    return error["message"] if isinstance(error, dict) else f"{error} {body.get('detail') or ''}"


# --------------------------------------------------------------------------- Cohere / Jina rerank


def test_cohere_rerank_answers_relevance_best_first(app) -> None:
    client, backend = app
    r = client.post("/v1/rerank", json={"model": "fake-m3", "query": QUERY, "documents": DOCS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert {"id", "model", "results", "meta", "usage"} <= set(body) and body["model"] == "fake-m3"
    scores = [x["relevance_score"] for x in body["results"]]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= x <= 1.0 for x in scores)
    assert sorted(x["index"] for x in body["results"]) == [0, 1, 2] and body["results"][-1]["index"] == 0
    assert all("document" not in x for x in body["results"]), "Cohere's default: no documents back"
    assert body["meta"]["tokens"]["input_tokens"] == body["usage"]["total_tokens"] > 0
    assert body["meta"]["truncated"] == [] and body["meta"]["warnings"] == []
    assert backend.rerank_calls == [(QUERY, DOCS, "end")]


def test_jina_documents_top_n_and_return_documents(app) -> None:
    client, _ = app
    docs = [{"text": d} for d in DOCS]
    body = {"query": QUERY, "documents": docs, "top_n": 2, "return_documents": True}
    results = client.post("/v1/rerank", json=body).json()["results"]
    assert len(results) == 2
    assert all(x["document"] == {"text": DOCS[x["index"]]} for x in results)
    v2 = client.post("/v2/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 9}).json()["results"]
    assert len(v2) == 3, "top_n over the count returns everything"
    assert [x["index"] for x in v2[:2]] == [x["index"] for x in results]


def test_rerank_model_must_be_served(app) -> None:
    client, _ = app
    r = client.post("/v1/rerank", json={"model": "rerank-v3.5", "query": QUERY, "documents": DOCS})
    assert r.status_code == 404 and "rerank-v3.5" in _message(r) and "fake-m3" in _message(r)
    named, _ = _client(search={"cross_encoder": "/models/bge-reranker-v2-m3"})
    for model in ("bge-reranker-v2-m3", "/models/bge-reranker-v2-m3", "fake-m3"):
        r = named.post("/v1/rerank", json={"model": model, "query": QUERY, "documents": DOCS})
        assert r.status_code == 200, (model, r.text)
        assert r.json()["model"] == "bge-reranker-v2-m3"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"query": QUERY, "documents": []}, "documents"),
        ({"query": "  ", "documents": DOCS}, "query"),
        ({"query": QUERY, "documents": DOCS, "rank_fields": ["text"]}, "rank_fields"),
        ({"query": QUERY, "documents": DOCS, "priority": 1}, "priority"),
        ({"query": QUERY, "documents": [{"text": "a", "title": "b"}]}, "title"),
        ({"query": QUERY, "documents": DOCS, "top_n": 0}, "top_n"),
    ],
)
def test_rerank_refuses_invalid_requests_naming_the_field(app, body: dict, field: str) -> None:
    client, _ = app
    r = client.post("/v1/rerank", json=body)
    assert r.status_code == 422, r.text
    assert field in r.text


def test_rerank_refuses_a_lone_surrogate_with_its_position(app) -> None:
    client, _ = app
    raw = b'{"query": "q", "documents": ["ok", "ab\\ud800"]}'
    r = client.post("/v1/rerank", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "documents: lone UTF-16 surrogate at character 2" in r.text


def test_rerank_limits_are_named(app) -> None:
    client, _ = _client(limits={"max_rerank_documents": 2, "max_rerank_document_chars": 30})
    r = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS})
    assert r.status_code == 413 and "limits.max_rerank_documents" in _message(r)
    r = client.post("/v1/rerank", json={"query": QUERY, "documents": ["short", "x" * 31]})
    assert r.status_code == 413 and "limits.max_rerank_document_chars" in _message(r)
    assert r.json()["detail"] == {"indices": [1]}
    r = client.post("/rerank", json={"query": QUERY, "texts": ["x" * 31]})
    assert r.status_code == 413 and "texts longer than 30" in _message(r)


def test_long_documents_are_cut_and_reported(app) -> None:
    client, _ = app
    r = client.post("/v1/rerank", json={"query": QUERY, "documents": [DOCS[0], LONG]})
    meta = r.json()["meta"]
    assert meta["truncated"] == [1] and f"window of {WINDOW} tokens" in meta["warnings"][0]
    r = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "max_tokens_per_doc": 4096})
    assert r.status_code == 200
    r = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "max_tokens_per_doc": 5})
    assert r.status_code == 422 and f"window of {WINDOW} tokens" in _message(r)


# ------------------------------------------------------------------------------------ TEI rerank


def test_tei_rerank_scores_raw_scores_and_texts(app) -> None:
    client, backend = app
    r = client.post("/rerank", json={"query": QUERY, "texts": DOCS})
    assert r.status_code == 200, r.text
    ranks = r.json()
    assert [set(x) for x in ranks] == [{"index", "score"}] * 3
    assert [x["score"] for x in ranks] == sorted((x["score"] for x in ranks), reverse=True)
    raw = client.post(
        "/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True, "return_text": True}
    )
    core = {t["index"]: t for t in asyncio.run(backend.reranker.score_texts(QUERY, DOCS))}
    for x in raw.json():
        assert x["score"] == pytest.approx(core[x["index"]]["score"]) and x["text"] == DOCS[x["index"]]
    assert backend.rerank_calls[0][2] == "none", "TEI's default: no truncation"


def test_tei_rerank_refuses_long_texts_unless_truncate(app) -> None:
    client, backend = app
    r = client.post("/rerank", json={"query": QUERY, "texts": [DOCS[0], LONG]})
    assert r.status_code == 413
    assert f"texts[1] has 25 tokens, over the model's limit of {WINDOW} tokens" in _message(r)
    assert "truncate: true" in _message(r)
    r = client.post("/rerank", json={"query": LONG, "texts": DOCS})
    assert r.status_code == 413 and "query has 25 tokens" in _message(r)
    assert client.post("/rerank", json={"query": QUERY, "texts": [LONG], "truncate": True}).status_code == 200
    left = {"query": QUERY, "texts": [LONG], "truncate": True, "truncation_direction": "Left"}
    assert client.post("/rerank", json=left).status_code == 200
    assert [c[2] for c in backend.rerank_calls[-2:]] == ["end", "start"]
    r = client.post("/rerank", json={"query": QUERY, "texts": DOCS, "truncation_direction": "up"})
    assert r.status_code == 422 and "truncation_direction" in r.text


# ---------------------------------------------------------------------------------- models, info


def test_models_list_in_openai_shape() -> None:
    client, _ = _client()
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    assert [(m["id"], m["object"], m["owned_by"]) for m in body["data"]] == [("fake-m3", "model", "specrag")]
    assert isinstance(body["data"][0]["created"], int) and body["data"][0]["created"] > 1_600_000_000
    with_cross, _ = _client(search={"cross_encoder": "/models/bge-reranker-v2-m3"})
    assert [m["id"] for m in with_cross.get("/v1/models").json()["data"]] == ["fake-m3", "bge-reranker-v2-m3"]


def test_info_in_tei_shape() -> None:
    client, _ = _client(batch={"max_batch_size": 24}, limits={"max_embed_items": 8})
    info = client.get("/info").json()
    assert info["model_id"] == "fake-m3" and info["model_sha"] == "abc123"
    assert info["model_dtype"] == "float32" and info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert (info["max_input_length"], info["dimension"]) == (WINDOW, 16)
    assert (info["max_batch_requests"], info["max_client_batch_size"]) == (24, 8)
    assert info["auto_truncate"] is True and info["version"] == "0.1.0"
    assert info["reranker"] == {"model_id": "fake-m3", "method": "colbert"}


# ------------------------------------------------------------------------- /v1/embeddings fields


def test_embeddings_input_type_and_truncate_reach_the_embedder(app) -> None:
    client, backend = app
    for sent, input_type in (
        ({"input_type": "query"}, "query"),
        ({"input_type": "document"}, "passage"),
        ({}, "passage"),
    ):
        r = client.post("/v1/embeddings", json={"model": "fake-m3", "input": "token", **sent})
        assert r.status_code == 200, r.text
        assert backend.embed_calls[-1][1:] == (input_type, "end")
    client.post("/v1/embeddings", json={"model": "fake-m3", "input": [LONG], "truncate": "START"})
    assert backend.embed_calls[-1][2] == "start"
    r = client.post("/v1/embeddings", json={"model": "fake-m3", "input": "x", "input_type": "search_query"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "input_type"


def test_embeddings_truncate_none_names_the_token_limit(app) -> None:
    client, _ = app
    body = {"model": "fake-m3", "input": ["fits", LONG], "truncate": "NONE"}
    r = client.post("/v1/embeddings", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "input" and error["code"] == "context_length_exceeded"
    assert f"input[1] has 25 tokens, over the model's limit of {WINDOW} tokens" in error["message"]
    end = client.post("/v1/embeddings", json={**body, "truncate": "END"}).json()["data"]
    start = client.post("/v1/embeddings", json={**body, "truncate": "START"}).json()["data"]
    assert end[1]["truncated"] and start[1]["truncated"] and end[1]["embedding"] != start[1]["embedding"]


@pytest.mark.parametrize("field", ["dimensionz", "input_types", "extra_body"])
def test_embeddings_unknown_fields_are_a_422_naming_them(app, field: str) -> None:
    client, _ = app
    r = client.post("/v1/embeddings", json={"model": "fake-m3", "input": "x", field: 1})
    assert r.status_code == 422
    assert r.json()["error"]["param"] == field and field in r.json()["error"]["message"]


def test_embeddings_name_every_unknown_field(app) -> None:
    client, _ = app
    r = client.post("/v1/embeddings", json={"model": "fake-m3", "input": "x", "foo": 1, "bar": 2})
    assert r.status_code == 422 and r.json()["error"]["param"] == "foo"
    assert "foo" in r.json()["error"]["message"] and "bar" in r.json()["error"]["message"]


@pytest.mark.parametrize("tokens", [[1, 2, 3], [[1, 2], [3]]])
def test_embeddings_token_arrays_get_the_langchain_hint(app, tokens: list) -> None:
    client, _ = app
    r = client.post("/v1/embeddings", json={"model": "fake-m3", "input": tokens})
    assert r.status_code == 422
    assert TOKEN_ARRAYS_REFUSED in r.json()["error"]["message"]
    assert "check_embedding_ctx_length=False" in r.json()["error"]["message"]


def test_embeddings_openai_fields_still_work(app) -> None:
    client, _ = app
    body = {
        "model": "fake-m3",
        "input": ["a b", "c"],
        "encoding_format": "base64",
        "dimensions": 16,
        "user": "u",
    }
    data = client.post("/v1/embeddings", json=body).json()["data"]
    vector = np.frombuffer(base64.b64decode(data[0]["embedding"]), np.float32)
    assert vector.shape == (16,) and np.isclose(np.linalg.norm(vector), 1.0, atol=1e-5)
    r = client.post("/v1/embeddings", json={**body, "dimensions": 8})
    assert r.status_code == 422 and r.json()["error"]["param"] == "dimensions"


# ---------------------------------------------------------------------------------------- scopes


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/rerank"),
        ("POST", "/v2/rerank"),
        ("POST", "/rerank"),
        ("GET", "/v1/models"),
        ("GET", "/info"),
    ],
)
def test_client_interface_routes_need_the_search_scope(method: str, path: str) -> None:
    assert required_scope(method, path) == "search"


def test_search_keys_may_rerank_and_ingest_keys_may_not() -> None:
    search, ingest = new_key(), new_key()
    keys = [
        {"name": "reader", "sha256": hash_key(search), "scopes": ["search"]},
        {"name": "loader", "sha256": hash_key(ingest), "scopes": ["ingest"]},
    ]
    client, _ = _client(auth={"keys": keys})
    body = {"query": QUERY, "documents": DOCS}
    assert client.post("/v1/rerank", json=body).status_code == 401
    assert (
        client.post("/v1/rerank", json=body, headers={"Authorization": f"Bearer {ingest}"}).status_code == 403
    )
    assert (
        client.post("/v1/rerank", json=body, headers={"Authorization": f"Bearer {search}"}).status_code == 200
    )
    assert client.get("/v1/models", headers={"X-API-Key": search}).status_code == 200
