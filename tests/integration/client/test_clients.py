"""The Python client, the LangChain and LlamaIndex retrievers and Dify's ``/retrieval`` against the
running service: real Ray Serve graph, Milvus Lite server, redis-server and the offline model.

One app for the whole module. The sample documents are written through the client itself
(``POST /v1/documents``); then each integration searches for a question whose answer is in
auth-spec, and again with a filter that leaves auth-spec out, which must change the answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import httpx
import pytest
from llama_index.core.schema import NodeWithScore

from serve_app.client import (
    AsyncSpecragClient,
    InvalidRequest,
    NotFound,
    SpecragClient,
    Unauthorized,
)
from serve_app.client.langchain import SpecragLangChainRetriever
from serve_app.client.llamaindex import SpecragLlamaIndexRetriever
from serve_app.core.ingest import iter_documents
from serve_app.devtools.local_stack import SAMPLE_DOCS, free_port
from serve_app.http.security import hash_key, new_key
from serve_app.settings import Settings

pytestmark = pytest.mark.integration

WRITER_KEY, READER_KEY = new_key(), new_key()
QUESTION = "リフレッシュトークンは何日まで使えますか？"
ANSWER = ("auth-spec", "発行から30日間有効")
NOT_AUTH_SPEC = {"kinds": ["faq", "glossary", "design", "api", "other"]}  # auth-spec is a spec


@pytest.fixture(scope="module")
def service(ray_local, model_dir: Path, milvus: dict, redis_url: str):
    """The graph with a writer and a reader key and two Dify profiles; the sample documents are
    written through the client."""
    from ray import serve

    from serve_app.app import build_app

    port = free_port()
    settings = Settings(
        model={"name_or_path": str(model_dir)},
        milvus={"uri": milvus["uri"], "collection": "clients", "timeout_s": 5.0},
        redis={"url": redis_url},
        serve={"port": port},
        auth={
            "keys": [
                {"name": "writer", "sha256": hash_key(WRITER_KEY), "scopes": ["search", "ingest"]},
                {"name": "dify", "sha256": hash_key(READER_KEY), "scopes": ["search"]},
            ]
        },
        dify={"profiles": {"specs": {"kinds": ["spec"], "max_top_k": 3}, "all": {}}},
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(settings), name="clients", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    docs = [
        {k: v for k, v in dataclasses.asdict(d).items() if k not in ("fmt", "sections", "error")}
        | {"format": d.fmt}
        for d in iter_documents(SAMPLE_DOCS)
    ]
    with SpecragClient(url, WRITER_KEY, timeout=300) as client:
        report = client.upsert_documents(docs)
        assert report.documents == len(docs) and not report.failed and report.chunks_written > 20
        yield {"url": url, "client": client, "docs": docs}
    serve.delete("clients")
    serve.shutdown()  # the next module starts Serve with its proxy on its own port


def _answer_rank(results: list[tuple[str, str]]) -> int | None:
    """1-based rank of the chunk holding the answer in (doc_id, text) pairs."""
    return next(
        (i for i, (doc, text) in enumerate(results, 1) if (doc, ANSWER[1] in text) == (ANSWER[0], True)), None
    )


# ------------------------------------------------------------------------------------------ client


def test_sync_client_search_filters_and_documents(service) -> None:
    client: SpecragClient = service["client"]
    assert client.health() == {"status": "ok"} and client.ready().ready
    found = client.search(QUESTION, top_k=5)
    assert _answer_rank([(r.doc_id, r.text) for r in found.results]) == 1
    first = found.results[0]
    assert first.title_path and first.kind == "spec" and 0 < first.score <= 1 and first.version == 1
    narrowed = client.search(QUESTION, top_k=5, filters=NOT_AUTH_SPEC)
    assert narrowed.results and all(r.doc_id != "auth-spec" for r in narrowed.results)
    assert {r.kind for r in narrowed.results} <= set(NOT_AUTH_SPEC["kinds"])
    info = client.get_document("auth-spec")
    assert (info.doc_id, info.version, info.kind) == ("auth-spec", 1, "spec") and info.chunks > 1
    vectors = client.embed(["有効期限", ""], input_type="query")
    assert len(vectors.data[0].dense or []) == 384 and vectors.data[1].error


def test_sync_client_writes_and_errors(service) -> None:
    client: SpecragClient = service["client"]
    note = {
        "doc_id": "notes/client test.md",
        "text": "# 一時メモ\n\nクライアントの書き込み確認。",
        "kind": "other",
    }
    assert client.upsert_documents([note]).added == 1
    assert client.get_document("notes/client test.md").chunks == 1
    assert client.delete_document("notes/client test.md").deleted == 1
    with pytest.raises(NotFound) as caught:
        client.get_document("notes/client test.md")
    assert caught.value.status == 404 and caught.value.request_id
    with pytest.raises(InvalidRequest) as invalid:
        client.search(QUESTION, top_k=0)
    assert invalid.value.detail[0]["field"] == "top_k"
    with SpecragClient(service["url"], "sk-wrong") as stranger, pytest.raises(Unauthorized):
        stranger.search(QUESTION)


def test_async_client_search_and_filters(service) -> None:
    async def run() -> tuple[list, list]:
        async with AsyncSpecragClient(service["url"], READER_KEY, timeout=120) as client:
            plain, narrowed = await asyncio.gather(
                client.search(QUESTION, top_k=5), client.search(QUESTION, top_k=5, filters=NOT_AUTH_SPEC)
            )
            return plain.results, narrowed.results

    plain, narrowed = asyncio.run(run())
    assert _answer_rank([(r.doc_id, r.text) for r in plain]) == 1
    assert narrowed and all(r.doc_id != "auth-spec" for r in narrowed)


# ---------------------------------------------------------------------------------- the retrievers


def test_langchain_retriever_sync_async_filters_and_metadata(service) -> None:
    retriever = SpecragLangChainRetriever(base_url=service["url"], api_key=READER_KEY, top_k=5)
    docs = retriever.invoke(QUESTION)
    assert _answer_rank([(d.metadata["doc_id"], d.page_content) for d in docs]) == 1
    meta = docs[0].metadata
    assert docs[0].id == meta["chunk_id"] and meta["source"] and meta["lang"] == "ja"
    assert {"title", "title_path", "kind", "tags", "score", "version", "rank"} <= set(meta)
    narrowed = asyncio.run(retriever.ainvoke(QUESTION, filters=NOT_AUTH_SPEC))
    assert narrowed and all(d.metadata["doc_id"] != "auth-spec" for d in narrowed)
    adocs = asyncio.run(retriever.ainvoke(QUESTION))
    assert [d.id for d in adocs] == [d.id for d in docs]


def test_llamaindex_retriever_sync_async_filters_and_metadata(service) -> None:
    retriever = SpecragLlamaIndexRetriever(service["url"], READER_KEY, top_k=5)
    nodes = retriever.retrieve(QUESTION)
    assert all(isinstance(n, NodeWithScore) for n in nodes)
    assert _answer_rank([(n.node.metadata["doc_id"], n.node.get_content()) for n in nodes]) == 1
    first = nodes[0]
    assert first.node.ref_doc_id == "auth-spec" and first.score == first.node.metadata["score"]
    narrowed = SpecragLlamaIndexRetriever(service["url"], READER_KEY, top_k=5, filters=NOT_AUTH_SPEC)
    others = asyncio.run(narrowed.aretrieve(QUESTION))
    assert others and all(n.node.metadata["doc_id"] != "auth-spec" for n in others)
    anodes = asyncio.run(retriever.aretrieve(QUESTION))
    assert [n.node.node_id for n in anodes] == [n.node.node_id for n in nodes]


# -------------------------------------------------------------------------------------------- Dify


def test_dify_retrieval_against_the_graph(service) -> None:
    auth = {"Authorization": f"Bearer {READER_KEY}"}
    body = {
        "knowledge_id": "specs",
        "query": QUESTION,
        "retrieval_setting": {"top_k": 5, "score_threshold": 0.0},
    }
    with httpx.Client(base_url=service["url"], timeout=120) as http:
        r = http.post("/retrieval", json=body, headers=auth)
        assert r.status_code == 200, r.text
        records = r.json()["records"]
        assert 0 < len(records) <= 3  # the profile caps top_k at 3
        assert {rec["metadata"]["kind"] for rec in records} == {"spec"}
        assert _answer_rank([(rec["metadata"]["doc_id"], rec["content"]) for rec in records]) == 1
        assert records[0]["title"] == "認証・認可仕様" and 0 < records[0]["score"] <= 1
        faq = {"name": "kind", "comparison_operator": "is", "value": "faq"}
        r = http.post(
            "/retrieval",
            json={**body, "knowledge_id": "all", "metadata_condition": {"conditions": [faq]}},
            headers=auth,
        )
        assert r.status_code == 200 and {rec["metadata"]["doc_id"] for rec in r.json()["records"]} == {"faq"}
        r = http.post("/retrieval", json={**body, "knowledge_id": "nope"}, headers=auth)
        assert (r.status_code, r.json()["error_code"]) == (404, 2001)
        r = http.post("/retrieval", json=body, headers={"Authorization": "Token x"})
        assert (r.status_code, r.json()["error_code"]) == (401, 1001)
