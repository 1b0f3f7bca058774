"""The whole graph under a route prefix (``serve.route_prefix: /specrag``): real Ray Serve, Milvus
Lite server, redis-server and the offline model. Auth and the API docs follow the prefix (Serve
passes it as the ASGI ``root_path``), paths outside it are Serve's 404, and every answer carries
one ``X-Request-ID`` (Serve's proxy adds it; error bodies repeat it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serve_app.devtools.local_stack import deploy_app, free_port, start_serve
from serve_app.http.security import hash_key, new_key
from serve_app.settings import Settings

pytestmark = pytest.mark.integration

KEY = new_key()
PREFIX = "/specrag"
DOC = {
    "doc_id": "prefix/token",
    "text": "# アクセストークン\n\nアクセストークンの有効期限は 3600 秒です。\n\n"
    "The access token expires after 3600 s.",
}


@pytest.fixture(scope="module")
def base(ray_local, model_dir: Path, milvus: dict, redis_url: str) -> Iterator[str]:
    """The app under ``/specrag`` with one admin key, one document ingested through the prefix."""
    from ray import serve

    settings = Settings(
        model={"name_or_path": str(model_dir)},
        milvus={"uri": milvus["uri"], "collection": "prefixed", "timeout_s": 3.0},
        redis={"url": redis_url},
        serve={"port": free_port(), "route_prefix": PREFIX},
        search={"rerank_candidates": 10},
        expander={"llm_url": None, "glossary_refresh_s": 3600},
        auth={"keys": [{"name": "ops", "sha256": hash_key(KEY), "scopes": ["admin"]}]},
    )
    url = start_serve("127.0.0.1", settings.serve.port)
    try:
        deploy_app(settings, "prefixed", route_prefix=settings.serve.route_prefix)
        with httpx.Client(base_url=url, timeout=120, headers={"X-API-Key": KEY}) as client:
            written = client.post(f"{PREFIX}/v1/documents", json={"documents": [DOC]})
            assert written.status_code == 200 and written.json()["added"] == 1, written.text
        yield url
    finally:
        # The next module starts Serve's proxy on its own port: this one must go.
        serve.shutdown()


def _one_request_id(response: httpx.Response) -> str:
    ids = response.headers.get_list("x-request-id")
    assert len(ids) == 1 and ids[0], (response.url, response.headers)
    return ids[0]


def test_health_is_open_under_the_prefix(base: str) -> None:
    with httpx.Client(base_url=base + PREFIX, timeout=60) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] in ("healthy", "degraded"), ready.text
        _one_request_id(ready)


def test_search_needs_the_key_under_the_prefix(base: str) -> None:
    with httpx.Client(base_url=base + PREFIX, timeout=120) as client:
        body = {"query": "アクセストークンの有効期限は？", "top_k": 3}
        refused = client.post("/v1/search", json=body, headers={"X-Request-ID": "prefix-test-1"})
        assert refused.status_code == 401, refused.text
        assert refused.json()["request_id"] == _one_request_id(refused) == "prefix-test-1"
        found = client.post("/v1/search", json=body, headers={"Authorization": f"Bearer {KEY}"})
        assert found.status_code == 200, found.text
        assert found.json()["results"][0]["doc_id"] == DOC["doc_id"]
        _one_request_id(found)


def test_docs_and_the_document_load_under_the_prefix(base: str) -> None:
    with httpx.Client(base_url=base + PREFIX, timeout=60) as client:
        spec = client.get("/openapi.json")
        assert spec.status_code == 200 and spec.json()["servers"] == [{"url": PREFIX}]
        assert spec.json()["paths"]["/v1/search"]["post"]["security"]
        docs = client.get("/docs")
        assert docs.status_code == 200 and f"{PREFIX}/openapi.json" in docs.text


def test_paths_outside_the_prefix_are_not_found(base: str) -> None:
    with httpx.Client(base_url=base, timeout=60, headers={"X-API-Key": KEY}) as client:
        for path in ("/healthz", "/openapi.json", "/docs"):
            assert client.get(path).status_code == 404, path
        assert client.post("/v1/search", json={"query": "q"}).status_code == 404
