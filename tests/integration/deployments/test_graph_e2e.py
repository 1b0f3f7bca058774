"""The whole graph end to end: real Ray Serve, Milvus Lite server, redis-server and the offline model.

The sample documents the package ships are ingested through the running Embedder (as
``specrag up`` does); then HTTP queries in Japanese, English and Japanese-to-English must rank
the chunk holding the answer first.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from serve_app.core.ingest import Ingestor, iter_documents
from serve_app.devtools.local_stack import SAMPLE_DOCS, free_port
from serve_app.http.security import hash_key, new_key
from serve_app.settings import Settings
from serve_app.testing.fakellm import FakeLLM

pytestmark = pytest.mark.integration

QUERIES = json.loads((Path(__file__).parents[2] / "sample_queries.json").read_text())
ADMIN_KEY, SEARCH_KEY, LIMITED_KEY = new_key(), new_key(), new_key()


@pytest.fixture(scope="module")
def llm():
    """The expander's LLM: a local OpenAI-compatible server; "empty" (valid, no variants) unless a
    test switches it, so the rank tests measure the glossary-only offline default."""
    with FakeLLM(mode="empty") as server:
        yield server


GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x"}
GIT_ENV |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x"}


def git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), *args], check=True, env=GIT_ENV, capture_output=True)
    return done.stdout.decode().strip()


@pytest.fixture(scope="module")
def handbook(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repository the operator registered as the source ``handbook`` (one commit)."""
    root = tmp_path_factory.mktemp("handbook")
    git(root, "init", "-q", "-b", "main")
    (root / "ops").mkdir()
    (root / "ops" / "paging.md").write_text(
        "# Paging\n\nThe on-call engineer acknowledges a zebra-class page within 7 minutes.\n"
    )
    (root / "ops" / "backup.md").write_text("# Backups\n\nSnapshots of the ledger run every 90 minutes.\n")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "first")
    return root


@pytest.fixture(scope="module")
def service(ray_local, model_dir: Path, milvus: dict, redis_url: str, llm: FakeLLM, handbook: Path):
    """The app with three API keys; the client sends the admin key unless a test says otherwise."""
    from ray import serve

    from serve_app.app import build_app
    from serve_app.core.store import make_store

    port = free_port()
    settings = Settings(
        model={"name_or_path": str(model_dir)},
        milvus={"uri": milvus["uri"], "collection": "e2e", "timeout_s": 3.0},
        redis={"url": redis_url},
        serve={"port": port},
        search={
            "rerank_candidates": 20,
            "model_check_s": 0.5,
            "changes_check_s": 0.5,
            "corpus_refresh_min_s": 1.0,
        },
        expander={"llm_url": llm.url, "timeout_s": 1.0, "breaker_fail_max": 1000, "glossary_refresh_s": 5},
        limits={"max_body_bytes": 256 * 1024, "max_embed_items": 8},
        ingest={"sources": {"handbook": {"repo": str(handbook), "prefix": "handbook/"}}},
        auth={
            "keys": [
                {"name": "ops", "sha256": hash_key(ADMIN_KEY), "scopes": ["admin"]},
                {"name": "crm", "sha256": hash_key(SEARCH_KEY), "scopes": ["search"]},
                {"name": "tiny", "sha256": hash_key(LIMITED_KEY), "scopes": ["search"], "rate_per_minute": 2},
            ]
        },
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(settings), name="e2e", route_prefix="/")
    embedder = serve.get_deployment_handle("Embedder", app_name="e2e")

    def embed(texts: list[str]):
        out = embedder.embed.remote(texts, "passage").result()
        return np.stack([o["dense"] for o in out]), [o["sparse"] for o in out]

    store = make_store(settings, 384)
    model_key = embedder.info.remote().result()["model_key"]
    report = Ingestor(embed, store, settings.chunk, model_key=model_key).ingest(iter_documents(SAMPLE_DOCS))
    assert report.chunks_written > 20
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120, headers=auth) as client:
        yield {
            "client": client,
            "settings": settings,
            "store": store,
            "report": report,
            "model_key": model_key,
        }
    serve.delete("e2e")
    # The next module starts Serve with its proxy on its own port: this instance must go.
    serve.shutdown()


def _top(client: httpx.Client, query: str, **options) -> dict:
    response = client.post("/v1/search", json={"query": query, **{"top_k": 5, **options}})
    assert response.status_code == 200, response.text
    return response.json()


