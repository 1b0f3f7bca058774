"""API keys, JWTs, scopes, data scopes, rotation and rate limits: the guard itself and the ASGI
middleware in a real FastAPI app (tokens signed by a test RSA key, verified against its JWKS)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from jwt.algorithms import RSAAlgorithm

from serve_app.devtools.local_stack import free_port
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


# ------------------------------------------------------------------------------- data scopes, JWT


def test_a_key_carries_its_data_scopes_to_the_request() -> None:
    key = new_key()
    settings = AuthSettings(
        keys=[
            {
                "name": "team-a",
                "sha256": hash_key(key),
                "scopes": ["search", "ingest"],
                "read": {"sources": ["team-a/", "shared/"]},
                "write": {"sources": ["team-a/"], "kinds": ["spec"]},
            }
        ]
    )
    decision = Guard(settings).check("POST", "/v1/search", {b"x-api-key": key.encode()})
    who = decision.principal
    assert decision.status == 200 and who.name == "team-a" and who.kind == "key"
    assert who.read is not None and who.read.sources == ("team-a/", "shared/")
    assert who.write is not None and who.write.allows("team-a/x.md", "spec", [])
    assert not who.write.allows("team-a/x.md", "api", []) and not who.write.allows("team-b/x.md", "spec", [])


@pytest.fixture(scope="module")
def signing() -> dict[str, Any]:
    """An RSA key pair as an identity provider would have it, its JWKS, and a second key."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(private.public_key()))
    jwk.update(kid="k1", use="sig", alg="RS256")
    return {"private": private, "other": other, "jwks": {"keys": [jwk]}}


def _jwt_guard(tmp_path: Path, signing: dict[str, Any], **jwt_settings: Any) -> Guard:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(signing["jwks"]))
    settings = {"jwks_file": path, "audience": ["specrag"], "issuer": "https://idp.example", **jwt_settings}
    return Guard(AuthSettings(jwt=settings))


def _token(signing: dict[str, Any], key: str = "private", kid: str | None = "k1", **claims: Any) -> str:
    now = int(time.time())
    body = {"sub": "svc-a", "aud": "specrag", "iss": "https://idp.example", "iat": now, "exp": now + 300}
    body.update(claims)
    headers = {"kid": kid} if kid else {}
    return jwt.encode(body, signing[key], algorithm="RS256", headers=headers)


def _bearer(token: str) -> dict[bytes, bytes]:
    return {b"authorization": f"Bearer {token}".encode()}


def test_a_jwt_maps_its_claims_to_scopes_and_data_scopes(tmp_path: Path, signing) -> None:
    guard = _jwt_guard(tmp_path, signing, scope_prefix="specrag:")
    token = _token(
        signing,
        scope="openid specrag:search specrag:ingest other:admin",
        specrag_read={"sources": ["team-a/"], "tags": ["public"]},
        specrag_write={"sources": ["team-a/"]},
    )
    decision = guard.check("POST", "/v1/documents", _bearer(token))
    who = decision.principal
    assert decision.status == 200 and (who.name, who.kind) == ("jwt:svc-a", "jwt")
    assert who.scopes == {"search", "ingest"}, "only prefixed scopes count; other:admin is not ours"
    assert who.read is not None and who.read.tags == ("public",)
    denied = guard.check("GET", "/v1/admin-thing", _bearer(token))
    assert denied.status == 403 and "token 'jwt:svc-a' lacks the 'admin' scope" in denied.error


@pytest.mark.parametrize(
    ("claims", "key", "reason"),
    [
        ({"exp": int(time.time()) - 3600}, "private", "token expired"),
        ({"aud": "another-service"}, "private", "audience not accepted"),
        ({"iss": "https://evil.example"}, "private", "issuer not accepted"),
        ({}, "other", "signature invalid"),
        ({"nbf": int(time.time()) + 3600}, "private", "not valid yet"),
        ({"specrag_read": {"sources": []}}, "private", "'specrag_read' claim is not a data scope"),
    ],
)
def test_bad_tokens_get_401_with_their_reason(tmp_path: Path, signing, claims, key, reason) -> None:
    decision = _jwt_guard(tmp_path, signing).check(
        "POST", "/v1/search", _bearer(_token(signing, key, **claims))
    )
    assert (decision.status, decision.code) == (401, "invalid_token") and reason in decision.error


def test_a_token_without_exp_or_from_an_unknown_key_is_refused(tmp_path: Path, signing) -> None:
    guard = _jwt_guard(tmp_path, signing)
    now = int(time.time())
    no_exp = jwt.encode(
        {"sub": "x", "aud": "specrag", "iss": "https://idp.example", "iat": now},
        signing["private"],
        algorithm="RS256",
        headers={"kid": "k1"},
    )
    assert "lacks the 'exp' claim" in guard.check("POST", "/v1/search", _bearer(no_exp)).error
    unknown = _token(signing, kid="k9")
    assert "not in the JWKS" in guard.check("POST", "/v1/search", _bearer(unknown)).error
    # a symmetric (HS256) token signed with the public key as secret: the classic confusion attack
    assert guard.check("POST", "/v1/search", _bearer("eyJ" + "x" * 20 + ".e30.sig")).status == 401


