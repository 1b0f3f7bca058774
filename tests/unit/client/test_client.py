"""The client against an httpx MockTransport: the requests it sends, the answers it reads, its typed
errors and its retry policy, sync and async alike."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pydantic
import pytest

from serve_app.client import (
    ApiError,
    AsyncSpecragClient,
    ConnectionFailed,
    Document,
    Filters,
    Forbidden,
    InvalidRequest,
    NotFound,
    RateLimited,
    RequestTimeout,
    ServerError,
    ServiceUnavailable,
    SpecragClient,
    Unauthorized,
)

HIT = {
    "rank": 1,
    "chunk_id": "auth#0",
    "doc_id": "auth",
    "version": 3,
    "title": "認証",
    "title_path": ["認証", "トークン"],
    "text": "有効期限は1時間",
    "lang": "ja",
    "kind": "spec",
    "source": "specs/auth.md",
    "tags": ["security"],
    "score": 0.82,
    "score_stage": "rerank",
    "scores": {"rerank": 0.82, "rrf": 0.03},
    "updated_at": 17,
    "a_field_from_a_newer_server": True,
}
SEARCH = {"query": "q", "results": [HIT], "variants": [], "timings_ms": {"total": 3.0}, "model": "m3"}
DOCS_REPORT = {
    "documents": 1,
    "added": 1,
    "updated": 0,
    "unchanged": 0,
    "chunks_embedded": 2,
    "chunks_reused": 0,
    "chunks_written": 2,
    "chunks_deleted": 0,
    "failed": [],
    "seconds": 0.1,
}


class Server:
    """A MockTransport handler answering from a script; records every request it saw."""

    def __init__(self, *answers: httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]):
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer(request) if callable(answer) else answer

    def body(self, i: int = -1) -> Any:
        return json.loads(self.requests[i].content)


def _client(server: Server, **kw: Any) -> SpecragClient:
    return SpecragClient(
        "http://specrag.test", "sk-test", transport=httpx.MockTransport(server), backoff=0, **kw
    )


def _aclient(server: Server, **kw: Any) -> AsyncSpecragClient:
    transport = httpx.MockTransport(server)
    return AsyncSpecragClient("http://specrag.test", "sk-test", transport=transport, backoff=0, **kw)


def _error(status: int, error: str, detail: Any = None, **headers: str) -> httpx.Response:
    return httpx.Response(
        status, json={"error": error, "detail": detail, "request_id": "rid-1"}, headers=headers
    )


def test_search_sends_every_field_and_reads_the_results() -> None:
    server = Server(httpx.Response(200, json=SEARCH))
    with _client(server) as client:
        out = client.search(
            "q",
            top_k=3,
            filters={"kinds": ["spec"], "tags": ["security"]},
            channels=["dense"],
            rerank=False,
            expand=False,
            explain=True,
        )
    request = server.requests[0]
    assert (request.method, str(request.url)) == ("POST", "http://specrag.test/v1/search")
    assert request.headers["authorization"] == "Bearer sk-test"
    assert server.body() == {
        "query": "q",
        "top_k": 3,
        "filters": {"kinds": ["spec"], "tags": ["security"]},
        "channels": ["dense"],
        "rerank": False,
        "expand": False,
        "explain": True,
    }
    hit = out.results[0]
    assert (hit.chunk_id, hit.score, hit.score_stage, hit.title_path) == (
        "auth#0",
        0.82,
        "rerank",
        ["認証", "トークン"],
    )
    assert "text" not in hit.metadata() and hit.metadata()["doc_id"] == "auth"


def test_defaults_are_left_to_the_service_and_filters_are_checked_before_sending() -> None:
    server = Server(httpx.Response(200, json=SEARCH))
    client = _client(server)
    client.search("q", filters=Filters(langs=["ja"]))
    assert server.body() == {"query": "q", "expand": True, "explain": False, "filters": {"langs": ["ja"]}}
    with pytest.raises(pydantic.ValidationError, match="kind"):
        client.search("q", filters={"kind": ["spec"]})  # a typo of kinds
    assert len(server.requests) == 1


def test_url_and_key_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPECRAG_URL", "https://rag.example:8443/api/")
    monkeypatch.setenv("SPECRAG_API_KEY", "sk-env")
    server = Server(httpx.Response(200, json={"status": "ok"}))
    client = SpecragClient(transport=httpx.MockTransport(server))
    assert client.health() == {"status": "ok"}
    assert str(server.requests[0].url) == "https://rag.example:8443/api/healthz"
    assert server.requests[0].headers["authorization"] == "Bearer sk-env"
    monkeypatch.delenv("SPECRAG_API_KEY")
    SpecragClient(transport=httpx.MockTransport(server)).health()
    assert "authorization" not in server.requests[-1].headers
    with pytest.raises(ValueError, match="http"):
        SpecragClient("ftp://nope")


def test_embed_and_documents_calls() -> None:
    info = {"doc_id": "a/b c.md", "version": 2, "updated_at": 5, "chunks": 3, "tags": ["x"]}
    embedded = {"model": "m3", "data": [{"index": 0, "dense": [0.1, 0.2]}], "usage": {"total_tokens": 2}}
    server = Server(
        httpx.Response(200, json=embedded),
        httpx.Response(200, json=DOCS_REPORT),
        httpx.Response(200, json=info),
        httpx.Response(200, json={"deleted": 1, "chunks_deleted": 3}),
    )
    client = _client(server)
    out = client.embed(["x"], input_type="query", return_sparse=True)
    assert out.data[0].dense == [0.1, 0.2]
    assert server.body(0) == {
        "input": ["x"],
        "input_type": "query",
        "return_dense": True,
        "return_sparse": True,
        "return_colbert": False,
        "return_tokens": False,
    }
    report = client.upsert_documents(
        [Document(doc_id="a/b c.md", text="# T", kind="spec"), {"doc_id": "d", "text": "t"}]
    )
    assert report.added == 1 and server.body(1) == {
        "documents": [{"doc_id": "a/b c.md", "text": "# T", "kind": "spec"}, {"doc_id": "d", "text": "t"}]
    }
    assert client.get_document("a/b c.md").version == 2
    assert client.delete_document("a/b c.md").chunks_deleted == 3
    assert [(r.method, r.url.raw_path) for r in server.requests[2:]] == [
        ("GET", b"/v1/documents/a/b%20c.md"),
        ("DELETE", b"/v1/documents/a/b%20c.md"),
    ]
    with pytest.raises(pydantic.ValidationError, match="kind"):
        client.upsert_documents([{"doc_id": "x", "text": "t", "kind": "novel"}])


def test_source_sync_and_status_calls() -> None:
    queued = {"source": "handbook", "state": "queued", "requested": "abc", "commit": None}
    report = {
        "from_commit": "abc",
        "to_commit": "def",
        "mode": "increment",
        "files": {"added": 1, "modified": 2, "deleted": 0, "renamed": 1},
        "recorded": True,
        "ingest": DOCS_REPORT,
    }
    server = Server(
        httpx.Response(202, json=queued),
        httpx.Response(200, json={**queued, "state": "done", "commit": "def", "report": report}),
        httpx.Response(200, json={**queued, "state": "done", "commit": "def"}),
    )
    client = _client(server)
    assert client.sync_source("handbook", "abc").state == "queued"
    assert server.body(0) == {"commit": "abc", "full": False, "wait": False}
    done = client.sync_source("handbook", wait=True)
    assert done.report is not None and done.report.files.modified == 2 and done.report.recorded
    assert server.body(1) == {"full": False, "wait": True}, "no commit: the source's ref"
    assert client.source_status("handbook").commit == "def"
    assert [(r.method, r.url.raw_path) for r in server.requests] == [
        ("POST", b"/v1/sources/handbook/sync"),
        ("POST", b"/v1/sources/handbook/sync"),
        ("GET", b"/v1/sources/handbook"),
    ]
    with pytest.raises(ValueError, match="source name"):
        client.sync_source("../etc")


@pytest.mark.parametrize(
    ("response", "kind"),
    [
        (_error(401, "invalid API key"), Unauthorized),
        (_error(403, "key 'crm' lacks the 'ingest' scope"), Forbidden),
        (_error(404, "no document 'x'"), NotFound),
        (_error(422, "invalid request", [{"field": "top_k", "reason": "too big"}]), InvalidRequest),
        (_error(500, "boom"), ServerError),
    ],
)
def test_errors_are_typed_with_status_reason_and_detail(response: httpx.Response, kind: type) -> None:
    server = Server(response)
    with pytest.raises(kind) as caught:
        _client(server).get_document("x")
    error = caught.value
    assert (error.status, error.reason, error.detail) == (
        response.status_code,
        response.json()["error"],
        response.json()["detail"],
    )
    assert error.request_id == "rid-1" and len(server.requests) == 1  # never retried


def test_a_body_not_in_the_services_shape_is_kept() -> None:
    server = Server(httpx.Response(502, text="<html>bad gateway</html>"))
    with pytest.raises(ServerError) as caught:
        _client(server).health()
    assert caught.value.status == 502 and caught.value.detail == "<html>bad gateway</html>"


def test_a_success_that_is_not_json_is_an_api_error() -> None:
    server = Server(httpx.Response(200, text="<html>captive portal</html>"))
    with pytest.raises(ApiError, match="not JSON") as caught:
        _client(server).health()
    assert caught.value.detail == "<html>captive portal</html>"


def test_rate_limit_is_not_retried_and_says_when() -> None:
    server = Server(_error(429, "rate limit of 2/minute exceeded", **{"retry-after": "17"}))
    with pytest.raises(RateLimited) as caught:
        _client(server).search("q")
    assert caught.value.retry_after == 17 and len(server.requests) == 1


def test_reads_are_retried_on_503_and_connection_errors() -> None:
    request = httpx.Request("POST", "http://specrag.test/v1/search")
    server = Server(
        _error(503, "vector store unavailable"),
        httpx.ConnectError("refused", request=request),
        httpx.RemoteProtocolError("server disconnected", request=request),
        httpx.Response(200, json=SEARCH),
    )
    assert _client(server).search("q").results[0].doc_id == "auth"
    assert len(server.requests) == 4
    always = Server(_error(503, "embedder unavailable", "no replica"))
    with pytest.raises(ServiceUnavailable) as caught:
        _client(always, retries=2).search("q")
    assert len(always.requests) == 3 and caught.value.detail == "no replica"
    none = Server(_error(503, "embedder unavailable"))
    with pytest.raises(ServiceUnavailable):
        _client(none, retries=0).search("q")
    assert len(none.requests) == 1


def test_writes_are_resent_only_when_they_never_reached_the_server() -> None:
    request = httpx.Request("POST", "http://specrag.test/v1/documents")
    server = Server(httpx.ConnectError("refused", request=request), httpx.Response(200, json=DOCS_REPORT))
    assert _client(server).upsert_documents([{"doc_id": "d", "text": "t"}]).chunks_written == 2
    assert len(server.requests) == 2
    for answer in (httpx.ReadError("reset", request=request), _error(503, "indexer unavailable")):
        once = Server(answer)
        with pytest.raises((ConnectionFailed, ServiceUnavailable)):
            _client(once).upsert_documents([{"doc_id": "d", "text": "t"}])
        assert len(once.requests) == 1
    dropped = Server(httpx.ReadError("reset", request=request))
    with pytest.raises(ConnectionFailed) as caught:
        _client(dropped).delete_document("d")
    assert caught.value.sent and len(dropped.requests) == 1


def test_a_timeout_is_not_retried() -> None:
    request = httpx.Request("POST", "http://specrag.test/v1/search")
    server = Server(httpx.ReadTimeout("slow", request=request))
    with pytest.raises(RequestTimeout):
        _client(server).search("q")
    assert len(server.requests) == 1


def test_readiness_is_an_answer_for_503_too() -> None:
    body = {"status": "not_initialized", "checks": {"milvus": {"status": "not_initialized"}}, "ms": 2.0}
    server = Server(httpx.Response(503, json=body))
    ready = _client(server).ready()
    assert not ready.ready and ready.checks["milvus"]["status"] == "not_initialized"
    assert len(server.requests) == 1


def test_the_async_client_makes_the_same_calls() -> None:
    request = httpx.Request("POST", "http://specrag.test/v1/search")
    server = Server(
        _error(503, "embedder unavailable"),
        httpx.ConnectError("refused", request=request),
        httpx.Response(200, json=SEARCH),
        _error(404, "no document 'x'"),
        httpx.Response(200, json={"status": "healthy", "checks": {}, "ms": 1.0}),
    )

    async def run() -> None:
        async with _aclient(server) as client:
            out = await client.search("q", filters={"sources": ["specs/auth.md"]}, top_k=1)
            assert out.results[0].chunk_id == "auth#0"
            with pytest.raises(NotFound):
                await client.get_document("x")
            assert (await client.ready()).ready

    asyncio.run(run())
    assert len(server.requests) == 5
    assert json.loads(server.requests[2].content)["filters"] == {"sources": ["specs/auth.md"]}
    assert server.requests[2].headers["authorization"] == "Bearer sk-test"
