"""One search pipeline: ``POST /v1/search`` and the evaluation path rank identically.

A collection of over 1,000 chunks (sentences of the bundled documents recombined with a fixed
seed, so depth and fusion matter) is ingested once; then every query goes through the running
Serve graph over HTTP with no options, and through ``specrag eval``'s path (the same
``SearchPipeline`` with in-process adapters, configuration ``full``). The rankings and scores
must be the same, query by query.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

import httpx
import pytest

from serve_app.core.chunking import split_sentences
from serve_app.core.embedding import EmbeddingService
from serve_app.core.evaluation import CONFIGS, Query, config_pipeline, config_query
from serve_app.core.ingest import Ingestor, SourceDocument, iter_documents
from serve_app.core.local import local_expansion, local_retriever
from serve_app.core.pipeline import LocalEmbedder
from serve_app.core.store import make_store
from serve_app.devtools.local_stack import SAMPLE_DOCS, free_port
from serve_app.settings import Settings

pytestmark = pytest.mark.integration

QUERIES = [q["query"] for q in json.loads((Path(__file__).parents[1] / "sample_queries.json").read_text())]
CHUNKS = 1000


def _corpus() -> list[SourceDocument]:
    """One chunk per document: two or three sentences of the sample documents, shuffled (seed 0)."""
    sentences = [
        s
        for doc in iter_documents(SAMPLE_DOCS)
        for s in split_sentences(doc.text)
        if 20 <= len(s) <= 200 and not s.lstrip().startswith(("#", "|", "```"))
    ]
    rng = random.Random(0)
    docs = []
    for i in range(CHUNKS + 50):
        text = " ".join(rng.sample(sentences, rng.choice((2, 3))))
        docs.append(SourceDocument(doc_id=f"mix-{i:04d}", text=text, fmt="text", title=f"mix {i}"))
    return docs


@pytest.fixture(scope="module")
def stack(ray_local, model_dir: Path, milvus: dict):
    from ray import serve

    from serve_app.app import build_app

    port = free_port()
    settings = Settings(
        model={"name_or_path": str(model_dir)},
        milvus={"uri": milvus["uri"], "collection": "parity", "timeout_s": 10.0},
        serve={"port": port, "app_name": "parity"},
        expander={"llm_url": None},
    )
    service = EmbeddingService.from_settings(settings)
    store = make_store(settings, service.dim)
    ingestor = Ingestor(service.embed_texts, store, settings.chunk, model_key=service.encoder.model_key)
    report = ingestor.ingest(_corpus())
    assert report.chunks_written >= CHUNKS, report.as_dict()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(settings), name="parity", route_prefix="/")
    searcher = serve.get_deployment_handle("Searcher", app_name="parity")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
        client.post("/v1/search", json={"query": "warm-up"}).raise_for_status()  # starts IDF and glossary
        deadline = time.monotonic() + 120
        while searcher.idf_status.remote().result()["chunks"] < CHUNKS:
            assert time.monotonic() < deadline, "the Searcher never built its IDF table"
            time.sleep(0.5)
        yield {"client": client, "settings": settings, "service": service, "store": store}
    serve.delete("parity")
    # The next module starts Serve with its proxy on its own port: this instance must go.
    serve.shutdown()


def test_http_search_and_the_evaluation_path_rank_identically(stack) -> None:
    settings: Settings = stack["settings"]
    store = stack["store"]
    retriever = local_retriever(settings, store)
    assert retriever.idf is not None, "the offline model searches with IDF, as the Searcher does"
    pipeline = config_pipeline(
        "full", retriever, LocalEmbedder(stack["service"]), local_expansion(settings, store)
    )
    compared = 0
    for text in QUERIES:
        served = stack["client"].post("/v1/search", json={"query": text})
        assert served.status_code == 200, served.text
        body = served.json()
        assert body["degraded"] == []
        local = asyncio.run(pipeline.search(config_query(Query("q", text, "?", "?"), CONFIGS["full"])))
        assert [r["chunk_id"] for r in body["results"]] == [r.candidate.chunk_id for r in local.results], text
        # Equal up to float32 noise: a text's vectors move in the 6th decimal with the padding of
        # the batch it shares (the query and its lexicon rendering embed together, and in Serve
        # with whatever else is in flight); the ranks above are compared exactly.
        assert [r["score"] for r in body["results"]] == pytest.approx(
            [r.score for r in local.results], abs=1e-5
        )
        assert [v["text"] for v in body["variants"]] == [v["text"] for v in local.variants]
        assert len(local.results) == len(body["results"]) == settings.search.top_k
        compared += 1
    assert compared == len(QUERIES) >= 20
