"""Error bodies: one line naming the cause (no traceback, paths, pids, IPs, actor ids, colours),
the request id in the body and the ``X-Request-ID`` header, the shape of each path, the
traceback in the log under that id, and the route prefix (auth and docs under ``root_path``)."""

from __future__ import annotations

import logging
import traceback
from typing import Any

import pytest
import ray.exceptions
from fastapi.testclient import TestClient

from serve_app.core.store import StoreUnavailable
from serve_app.http.app import create_app
from serve_app.http.errors import error_body, error_shape, one_line, route_path
from serve_app.http.security import hash_key, new_key
from serve_app.serving.handles import find_cause, root_cause
from serve_app.settings import Settings

# What a leaked internal looks like; none may appear in an error body.
MARKERS = ("Traceback", 'File "', "\x1b[", "pid=", "ip=", "actor_id", "ray::", ".py", "\n")
MILVUS_DOWN = "cannot connect to Milvus at 127.0.0.1:29530: failed to connect to all addresses"
KEY, ADMIN = new_key(), new_key()


def _store_down() -> None:
    raise StoreUnavailable(MILVUS_DOWN)


def ray_wrapped(exc: Exception) -> Exception:
    """``exc`` as a Serve handle raises it from a replica: ``RayTaskError(<kind>)``, whose text is
    the remote traceback with ANSI colours, the process title, pid, node IP and actor id."""
    try:
        raise exc
    except Exception as raised:
        error = ray.exceptions.RayTaskError(
            "search",
            traceback.format_exc(),
            raised,
            proctitle="ray::ServeReplica:specrag:Searcher.search",
            pid=4242,
            ip="10.0.0.3",
            actor_id="8c6e0f3b1a2d4e5f9a8b7c6d5e4f3a2b",
            actor_repr="<Searcher>",
        )
    return error.as_instanceof_cause()


def _clean(text: str) -> bool:
    return not any(m in text for m in MARKERS)


# ------------------------------------------------------------------------------------- sanitiser


def test_a_ray_wrapped_error_is_its_own_message_in_one_line() -> None:
    wrapped = ray_wrapped(StoreUnavailable(MILVUS_DOWN))
    assert isinstance(wrapped, StoreUnavailable) and not _clean(str(wrapped))  # what Ray gives
    assert one_line(wrapped) == MILVUS_DOWN
    assert one_line(str(wrapped)) == MILVUS_DOWN  # the text alone too
    assert find_cause(wrapped, StoreUnavailable) is root_cause(wrapped) is wrapped.cause  # type: ignore[attr-defined]
    assert str(find_cause(wrapped, StoreUnavailable)) == MILVUS_DOWN


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The actor died unexpectedly before finishing this task.\n\tclass_name: ServeReplica:x\n"
         "\tactor_id: 8c6e0f3b1a2d4e5f9a8b7c6d\n\tpid: 4242\n\tip: 10.0.0.3",
         "The actor died unexpectedly before finishing this task."),
        ("The actor 8c6e0f3b1a2d4e5f9a8b7c6d5e4f3a2b is unavailable: reset. (pid=12, ip=10.1.2.3)",
         "The actor is unavailable: reset."),
        ("\x1b[31mboom\x1b[0m in /work/main/serve_app/core/store.py", "boom in <path>"),
        ('Traceback (most recent call last):\n  File "/x/y.py", line 1, in <module>\n    f()\n'
         "ValueError: bad filter on tags", "bad filter on tags"),
        ("at http://127.0.0.1:19530/v1/x, 'fuzz/none'", "at http://127.0.0.1:19530/v1/x, 'fuzz/none'"),
    ],
)  # fmt: skip
def test_one_line_keeps_the_cause_and_drops_internals(text: str, expected: str) -> None:
    assert one_line(text) == expected


def test_one_line_bounds_and_empties() -> None:
    assert one_line(None) is None and one_line(" \n\t ") is None and one_line("\x1b[0m") is None
    long = one_line("x" * 1000)
    assert long is not None and len(long) == 300 and long.endswith("…")


