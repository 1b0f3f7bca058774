"""API keys, scopes and rate limits: the guard itself and the ASGI middleware in a real FastAPI app."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from serve_app.http.security import AuthMiddleware, Guard, hash_key, new_key, required_scope
from serve_app.settings import AuthSettings

SEARCH_KEY, INGEST_KEY, ADMIN_KEY = new_key(), new_key(), new_key()


def _settings(rate: int = 1000) -> AuthSettings:
    return AuthSettings(
        keys=[
            {
                "name": "searcher",
                "sha256": hash_key(SEARCH_KEY),
                "scopes": ["search"],
                "rate_per_minute": rate,
            },
            {"name": "loader", "sha256": hash_key(INGEST_KEY), "scopes": ["ingest"]},
            {"name": "ops", "sha256": hash_key(ADMIN_KEY), "scopes": ["admin"]},
        ]
    )


@pytest.fixture
def client():
    app = FastAPI()

    @app.post("/v1/search")
    async def search() -> dict:
        return {"ok": True}

    @app.post("/v1/documents")
    async def documents() -> dict:
        return {"ok": True}

    @app.get("/readyz")
    async def ready() -> dict:
        return {"status": "healthy"}

    app.add_middleware(AuthMiddleware, guard=Guard(_settings(rate=3)))
    yield TestClient(app)


def test_scopes_by_route():
    assert required_scope("GET", "/healthz") is None and required_scope("GET", "/readyz") is None
    assert required_scope("GET", "/docs") is None and required_scope("GET", "/openapi.json") is None
    assert required_scope("POST", "/v1/search") == "search"
    assert required_scope("POST", "/v1/embeddings") == "search"
    assert required_scope("DELETE", "/v1/documents/a/b.md") == "ingest"
    assert required_scope("GET", "/v1/anything-else") == "admin"


def test_keys_are_stored_hashed_only():
    settings = _settings()
    dumped = settings.model_dump_json()
    assert SEARCH_KEY not in dumped and hash_key(SEARCH_KEY) in dumped


def test_missing_and_wrong_keys_get_401(client):
    missing = client.post("/v1/search")
    assert missing.status_code == 401 and "missing API key" in missing.json()["error"]
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = client.post("/v1/search", headers={"Authorization": "Bearer sk-specrag-nope"})
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid API key"


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer ", "Token abc", SEARCH_KEY])
def test_a_malformed_authorization_header_is_named_as_such(client, header: str) -> None:
    """Not "missing API key" when one was sent in the wrong form (Dify's 1001 case)."""
    r = client.post("/v1/search", headers={"Authorization": header})
    assert r.status_code == 401 and "invalid Authorization header format" in r.json()["error"]
    assert "Bearer <key>" in r.json()["error"]
    # The header's scheme is not what counts when the key comes as X-API-Key
    ok = client.post("/v1/search", headers={"Authorization": header, "X-API-Key": SEARCH_KEY})
    assert ok.status_code == 200


def test_scope_mismatch_gets_403_and_admin_may_do_anything(client):
    denied = client.post("/v1/documents", headers={"X-API-Key": SEARCH_KEY})
    assert denied.status_code == 403 and "'ingest'" in denied.json()["error"]
    assert client.post("/v1/documents", headers={"X-API-Key": INGEST_KEY}).status_code == 200
    assert client.post("/v1/search", headers={"X-API-Key": INGEST_KEY}).status_code == 403
    assert client.post("/v1/documents", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).status_code == 200


def test_health_is_open(client):
    assert client.get("/readyz").status_code == 200


def test_rate_limit_gives_429_with_retry_after(client):
    headers = {"Authorization": f"Bearer {SEARCH_KEY}"}
    assert [client.post("/v1/search", headers=headers).status_code for _ in range(3)] == [200] * 3
    limited = client.post("/v1/search", headers=headers)
    assert limited.status_code == 429 and "3/minute" in limited.json()["error"]
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    # another key has its own budget
    assert client.post("/v1/documents", headers={"X-API-Key": INGEST_KEY}).status_code == 200


def test_no_keys_means_open():
    guard = Guard(AuthSettings())
    assert not guard.enabled and guard.check("POST", "/v1/documents", {}).status == 200


def test_duplicate_key_names_are_refused():
    with pytest.raises(ValueError, match="unique"):
        AuthSettings(keys=[{"name": "a", "sha256": "0" * 64}, {"name": "a", "sha256": "1" * 64}])