def _rank(results: list[dict], case: dict) -> int | None:
    return next(
        (
            r["rank"]
            for r in results
            if r["doc_id"] == case["expect_doc_id"] and case["expect_substring"] in r["text"]
        ),
        None,
    )


@pytest.mark.parametrize("case", QUERIES, ids=[f"{q['lang']}->{q['expect_doc_id']}" for q in QUERIES])
def test_expected_chunk_rank(service, case: dict) -> None:
    """The default pipeline (hybrid + ColBERT rerank) on the offline model.

    ``expect_rank_at_most`` records what the offline e5-small stand-in achieves (1 = first, else
    within 5 or 10) so a regression fails here; ``null`` would mark a known miss, which still runs
    to prove the request succeeds. The Japanese questions about English passages are found through
    the lexicon's English variant (none of their terms is in the sample glossary).
    """
    body = _top(service["client"], case["query"], top_k=20)
    rank = _rank(body["results"], case)
    limit = case["expect_rank_at_most"]
    if limit is None:
        pytest.xfail(f"known miss of the offline model (rank {rank})")
    assert rank is not None and rank <= limit, [(r["doc_id"], r["text"][:40]) for r in body["results"][:5]]


def test_first_place_covers_ja_en_and_cross_lingual() -> None:
    """The fixture itself: ja->ja, en->en, ja->en and en->ja questions are all asserted first."""
    doc_lang = {d.doc_id: d.lang for d in iter_documents(SAMPLE_DOCS)}
    first = [(q["lang"], doc_lang[q["expect_doc_id"]]) for q in QUERIES if q["expect_rank_at_most"] == 1]
    assert len(first) >= 10
    assert {("ja", "ja"), ("en", "en"), ("ja", "en"), ("en", "ja")} <= set(first)


def test_the_port_is_rays_haproxy_forwarding_to_the_ingress_replicas_own_server(service) -> None:
    """``serve.ingress: haproxy`` (the default): what listens on the app's port is HAProxy, and
    the port it forwards to is the Ingress replica's own HTTP server, no Serve proxy between."""
    import psutil
    import ray
    from ray.serve.context import _get_global_client

    port = service["client"].base_url.port
    listeners = {
        c.pid
        for c in psutil.net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }
    assert listeners and {psutil.Process(pid).name() for pid in listeners} == {"haproxy"}
    # What the controller hands HAProxy (its public details name HAProxy itself as the target).
    controller = _get_global_client()._controller
    groups = ray.get(controller.get_target_groups.remote(app_name="e2e", from_proxy_manager=True))
    targets = [t for g in groups if g.protocol == "HTTP" for t in g.targets]
    assert targets, groups
    for target in targets:
        assert target.port != port
        direct = httpx.get(f"http://{target.ip}:{target.port}/healthz", timeout=10)
        assert direct.status_code == 200, direct.text
    assert service["client"].get("/healthz").json() == direct.json()


def test_response_carries_scores_metadata_and_timings(service) -> None:
    body = _top(service["client"], "注文のキャンセルはいつまで可能ですか？", rerank=True)
    first = body["results"][0]
    assert {"dense", "sparse", "rrf", "colbert", "rerank"} <= set(first["scores"])
    assert first["score"] == pytest.approx(first["scores"]["rerank"])
    assert first["title_path"] and first["kind"] and first["version"] == 1
    assert {"expand", "embed", "search", "fuse", "rerank", "total"} <= set(body["timings_ms"])
    assert body["variants"][0] == {
        "text": "注文のキャンセルはいつまで可能ですか？",
        "lang": "ja",
        "origin": "original",
        "terms": None,
    }
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)


def test_filters_restrict_results(service) -> None:
    body = _top(service["client"], "rate limit", filters={"kinds": ["glossary"]}, rerank=False, explain=True)
    assert body["results"] and {r["kind"] for r in body["results"]} == {"glossary"}
    # The glossary is a rare kind: stage 2 left the lists short, so they were searched again with the
    # filter pushed into Milvus.
    assert any(s["refetched"] for s in body["explain"]["searches"])
    body = _top(service["client"], "rate limit", filters={"sources": ["order-api.en.md"]}, rerank=False)
    assert body["results"] and {r["source"] for r in body["results"]} == {"order-api.en.md"}