def test_error_shapes_by_path_prefix() -> None:
    assert error_shape("/v1/search") == "default" and error_shape("/v1/embeddingsx") == "default"
    assert error_shape("/v1/embeddings") == "openai" and error_shape("/retrieval") == "dify"
    assert route_path({"path": "/specrag/v1/search", "root_path": "/specrag"}) == "/v1/search"
    assert route_path({"path": "/specragx/v1", "root_path": "/specrag"}) == "/specragx/v1"
    openai = error_body("openai", 503, "embedder unavailable", "no replica", request_id="r1")
    assert openai == {
        "error": {
            "message": "embedder unavailable: no replica",
            "type": "server_error",
            "param": None,
            "code": None,
        },
        "request_id": "r1",
    }
    dify = [error_body("dify", s, "m", request_id="r", code=c)["error_code"] for s, c in
            [(401, "missing_api_key"), (401, "invalid_authorization_header"), (401, "invalid_api_key"),
             (403, "insufficient_scope"), (404, "knowledge_not_found"), (404, None),
             (422, None)]]  # fmt: skip
    assert dify == [1001, 1001, 1002, 1002, 2001, 404, 422], "2001 only for an unknown knowledge_id"


def test_shapes_without_detail_keep_what_it_names() -> None:
    """OpenAI's and Dify's shapes have no ``detail``: a list or mapping joins the message as JSON."""
    dify = error_body("dify", 400, "cannot be expressed", ["kind", "source"], request_id="r")
    assert dify["error_msg"] == 'cannot be expressed: ["kind", "source"]'
    openai = error_body("openai", 413, "too long", {"indices": [2]}, request_id="r")
    assert openai["error"]["message"] == 'too long: {"indices": [2]}'
    assert error_body("dify", 422, "bad", None, request_id="r")["error_msg"] == "bad"


# ------------------------------------------------------------------------------- over the app


class _Pipeline:
    error: Exception | None = None

    async def search(self, query: Any) -> Any:
        raise self.error or AssertionError("no error set")


class _Backend:
    """Just what these routes call: the search pipeline fails as the test says; readiness reports
    a Ray-worded failure."""

    def __init__(self) -> None:
        self.pipeline = _Pipeline()

    async def model_info(self) -> dict[str, Any]:
        return {"model": "fake", "dim": 4}

    async def readiness(self, timeout_s: float) -> dict[str, dict[str, Any]]:
        down = {"status": "down", "detail": str(ray_wrapped(StoreUnavailable(MILVUS_DOWN)))}
        return {"model": {"status": "ok"}, "redis": {"status": "disabled"}, "milvus": down, "expander": {}}


@pytest.fixture
def app() -> tuple[TestClient, _Backend]:
    backend = _Backend()
    return TestClient(create_app(Settings(), backend), raise_server_exceptions=False), backend  # type: ignore[arg-type]


def test_a_store_outage_is_a_one_line_503_with_the_request_id_and_the_traceback_logged(
    app, caplog: pytest.LogCaptureFixture
) -> None:
    client, backend = app
    backend.pipeline.error = ray_wrapped(StoreUnavailable(MILVUS_DOWN))
    with caplog.at_level(logging.WARNING, logger="ray.serve.specrag.ingress"):
        r = client.post("/v1/search", json={"query": "q"}, headers={"X-Request-ID": "client-abc.1"})
    body = r.json()
    assert (r.status_code, body["error"], body["detail"]) == (503, "vector store unavailable", MILVUS_DOWN)
    assert body["request_id"] == r.headers["x-request-id"] == "client-abc.1"
    logged = [rec for rec in caplog.records if "client-abc.1" in rec.getMessage()]
    assert logged and logged[0].exc_info is not None  # the whole story, under the id


def test_readiness_details_are_one_line(app) -> None:
    client, _ = app
    milvus = client.get("/readyz").json()["checks"]["milvus"]
    assert milvus == {"status": "down", "detail": MILVUS_DOWN}


