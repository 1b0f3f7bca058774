"""The LangChain and LlamaIndex retrievers over a MockTransport: the search each sends, the
documents/nodes it maps the results to, sync and async; and that the client stays light."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import httpx
import pytest
from llama_index.core.schema import NodeRelationship, NodeWithScore, TextNode

from serve_app.client import AsyncSpecragClient, SpecragClient
from serve_app.client.langchain import SpecragLangChainRetriever
from serve_app.client.llamaindex import SpecragLlamaIndexRetriever
from tests.unit.client.test_client import SEARCH


@pytest.fixture
def seen() -> list[dict]:
    return []


@pytest.fixture
def clients(seen: list[dict]) -> tuple[SpecragClient, AsyncSpecragClient]:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, json=SEARCH)

    transport = httpx.MockTransport(handler)
    return (
        SpecragClient("http://t", transport=transport),
        AsyncSpecragClient("http://t", transport=transport),
    )


def test_langchain_maps_results_to_documents_and_passes_options(clients, seen) -> None:
    sync, aio = clients
    retriever = SpecragLangChainRetriever(
        client=sync, async_client=aio, top_k=4, filters={"kinds": ["spec"]}, rerank=True
    )
    docs = retriever.invoke("有効期限")
    assert seen[-1] == {
        "query": "有効期限",
        "top_k": 4,
        "filters": {"kinds": ["spec"]},
        "rerank": True,
        "expand": True,
        "explain": False,
    }
    (doc,) = docs
    assert doc.page_content == "有効期限は1時間" and doc.id == "auth#0"
    assert doc.metadata["doc_id"] == "auth" and doc.metadata["title_path"] == ["認証", "トークン"]
    assert {"chunk_id", "title", "source", "kind", "tags", "lang", "score", "version", "rank"} <= set(
        doc.metadata
    )
    asyncio.run(retriever.ainvoke("q", filters={"langs": ["en"]}, top_k=2))
    assert seen[-1]["filters"] == {"langs": ["en"]} and seen[-1]["top_k"] == 2  # one call's overrides
    with pytest.raises(TypeError, match="filter"):
        retriever.invoke("q", filter={"kinds": ["spec"]})  # not an option: refused, not ignored


def test_llamaindex_maps_results_to_scored_nodes(clients, seen) -> None:
    sync, aio = clients
    retriever = SpecragLlamaIndexRetriever(client=sync, async_client=aio, filters={"tags": ["security"]})
    (hit,) = retriever.retrieve("有効期限")
    assert isinstance(hit, NodeWithScore) and isinstance(hit.node, TextNode)
    assert (hit.node.node_id, hit.node.text, hit.score) == ("auth#0", "有効期限は1時間", 0.82)
    assert hit.node.ref_doc_id == "auth" and hit.node.relationships[NodeRelationship.SOURCE].node_id == "auth"
    assert hit.node.metadata["source"] == "specs/auth.md" and hit.node.metadata["version"] == 3
    assert "score" not in hit.node.get_metadata_str(mode="llm")  # ids and scores stay out of the prompt
    assert seen[-1]["filters"] == {"tags": ["security"]}
    (ahit,) = asyncio.run(retriever.aretrieve("q"))
    assert ahit.node.node_id == "auth#0" and seen[-1]["query"] == "q"
    with pytest.raises(ValueError, match="top_k"):
        SpecragLlamaIndexRetriever(client=sync, top_k=0)


def test_the_client_imports_no_service_stack() -> None:
    code = (
        "import sys, serve_app.client, serve_app.client.langchain, serve_app.client.llamaindex\n"
        "heavy = {'ray', 'fastapi', 'starlette', 'torch', 'transformers', 'pymilvus', 'FlagEmbedding'}\n"
        "loaded = {m.split('.')[0] for m in sys.modules} & heavy\n"
        "internal = {m for m in sys.modules if m.startswith('serve_app.')} - {m for m in sys.modules\n"
        "    if m.startswith('serve_app.client')}\n"
        "assert not loaded and not internal, (loaded, internal)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