def test_explain_shows_variants_channels_and_stage_timings(service, llm: FakeLLM) -> None:
    llm.mode = "ok"  # answers 1 ja + 3 en variants
    # A query no other test sends: the Ingress remembers expansions (serve.expansion_cache_s),
    # and one made while the LLM answered nothing would be reused here.
    query = "認証トークンの有効期限はいつまで？"
    try:
        body = _top(service["client"], query, explain=True, rerank=False)
    finally:
        llm.mode = "empty"
    origins = [v["origin"] for v in body["variants"]]
    assert origins[:5] == ["original", "llm", "llm", "llm", "llm"] and not body["degraded"]
    explain = body["explain"]
    assert explain["expansion"]["llm"] == "ok"
    searches = explain["searches"]
    assert {(s["variant"], s["channel"]) for s in searches} >= {(v, "dense") for v in range(len(origins))}
    assert all(s["ms"] > 0 and s["fetched"] >= s["kept"] for s in searches)
    assert {"expand", "embed", "search", "versions", "fuse", "total"} <= set(body["timings_ms"])
    assert all(r["found_by"] for r in body["results"])
    assert {f["variant"] for r in body["results"] for f in r["found_by"]} - {0}, "variants found results"
    # without explain: no per-search detail
    plain = _top(service["client"], query, rerank=False)  # its expansion is remembered: same variants
    assert plain["variants"] == body["variants"]
    assert plain["explain"] is None and not any(r["found_by"] for r in plain["results"])


@pytest.mark.parametrize("mode", ["garbage", "slow", "error", "down"])
def test_expander_faults_fall_back_without_failing_the_search(service, llm: FakeLLM, mode: str) -> None:
    """Invalid JSON, a slow endpoint (over the 1 s budget), HTTP 503, nothing listening."""
    query = f"What happens when the idempotency key is reused ({mode})?"  # never expanded before
    started = time.perf_counter()
    if mode == "down":
        llm.stop()
    else:
        llm.mode = mode
    try:
        body = _top(service["client"], query, explain=True, rerank=False)
    finally:
        if mode == "down":
            llm.start()
        llm.mode = "empty"
    elapsed = time.perf_counter() - started
    assert body["results"], "the search still answers"
    assert "expander" in body["degraded"]
    assert body["explain"]["expansion"]["llm"] == "fallback" and body["explain"]["expansion"]["llm_error"]
    assert body["variants"][0]["origin"] == "original"
    assert all(v["origin"] != "llm" for v in body["variants"])
    assert elapsed < 10, f"bounded by the expander's budget ({elapsed:.1f} s)"


def test_embed_returns_three_outputs(service) -> None:
    response = service["client"].post(
        "/v1/embed",
        json={"input": ["冪等キー", "idempotency key"], "return_sparse": True, "return_colbert": True},
    )
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    dense = np.array([d["dense"] for d in data])
    assert dense.shape == (2, 384)
    assert np.allclose(np.linalg.norm(dense, axis=1), 1.0, atol=1e-3)
    assert all(d["sparse"] and all(k.isdigit() for k in d["sparse"]) for d in data)
    assert all(len(d["colbert"]) >= 2 and len(d["colbert"][0]) == 384 for d in data)
    assert response.json()["usage"]["total_tokens"] > 4