def test_an_unexpected_error_is_a_one_line_500_in_the_path_shape(app, caplog) -> None:
    client, backend = app
    backend.pipeline.error = ray_wrapped(KeyError("variants"))
    with caplog.at_level(logging.ERROR, logger="ray.serve.specrag.ingress"):
        r = client.post("/v1/search", json={"query": "q"})
    assert r.status_code == 500 and r.json()["error"] == "internal error"
    assert _clean(r.json()["detail"]) and r.json()["request_id"] == r.headers["x-request-id"]
    assert any(r.headers["x-request-id"] in rec.getMessage() and rec.exc_info for rec in caplog.records)


@pytest.mark.parametrize("sent", ["a b", "x" * 129, "ünïcode", "-starts-with-dash", 'quote"d', ""])
def test_an_insane_request_id_is_replaced(app, sent: str) -> None:
    client, _ = app
    r = client.get("/healthz", headers={"X-Request-ID": sent.encode()})
    assert r.status_code == 200 and r.headers["x-request-id"] != sent
    assert len(r.headers["x-request-id"]) == 32 and len(r.headers.get_list("x-request-id")) == 1


def test_every_refusal_carries_the_id_in_its_shape() -> None:
    keys = [
        {"name": "k", "sha256": hash_key(KEY), "scopes": ["search"]},
        {"name": "ops", "sha256": hash_key(ADMIN), "scopes": ["admin"]},
    ]
    settings = Settings(auth={"keys": keys}, limits={"max_body_bytes": 1024})
    client = TestClient(create_app(settings, _Backend()))  # type: ignore[arg-type]
    checks = [
        (client.post("/v1/search", json={"query": "q"}), 401, "default"),
        (client.post("/v1/embeddings", json={"input": "q", "model": "m"}), 401, "openai"),
        (client.post("/retrieval", json={}), 401, "dify"),
        (client.post("/v1/documents", json={}, headers={"X-API-Key": KEY}), 403, "default"),
        (client.post("/v1/embeddings", content=b"x" * 2048, headers={"X-API-Key": KEY}), 413, "openai"),
        (client.post("/v1/search", json={"query": ""}, headers={"X-API-Key": KEY}), 422, "default"),
        (client.get("/nowhere", headers={"X-API-Key": ADMIN}), 404, "default"),
        (client.get("/v1/embeddings/x", headers={"X-API-Key": ADMIN}), 404, "openai"),
    ]
    for response, status, shape in checks:
        body = response.json()
        assert response.status_code == status, (response.request.url, response.text)
        assert body["request_id"] == response.headers["x-request-id"], body
        key = {"default": "error", "openai": "error", "dify": "error_msg"}[shape]
        assert key in body and (shape != "openai" or "message" in body["error"]), body
    assert checks[0][0].headers["www-authenticate"].startswith("Bearer")


def test_behind_a_proxy_that_adds_the_header_the_app_adds_none() -> None:
    client = TestClient(create_app(Settings(), _Backend(), request_id_header=False))  # type: ignore[arg-type]
    r = client.get("/v1/nothing", headers={"X-Request-ID": "from-proxy"})
    assert "x-request-id" not in r.headers and r.json()["request_id"] == "from-proxy"


# ---------------------------------------------------------------------------------- route prefix


def test_under_a_route_prefix_auth_and_docs_match_the_relative_path() -> None:
    """Serve passes ``path=/specrag/v1/search`` with ``root_path=/specrag``."""
    settings = Settings(auth={"keys": [{"name": "k", "sha256": hash_key(KEY), "scopes": ["search"]}]})
    client = TestClient(create_app(settings, _Backend()), root_path="/specrag")  # type: ignore[arg-type]
    assert client.get("/specrag/healthz").status_code == 200
    ready = client.get("/specrag/readyz")
    assert (ready.status_code, ready.json()["status"]) == (503, "unhealthy")  # open: no 401
    assert client.post("/specrag/v1/search", json={"query": "q"}).status_code == 401
    keyed = client.post("/specrag/v1/search", json={"query": ""}, headers={"X-API-Key": KEY})
    assert keyed.status_code == 422  # past the key check, refused by validation
    docs = client.get("/specrag/docs")
    assert docs.status_code == 200 and "/specrag/openapi.json" in docs.text
    spec = client.get("/specrag/openapi.json")
    assert spec.status_code == 200 and spec.json()["servers"] == [{"url": "/specrag"}]
