"""Access control on the real graph: two tenants, JWTs, key rotation, shared rate limits, probes.

Real Ray Serve with two Ingress replicas, a Milvus Lite server with a collection that does not
exist yet, redis-server (shared rate limits) and the offline model. The auth configuration is a
file (``auth.file``), as a mounted Kubernetes Secret would be, rewritten during the test.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from serve_app.devtools.local_stack import deploy_app, free_port, start_serve
from serve_app.http.security import hash_key, new_key
from serve_app.settings import Settings

pytestmark = pytest.mark.integration

KEYS = {"a": new_key(), "b": new_key(), "limited": new_key(), "ops": new_key()}
APP = "tenancy"
# Each team's documents: a glossary line the expander learns a term pair from, and a spec.
DOCS = {
    "a": [
        {
            "doc_id": "a/terms",
            "kind": "glossary",
            "source": "team-a/terms.md",
            "text": "# 用語\n\n冪等キー (idempotency key)\n",
        },
        {
            "doc_id": "a/orders",
            "kind": "spec",
            "source": "team-a/orders.md",
            "text": "# Orders\n\nAn idempotency key is kept for 24 hours. Team A order service.",
        },
    ],
    "b": [
        {
            "doc_id": "b/terms",
            "kind": "glossary",
            "source": "team-b/terms.md",
            "text": "# 用語\n\n在庫引当 (stock allocation)\n",
        },
        {
            "doc_id": "b/stock",
            "kind": "spec",
            "source": "team-b/stock.md",
            "text": "# Stock\n\nStock allocation is first in, first out. Team B inventory service.",
        },
    ],
}


def _auth(signing: dict[str, Any], jwks: Path, rotated: bool = False) -> dict[str, Any]:
    def team(name: str, key: str) -> dict[str, Any]:
        scope = {"sources": [f"team-{name}/"]}
        return {
            "name": f"team-{name}",
            "sha256": hash_key(key),
            "scopes": ["search", "ingest"],
            "read": scope,
            "write": scope,
        }

    a_key = KEYS["a-new"] if rotated else KEYS["a"]
    return {
        "keys": [
            team("a", a_key),
            team("b", KEYS["b"]),
            {"name": "limited", "sha256": hash_key(KEYS["limited"]), "rate_per_minute": 6},
            {"name": "ops", "sha256": hash_key(KEYS["ops"]), "scopes": ["admin"], "rate_per_minute": 10_000},
        ],
        "jwt": {"jwks_file": str(jwks), "audience": ["specrag"], "issuer": "https://idp.test"},
    }


@pytest.fixture(scope="module")
def signing() -> dict[str, Any]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(private.public_key()))
    jwk.update(kid="test", use="sig", alg="RS256")
    return {"private": private, "jwks": {"keys": [jwk]}}


@pytest.fixture(scope="module")
def stack(
    ray_local, model_dir: Path, milvus: dict, redis_url: str, tmp_path_factory, signing
) -> Iterator[dict]:
    from ray import serve

    home = tmp_path_factory.mktemp("tenancy")
    jwks, auth_file = home / "jwks.json", home / "auth.yaml"
    jwks.write_text(json.dumps(signing["jwks"]))
    auth_file.write_text(yaml.safe_dump(_auth(signing, jwks)))
    settings = Settings(
        model={"name_or_path": str(model_dir)},
        milvus={"uri": milvus["uri"], "collection": "tenancy_fresh", "timeout_s": 5.0},
        redis={"url": redis_url},
        serve={"port": free_port(), "ingress_replicas": 2, "app_name": APP},
        search={"rerank_candidates": 10},
        expander={"llm_url": None, "glossary_refresh_s": 2},
        auth={"file": auth_file, "reload_s": 0.5},
        dify={"profiles": {"kb": {}}},
    )
    url = start_serve("127.0.0.1", settings.serve.port)
    try:
        deploy_app(settings, APP)
        with httpx.Client(base_url=url, timeout=120) as client:
            yield {"client": client, "auth_file": auth_file, "jwks": jwks, "signing": signing}
    finally:
        serve.shutdown()


def _as(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def _replica_actors(deployment: str) -> set[str]:
    """Ids of the deployment's live replica actors (from the GCS: the tests run without the
    dashboard that ``ray.util.state`` needs)."""
    import ray._private.state

    name = f"ServeReplica:{APP}:{deployment}"
    return {
        actor_id
        for actor_id, info in ray._private.state.actors().items()
        if info.get("ActorClassName") == name and info.get("State") == "ALIVE"
    }


def test_a_fresh_deployment_is_ready_for_writes_and_the_first_write_creates_the_collection(stack) -> None:
    client = stack["client"]
    assert client.get("/livez").json() == {"status": "ok"}
    write, search = client.get("/readyz/write"), client.get("/readyz/search")
    assert (write.status_code, write.json()["status"]) == (200, "not_initialized"), write.text
    assert search.status_code == 503 and search.json()["checks"]["milvus"]["status"] == "not_initialized"
    for team in ("a", "b"):
        r = client.post("/v1/documents", json={"documents": DOCS[team]}, headers=_as(team))
        assert r.status_code == 200 and r.json()["added"] == 2, r.text
    assert client.get("/readyz/search").status_code == 200


def _search(client: httpx.Client, who: str, query: str, **extra: Any) -> dict[str, Any]:
    r = client.post("/v1/search", json={"query": query, "top_k": 10, **extra}, headers=_as(who))
    assert r.status_code == 200, r.text
    return r.json()


def test_a_tenant_never_reads_writes_or_deletes_another_tenants_documents(stack) -> None:
    client = stack["client"]
    # Positive control first: A's own glossary term expands A's query (the glossary has learned).
    deadline = time.monotonic() + 60
    while "idempotency key" not in json.dumps(_search(client, "a", "冪等キーの保持期間")["variants"]):
        assert time.monotonic() < deadline, "the glossary never learned team A's term"
        time.sleep(1)
    for query in ("在庫引当の順序", "Stock allocation first in first out inventory", "Team B"):
        body = _search(client, "a", query, explain=True)
        assert {r["source"] for r in body["results"]} <= {"team-a/terms.md", "team-a/orders.md"}, query
        rewrites = [v for v in body["variants"] if v["origin"] == "glossary"]
        assert "stock allocation" not in json.dumps(rewrites).lower(), "B's glossary term leaked"
        assert "在庫引当" not in json.dumps(rewrites), "B's glossary term leaked"
    own = _search(client, "b", "在庫引当の順序")
    assert {r["source"] for r in own["results"]} <= {"team-b/terms.md", "team-b/stock.md"}
    assert "stock allocation" in json.dumps(own["variants"]), "control: B itself gets its own term"
    # A's filters cannot widen its scope
    widened = _search(client, "a", "stock allocation", filters={"sources": ["team-b/stock.md"]})
    assert widened["results"] == []
    # documents: read, overwrite, move into, delete
    assert client.get("/v1/documents/b/stock", headers=_as("a")).status_code == 404
    assert client.get("/v1/documents/b/stock", headers=_as("b")).status_code == 200
    takeover = {**DOCS["a"][1], "doc_id": "b/stock"}
    r = client.post("/v1/documents", json={"documents": [takeover]}, headers=_as("a"))
    assert r.status_code == 403 and "exists outside" in r.json()["detail"], r.text
    r = client.post(
        "/v1/documents", json={"documents": [{**DOCS["a"][1], "source": "team-b/x.md"}]}, headers=_as("a")
    )
    assert r.status_code == 403 and "outside this caller's write scope" in r.json()["detail"]
    assert client.delete("/v1/documents/b/stock", headers=_as("a")).status_code == 403
    assert client.get("/v1/documents/b/stock", headers=_as("b")).json()["version"] == 1, "B's document intact"
    # Dify's route reads through the same scope
    dify = {
        "knowledge_id": "kb",
        "query": "stock allocation",
        "retrieval_setting": {"top_k": 5, "score_threshold": 0},
    }
    r = client.post("/retrieval", json=dify, headers=_as("a"))
    assert r.status_code == 200 and r.json()["records"], r.text
    assert "team-b" not in r.text and "Stock allocation is" not in r.text


def _token(stack: dict, **claims: Any) -> str:
    now = int(time.time())
    body = {"sub": "crm", "aud": "specrag", "iss": "https://idp.test", "iat": now, "exp": now + 300}
    return jwt.encode(
        {**body, **claims}, stack["signing"]["private"], algorithm="RS256", headers={"kid": "test"}
    )


def test_jwt_bearer_tokens_map_claims_to_scopes_and_data(stack) -> None:
    client = stack["client"]
    token = _token(stack, scope="search", specrag_read={"sources": ["team-b/"]})
    r = client.post(
        "/v1/search",
        json={"query": "Team A order service idempotency"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 200 and {x["source"] for x in r.json()["results"]} <= {
        "team-b/terms.md",
        "team-b/stock.md",
    }
    write = client.post(
        "/v1/documents", json={"documents": DOCS["b"][:1]}, headers={"Authorization": f"Bearer {token}"}
    )
    assert write.status_code == 403 and "lacks the 'ingest' scope" in write.json()["error"]
    for claims, reason in (
        ({"exp": int(time.time()) - 600}, "token expired"),
        ({"aud": "other-service"}, "audience not accepted"),
    ):
        bad = client.post(
            "/v1/search",
            json={"query": "x"},
            headers={"Authorization": f"Bearer {_token(stack, scope='search', **claims)}"},
        )
        assert bad.status_code == 401 and reason in bad.json()["error"], bad.text


def test_limits_hold_in_total_across_two_ingress_replicas(stack) -> None:
    client = stack["client"]
    assert len(_replica_actors("Ingress")) == 2
    statuses = [client.get("/v1/models", headers=_as("limited")).status_code for _ in range(18)]
    assert statuses.count(200) == 6 and statuses.count(429) == 12, statuses


def test_a_key_rotates_without_restarting_any_replica(stack) -> None:
    client = stack["client"]
    before = {
        d: _replica_actors(d)
        for d in ("Embedder", "Searcher", "Reranker", "QueryExpander", "Indexer", "Ingress")
    }
    KEYS["a-new"] = new_key()
    stack["auth_file"].write_text(yaml.safe_dump(_auth(stack["signing"], stack["jwks"], rotated=True)))
    deadline = time.monotonic() + 20
    # Both replicas must pick it up: repeat until the old key is refused several times in a row.
    refused = 0
    while refused < 6:
        assert time.monotonic() < deadline, "the rotated auth file was not applied"
        status = client.post("/v1/search", json={"query": "x"}, headers=_as("a")).status_code
        refused = refused + 1 if status == 401 else 0
        time.sleep(0.2)
    assert client.post("/v1/search", json={"query": "冪等キー"}, headers=_as("a-new")).status_code == 200
    after = {d: _replica_actors(d) for d in before}
    assert after == before and all(before.values()), "no replica restarted, the Embedder's included"