def test_symmetric_algorithms_cannot_be_configured(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="only asymmetric"):
        AuthSettings(jwt={"jwks_file": tmp_path / "j.json", "audience": ["a"], "algorithms": ["HS256"]})


# ------------------------------------------------------------------------ rotation, shared limits


def test_the_auth_file_rotates_keys_without_a_restart(tmp_path: Path) -> None:
    old, new = new_key(), new_key()
    path = tmp_path / "auth.yaml"
    path.write_text(yaml.safe_dump({"keys": [{"name": "svc", "sha256": hash_key(old)}]}))
    guard = Guard(AuthSettings(file=path, reload_s=0.01))
    assert guard.check("POST", "/v1/search", {b"x-api-key": old.encode()}).status == 200
    path.write_text(
        yaml.safe_dump({"keys": [{"name": "svc", "sha256": hash_key(new)}], "rate_per_minute": 5})
    )
    time.sleep(0.02)
    assert guard.check("POST", "/v1/search", {b"x-api-key": old.encode()}).status == 401, "revoked"
    assert guard.check("POST", "/v1/search", {b"x-api-key": new.encode()}).status == 200
    assert guard.config.settings.rate_per_minute == 5
    # an invalid file keeps the configuration in force and says why
    path.write_text(yaml.safe_dump({"keys": [{"name": "svc", "sha256": "not-a-digest"}]}))
    time.sleep(0.02)
    assert guard.check("POST", "/v1/search", {b"x-api-key": new.encode()}).status == 200
    assert guard.reload_error and "sha256" in guard.reload_error


def test_limits_fall_back_to_the_replica_when_redis_is_down() -> None:
    """Fail open: a dead Redis must not lock clients out; the response says it was counted here."""
    key = new_key()
    settings = AuthSettings(keys=[{"name": "svc", "sha256": hash_key(key), "rate_per_minute": 2}])
    guard = Guard(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    decisions = [guard.check("POST", "/v1/search", {b"x-api-key": key.encode()}) for _ in range(3)]
    assert [d.status for d in decisions] == [200, 200, 429], "the limit still holds per replica"
    assert not any(d.shared_limit for d in decisions) and guard.limiter.fallbacks == 3

    app = FastAPI()

    @app.post("/v1/search")
    async def search() -> dict:
        return {"ok": True}

    app.add_middleware(AuthMiddleware, guard=Guard(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    r = TestClient(app).post("/v1/search", headers={"X-API-Key": key})
    assert r.status_code == 200 and r.headers["x-ratelimit-scope"] == "replica"


def test_a_missing_auth_file_fails_closed(tmp_path: Path) -> None:
    guard = Guard(AuthSettings(file=tmp_path / "absent.yaml"))
    assert guard.enabled and guard.reload_error and "absent.yaml" in guard.reload_error
    assert guard.check("POST", "/v1/search", {}).status == 401, "never an open API"
    assert guard.check("GET", "/livez", {}).status == 200


def test_a_token_whose_algorithm_does_not_fit_its_key_is_a_401_not_a_500(tmp_path: Path, signing) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    guard = _jwt_guard(tmp_path, signing, algorithms=["RS256", "ES256"])
    now = int(time.time())
    claims = {"sub": "x", "aud": "specrag", "iss": "https://idp.example", "exp": now + 300}
    token = jwt.encode(
        claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256", headers={"kid": "k1"}
    )
    decision = guard.check("POST", "/v1/search", _bearer(token))
    assert decision.status == 401 and decision.code == "invalid_token"


def test_a_broken_jwks_in_the_auth_file_keeps_the_configuration_and_spares_the_probes(tmp_path: Path) -> None:
    jwks, path = tmp_path / "jwks.json", tmp_path / "auth.yaml"
    jwks.write_text(json.dumps({"keys": [{"kty": "nonsense"}]}))
    path.write_text(yaml.safe_dump({"jwt": {"jwks_file": str(jwks), "audience": ["specrag"]}}))
    guard = Guard(AuthSettings(file=path, reload_s=0.01))
    assert guard.reload_error and "auth.yaml" in guard.reload_error, "reported, not raised"
    assert guard.serves_no_one and guard.check("POST", "/v1/search", {}).status == 401
    assert guard.check("GET", "/livez", {}).status == 200


def test_an_api_that_can_admit_no_one_is_not_ready() -> None:
    from serve_app.http.routes.health import overall

    ok = {"model": {"status": "ok"}, "milvus": {"status": "ok"}, "redis": {"status": "ok"}}
    ok["expander"] = {"status": "ok"}
    assert overall({**ok, "auth": {"status": "stale"}}) == "degraded"
    assert overall({**ok, "auth": {"status": "down"}}) == "unhealthy"