def test_query_embeddings_are_cached_in_redis(service, redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    _top(service["client"], "What is the p95 target of the allocation API?", rerank=False)
    keys = client.keys("specrag:emb:*")
    assert keys, "a query embedding should have been written to Redis"


def test_reingesting_unchanged_documents_embeds_nothing(service) -> None:
    calls: list[int] = []

    def embed(texts):  # must not be called
        calls.append(len(texts))
        raise AssertionError("nothing should be embedded")

    report = Ingestor(
        embed, service["store"], service["settings"].chunk, model_key=service["model_key"]
    ).ingest(iter_documents(SAMPLE_DOCS))
    assert report.unchanged == report.documents == 6
    assert report.chunks_written == 0 and not calls


@pytest.mark.parametrize(
    ("path", "payload", "status"),
    [
        ("/v1/search", {"query": ""}, 422),
        ("/v1/search", {"query": "   \n"}, 422),
        ("/v1/search", {"query": 42}, 422),
        ("/v1/search", {"query": "ok", "top_k": 0}, 422),
        ("/v1/search", {"query": "ok", "top_k": "ten"}, 422),
        ("/v1/search", {"query": "ok", "channels": ["fuzzy"]}, 422),
        ("/v1/search", {"query": "ok", "unknown": 1}, 422),
        ("/v1/search", {"query": "x" * 2001}, 413),
        ("/v1/search", {"query": "x" * 300_000}, 413),  # over max_body_bytes
        ("/v1/embed", {"input": []}, 422),
        ("/v1/embed", {"input": [" ", ""]}, 422),
        ("/v1/embed", {"input": ["x" * 50_001]}, 413),
        ("/v1/embed", {"input": ["a"] * 9}, 413),
        ("/v1/documents", {"documents": []}, 422),
        ("/v1/documents", {"documents": [{"doc_id": "x", "text": " \n"}]}, 422),
        ("/v1/documents", {"documents": [{"doc_id": "", "text": "a"}]}, 422),
        ("/v1/documents", {"documents": [{"doc_id": "x", "text": "a", "kind": "novel"}]}, 422),
        ("/v1/documents", {"documents": [{"doc_id": "x", "text": "a"}, {"doc_id": "x", "text": "b"}]}, 422),
    ],
)
def test_bad_input_gets_4xx_with_reason(service, path: str, payload: dict, status: int) -> None:
    response = service["client"].post(path, json=payload)
    assert response.status_code == status, response.text
    assert response.json()["error"]


def test_not_json_is_422(service) -> None:
    response = service["client"].post(
        "/v1/search", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert "JSON" in json.dumps(response.json())


def test_milvus_down_is_503_and_recovers(service, milvus: dict) -> None:
    """Last in the module: stops the shared Milvus server, then brings it back."""
    milvus["stop"]()
    try:
        response = service["client"].post("/v1/search", json={"query": "冪等キー", "rerank": False})
        assert response.status_code == 503, response.text
        assert "unavailable" in response.json()["error"]
    finally:
        milvus["start"]()
    body = _top(service["client"], "冪等キー", rerank=False)
    assert body["results"], "search must recover once Milvus is back"


# --- embeddings API --------------------------------------------------------------------------


def test_openai_embeddings_float_and_base64_agree(service) -> None:
    import base64

    client = service["client"]
    model = client.post("/v1/embed", json={"input": "x"}).json()["model"]
    texts = ["冪等キーは24時間保持される", "idempotency keys are kept for 24 hours"]
    as_float = client.post("/v1/embeddings", json={"input": texts, "model": model})
    as_b64 = client.post("/v1/embeddings", json={"input": texts, "model": model, "encoding_format": "base64"})
    assert as_float.status_code == as_b64.status_code == 200, as_float.text
    body = as_float.json()
    assert body["object"] == "list" and body["model"] == model
    assert [d["index"] for d in body["data"]] == [0, 1] and body["data"][0]["object"] == "embedding"
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 8
    floats = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    decoded = np.stack(
        [np.frombuffer(base64.b64decode(d["embedding"]), np.float32) for d in as_b64.json()["data"]]
    )
    assert floats.shape == (2, 384) and np.allclose(floats, decoded, atol=1e-6)


@pytest.mark.parametrize(
    ("payload", "status", "param"),
    [
        ({"input": "x", "model": "text-embedding-3-small"}, 404, "model"),
        ({"input": "x", "model": "m3-offline-e5-small", "dimensions": 1024}, 422, "dimensions"),
        ({"input": ["ok", " "], "model": "m3-offline-e5-small"}, 422, "input"),
        ({"input": [[1, 2, 3]], "model": "m3-offline-e5-small"}, 422, "input"),
        ({"input": "x"}, 422, "model"),
    ],
)
def test_openai_errors_have_openai_shape(service, payload: dict, status: int, param: str) -> None:
    response = service["client"].post("/v1/embeddings", json=payload)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"
    assert error["param"].split(".")[0] == param


def test_invalid_items_are_reported_without_failing_the_others(service) -> None:
    response = service["client"].post(
        "/v1/embed",
        json={"input": ["valid text", "", 42, "also valid"], "return_sparse": True, "return_tokens": True},
    )
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [d["error"] for d in data] == [None, "empty or whitespace-only", "not a string", None]
    assert data[0]["dense"] and data[3]["dense"] and data[1]["dense"] is None
    assert "▁valid" in data[0]["sparse_tokens"]


def test_twenty_thousand_japanese_characters_embed_truncated(service) -> None:
    text = "".join(f"第{i}条 在庫引当は作成から三十分で自動的に解放される。" for i in range(700))
    assert len(text) > 20_000
    response = service["client"].post("/v1/embed", json={"input": [text, "短い文。"]})
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data[0]["truncated"] is True and data[1]["truncated"] is False
    assert 400 < data[0]["tokens"] <= 512


def test_cache_hit_is_served_without_the_model(service) -> None:
    client = service["client"]
    text = "キャッシュ確認用のテキストです。"
    first = client.post("/v1/embed", json={"input": text}).json()
    second = client.post("/v1/embed", json={"input": text}).json()
    assert first["data"][0]["cached"] is None and second["data"][0]["cached"] == "lru"
    assert second["data"][0]["dense"] == first["data"][0]["dense"]
    assert second["usage"]["total_tokens"] == 0, "the model read nothing"


def test_concurrent_requests_share_dynamic_batches(service) -> None:
    import asyncio

    from ray import serve

    async def load() -> list[int]:
        async with httpx.AsyncClient(
            base_url=service["client"].base_url, timeout=120, headers=service["client"].headers
        ) as client:
            responses = await asyncio.gather(
                *(client.post("/v1/embed", json={"input": f"batch probe {i} 在庫"}) for i in range(24))
            )
        return [r.status_code for r in responses]

    assert asyncio.run(load()) == [200] * 24
    stats = serve.get_deployment_handle("Embedder", app_name="e2e").stats.remote().result()
    assert max(stats["batch_sizes"]) > 1, stats
    assert max(stats["forward_batches"]) > 1, stats


def test_a_requests_texts_share_one_model_step(service) -> None:
    """A search's query variants reach the model together: one step, not the first text alone."""
    import time

    from ray import serve

    handle = serve.get_deployment_handle("Embedder", app_name="e2e")
    before = handle.stats.remote().result()["batch_sizes"]
    texts = [f"one step {i} 在庫引当 {time.time_ns()}" for i in range(4)]
    out = handle.embed.remote(texts, "query", True).result()
    assert [o["error"] for o in out] == [None] * 4 and all(o["colbert"] is not None for o in out)
    after = handle.stats.remote().result()["batch_sizes"]
    assert {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)} == {4: 1}


def test_killing_redis_under_load_fails_no_request(service, redis_server: dict) -> None:
    """Unique texts so every lookup goes to Redis; Redis is killed a third of the way in."""
    import asyncio

    async def load() -> list[int]:
        statuses: list[int] = []
        sem = asyncio.Semaphore(8)
        async with httpx.AsyncClient(
            base_url=service["client"].base_url, timeout=120, headers=service["client"].headers
        ) as client:

            async def one(i: int) -> None:
                if i == 20:
                    redis_server["kill"]()
                async with sem:
                    r = await client.post(
                        "/v1/embed", json={"input": [f"redis outage probe {i}", f"障害 {i}"]}
                    )
                    statuses.append(r.status_code)

            await asyncio.gather(*(one(i) for i in range(60)))
        return statuses

    try:
        statuses = asyncio.run(load())
    finally:
        redis_server["start"]()
    assert len(statuses) == 60 and set(statuses) == {200}, statuses


def test_documents_api_versions_and_deletes(service) -> None:
    """POST twice (idempotent), update (only the new version is found), GET, DELETE twice."""
    c = service["client"]
    doc = {
        "doc_id": "http/webhooks.md",
        "title": "Webhook signing",
        "kind": "spec",
        "lang": "en",
        "text": "# Webhook signing\n\nEvery webhook is signed with HMAC-SHA256 using signing key version 7.",
    }
    first = c.post("/v1/documents", json={"documents": [doc]})
    assert first.status_code == 200, first.text
    assert first.json()["added"] == 1 and first.json()["chunks_embedded"] >= 1
    again = c.post("/v1/documents", json={"documents": [doc]}).json()
    assert again["unchanged"] == 1 and again["chunks_embedded"] == 0 and again["chunks_written"] == 0

    question = {"query": "Which signing key version is used for webhooks?", "rerank": False}
    only = {"filters": {"doc_ids": [doc["doc_id"]]}}
    hits = c.post("/v1/search", json={**question, **only}).json()["results"]
    assert hits and all("version 7" in h["text"] for h in hits)

    updated = {**doc, "text": doc["text"].replace("version 7", "version 8")}
    assert c.post("/v1/documents", json={"documents": [updated]}).json()["updated"] == 1
    hits = c.post("/v1/search", json={**question, **only}).json()["results"]
    assert hits and all(h["version"] == 2 and "version 8" in h["text"] for h in hits)
    anywhere = c.post("/v1/search", json={**question, "top_k": 20}).json()["results"]
    assert not [h for h in anywhere if "version 7" in h["text"]], "the old version is never returned"

    info = c.get(f"/v1/documents/{doc['doc_id']}").json()
    assert info["version"] == 2 and info["chunks"] >= 1 and info["kind"] == "spec"
    assert c.delete(f"/v1/documents/{doc['doc_id']}").json()["deleted"] == 1
    assert c.delete(f"/v1/documents/{doc['doc_id']}").json() == {"deleted": 0, "chunks_deleted": 0}
    missing = c.get(f"/v1/documents/{doc['doc_id']}")
    assert missing.status_code == 404 and "no document" in missing.json()["error"]
    assert c.post("/v1/search", json={**question, **only}).json()["results"] == []


def test_api_keys_scopes_and_rate_limit(service) -> None:
    c = service["client"]
    url = "/v1/search"
    body = {"query": "冪等キーの保持期間は？", "rerank": False}
    missing = c.post(url, json=body, headers={"Authorization": ""})
    assert missing.status_code == 401 and "missing API key" in missing.json()["error"]
    wrong = c.post(url, json=body, headers={"Authorization": "Bearer sk-specrag-wrong"})
    assert wrong.status_code == 401
    assert c.post(url, json=body, headers={"Authorization": f"Bearer {SEARCH_KEY}"}).status_code == 200
    doc = {"documents": [{"doc_id": "x", "text": "never written"}]}
    denied = c.post("/v1/documents", json=doc, headers={"Authorization": f"Bearer {SEARCH_KEY}"})
    assert denied.status_code == 403 and "ingest" in denied.json()["error"]
    tiny = {"Authorization": f"Bearer {LIMITED_KEY}"}
    codes = [c.post(url, json=body, headers=tiny).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    limited = c.post(url, json=body, headers=tiny)
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    open_routes = [c.get(p, headers={"Authorization": ""}).status_code for p in ("/healthz", "/openapi.json")]
    assert open_routes == [200, 200]


def test_readyz_degrades_without_redis_and_recovers(service, redis_server: dict) -> None:
    c = service["client"]
    ready = c.get("/readyz", headers={"Authorization": ""})
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "healthy", body
    assert body["checks"]["model"]["dim"] == 384 and body["checks"]["milvus"]["status"] == "ok"
    redis_server["kill"]()
    try:
        degraded = c.get("/readyz").json()
        assert degraded["status"] == "degraded" and degraded["checks"]["redis"]["status"] == "down"
        search = c.post("/v1/search", json={"query": "Redis is down: still answered?", "rerank": False})
        assert search.status_code == 200, "search is served without the cache"
    finally:
        redis_server["start"]()
    deadline = time.monotonic() + 20
    while (state := c.get("/readyz").json()["status"]) != "healthy" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert state == "healthy"


def test_metrics_expose_stage_histograms_and_request_counts(service, ray_local: dict) -> None:
    c = service["client"]
    for q in ("注文のキャンセル期限は？", "How long are idempotency keys kept?"):
        assert c.post("/v1/search", json={"query": q, "rerank": False}).status_code == 200
    c.post("/v1/search", json={"query": "x"}, headers={"Authorization": ""})  # a 401 is counted too
    wanted = (
        "ray_specrag_stage_ms_bucket{",
        'stage="search"',
        'stage="embed"',
        'stage="total"',
        "ray_specrag_search_channel_ms_bucket",
        "ray_specrag_http_requests_total",
        'status="401"',
        "ray_specrag_embed_batch_size_bucket",
    )
    deadline = time.monotonic() + 60  # Ray exports metrics every few seconds
    text = ""
    while time.monotonic() < deadline:
        text = httpx.get(ray_local["metrics_url"], timeout=10).text
        if all(w in text for w in wanted):
            break
        time.sleep(2)
    assert [w for w in wanted if w not in text] == []


def _hits(client: httpx.Client, query: str, **filters: list[str]) -> list[dict]:
    body = {"query": query, "top_k": 5, "rerank": False, "filters": filters or None}
    return client.post("/v1/search", json=body).json()["results"]


def test_git_source_sync_by_trigger(service, handbook: Path) -> None:
    """A registered source synced by commit through HTTP: the first sync reads every file, the
    second (triggered without waiting, as a git hook would) only the change, and searches follow."""
    c = service["client"]
    first = c.post("/v1/sources/handbook/sync", json={"wait": True})
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["report"]["mode"] == "full" and body["report"]["files"]["added"] == 2
    assert body["commit"] == git(handbook, "rev-parse", "HEAD") and body["state"] == "done"
    # Found at once through its dense and sparse lists; the BM25 channel's index follows the write
    # within search.corpus_refresh_min_s (the writers' mark in the meta store), then it ranks on top.
    deadline = time.monotonic() + 30
    question = "How fast must a zebra-class page be acknowledged?"
    while (ids := [h["doc_id"] for h in _hits(c, question)])[0] != "handbook/ops/paging.md":
        assert time.monotonic() < deadline, ids
        time.sleep(0.5)

    (handbook / "ops" / "paging.md").write_text(
        "# Paging\n\nThe on-call engineer acknowledges a zebra-class page within 3 minutes.\n"
    )
    git(handbook, "rm", "-q", "ops/backup.md")
    git(handbook, "add", "-A")
    git(handbook, "commit", "-qm", "second")
    head = git(handbook, "rev-parse", "HEAD")
    accepted = c.post("/v1/sources/handbook/sync", json={"commit": head})
    assert accepted.status_code == 202 and accepted.json()["requested"] == head
    deadline = time.monotonic() + 60
    while (status := c.get("/v1/sources/handbook").json())["commit"] != head and time.monotonic() < deadline:
        assert status["state"] in ("queued", "running", "done"), status
        time.sleep(0.2)
    assert status["commit"] == head and status["last"]["files"] == {
        "added": 0,
        "modified": 1,
        "deleted": 1,
        "renamed": 0,
    }
    paging = _hits(c, "How fast must a zebra-class page be acknowledged?", doc_ids=["handbook/ops/paging.md"])
    assert paging and all("3 minutes" in h["text"] for h in paging), "only the new version is found"
    assert not _hits(c, "How often are ledger snapshots taken?", doc_ids=["handbook/ops/backup.md"])
    assert c.get("/v1/documents/handbook/ops/backup.md").status_code == 404
    listed = c.get("/v1/sources").json()
    assert [s["source"] for s in listed] == ["handbook"]


@pytest.mark.parametrize(
    ("name", "payload", "status", "reason"),
    [
        ("nope", {}, 404, "no registered source"),
        ("handbook", {"commit": "0" * 40}, 422, "no commit"),
        ("handbook", {"commit": "--upload-pack=touch /tmp/x"}, 422, "commit"),
        ("handbook", {"repo": "/etc"}, 422, "repo"),
    ],
)
def test_git_source_trigger_refusals(service, name: str, payload: dict, status: int, reason: str) -> None:
    """Only a registered name and a commit are accepted: never a path or a URL from the request."""
    response = service["client"].post(f"/v1/sources/{name}/sync", json=payload)
    assert response.status_code == status and reason in response.text, response.text
    scoped = service["client"].post(
        "/v1/sources/handbook/sync", json={}, headers={"Authorization": f"Bearer {SEARCH_KEY}"}
    )
    assert scoped.status_code == 403


def test_a_model_switch_under_the_running_app_is_refused_naming_both_models(service) -> None:
    """A re-embed with another model switches the alias to a collection recording that model: the
    running service (still on its model) answers 503 naming both instead of mixing vector spaces,
    and serves again once the index is back on its model (a rollback)."""
    c, store = service["client"], service["store"]
    physical = store.resolve()
    ours = store.model_of(physical)
    assert ours == service["model_key"]
    store.set_model("bge-m3@upgraded|cls|||8192", physical)  # what the new model's collection records
    try:
        deadline = time.monotonic() + 30
        while (
            r := c.post("/v1/search", json={"query": "アクセストークンの有効期限は？"})
        ).status_code == 200:
            assert time.monotonic() < deadline, "the switch was not noticed"
            time.sleep(0.2)
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["error"] == "the index was built with another model than the one this service runs"
        assert "bge-m3@upgraded" in body["detail"] and ours in body["detail"]
        assert c.get("/v1/documents/order-api").status_code in (200, 404), "other routes still answer"
    finally:
        store.set_model(ours, physical)
    deadline = time.monotonic() + 30
    while (r := c.post("/v1/search", json={"query": "アクセストークンの有効期限は？"})).status_code != 200:
        assert time.monotonic() < deadline, r.text
        time.sleep(0.2)
