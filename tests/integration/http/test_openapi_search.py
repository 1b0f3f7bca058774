"""OpenAPI specs through the real graph: a Japanese question finds the English operation.

The two fixture specs (an OpenAPI 3 orders API in YAML, a Swagger 2.0 users API in JSON) are read
by ``iter_documents`` (the converter cuts one chunk per operation), embedded by the running
Embedder and asked through ``POST /v1/search``. Real Ray Serve, Milvus Lite server, redis-server
and the offline model; only the specs are ingested, so every competitor is a sibling operation.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from serve_app.core.ingest import Ingestor, iter_documents
from serve_app.devtools.local_stack import free_port
from serve_app.settings import Settings

pytestmark = pytest.mark.integration

SPECS = Path(__file__).parents[2] / "fixtures" / "openapi"


@pytest.fixture(scope="module")
def service(ray_local, model_dir: Path, milvus: dict, redis_url: str):
    from ray import serve

    from serve_app.app import build_app
    from serve_app.core.store import make_store

    port = free_port()
    settings = Settings(
        model={"name_or_path": str(model_dir)},
        milvus={"uri": milvus["uri"], "collection": "openapi", "timeout_s": 3.0},
        redis={"url": redis_url},
        serve={"port": port},
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(settings), name="openapi", route_prefix="/")
    embedder = serve.get_deployment_handle("Embedder", app_name="openapi")

    def embed(texts: list[str]):
        out = embedder.embed.remote(texts, "passage").result()
        return np.stack([o["dense"] for o in out]), [o["sparse"] for o in out]

    info = embedder.info.remote().result()
    store = make_store(settings, info["dim"])
    documents = list(iter_documents(SPECS))
    assert sorted(d.doc_id for d in documents) == ["orders.yaml", "users.swagger.json"]
    assert all(d.error is None and d.kind == "api" for d in documents), [d.error for d in documents]
    report = Ingestor(embed, store, settings.chunk, model_key=info["model_key"]).ingest(iter(documents))
    assert report.chunks_written == 4 + 6 + 2  # one per operation, one overview per spec
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
        yield client
    serve.delete("openapi")
    serve.shutdown()  # the next module starts Serve with its proxy on its own port


def _top(client: httpx.Client, query: str) -> dict:
    response = client.post("/v1/search", json={"query": query, "top_k": 5})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert results, "no results"
    return results[0]


def test_japanese_question_finds_the_cancel_operation(service: httpx.Client) -> None:
    top = _top(service, "注文をキャンセルするエンドポイントは？")
    assert top["title_path"][-1] == "POST /orders/{orderId}/cancel", top["title_path"]
    assert top["title_path"][:2] == ["Orders API", "orders"]
    assert top["doc_id"] == "orders.yaml" and top["kind"] == "api"
    assert "operation:cancelOrder" in top["tags"]
    assert top["text"].startswith("POST /orders/{orderId}/cancel\nCancel an order")


def test_japanese_question_finds_the_swagger_operation(service: httpx.Client) -> None:
    top = _top(service, "ユーザーのパスワードをリセットするAPIは？")
    assert top["title_path"][-1] == "POST /users/{userId}/password-reset", top["title_path"]
    assert top["doc_id"] == "users.swagger.json"
    assert "operation:resetPassword" in top["tags"]
