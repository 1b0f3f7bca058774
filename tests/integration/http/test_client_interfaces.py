"""Other systems' client libraries against the real graph: the ``cohere`` SDK's rerank, a TEI-style
``/rerank`` call, the ``openai`` SDK's model list and embeddings with NIM's fields.

Real Ray Serve, Milvus Lite server, redis-server and the offline model (which has query and
passage prefixes, so a query vector differs from a passage vector of the same text); started once
for the module, with API keys on so every call also passes the scope check.
"""

from __future__ import annotations

from pathlib import Path

import cohere
import httpx
import numpy as np
import openai
import pytest
from cohere.core.api_error import ApiError

from serve_app.devtools.local_stack import free_port
from serve_app.http.security import hash_key, new_key
from serve_app.settings import Settings

pytestmark = pytest.mark.integration

SEARCH_KEY, INGEST_KEY = new_key(), new_key()
QUERY = "アクセストークンの有効期限は？"
DOCUMENTS = [
    "在庫は先入れ先出しで引き当てる。",
    "アクセストークンの有効期限は発行から60分です。期限切れの前にリフレッシュしてください。",
    "The order API accepts an idempotency key per request.",
]
# Over the 512-token window either way, and its two ends say different things (START != END).
LONG = (
    "注文基盤の在庫引当は作成から三十分で自動的に解放される。" * 40
    + "The access token expires after an hour. " * 60
)


@pytest.fixture(scope="module")
def service(ray_local, model_dir: Path, milvus: dict, redis_url: str):
    from ray import serve

    from serve_app.app import build_app

    port = free_port()
    settings = Settings(
        model={"name_or_path": str(model_dir)},
        milvus={"uri": milvus["uri"], "collection": "clients", "timeout_s": 3.0},
        redis={"url": redis_url},
        serve={"port": port},
        auth={
            "keys": [
                {"name": "app", "sha256": hash_key(SEARCH_KEY), "scopes": ["search"]},
                {"name": "loader", "sha256": hash_key(INGEST_KEY), "scopes": ["ingest"]},
            ]
        },
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(settings), name="clients", route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {SEARCH_KEY}"}
    with httpx.Client(base_url=base, timeout=120, headers=auth) as client:
        info = client.get("/info").json()
        yield {"base": base, "client": client, "model": info["model_id"], "info": info}
    serve.delete("clients")
    serve.shutdown()  # the next module starts Serve with its proxy on its own port


def test_cohere_sdk_reranks_best_first(service) -> None:
    co = cohere.ClientV2(base_url=service["base"], api_key=SEARCH_KEY)
    out = co.rerank(model=service["model"], query=QUERY, documents=DOCUMENTS, top_n=2)
    assert out.results[0].index == 1, "the passage holding the answer first"
    assert len(out.results) == 2
    scores = [r.relevance_score for r in out.results]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
    assert out.meta is not None and out.meta.tokens is not None and out.meta.tokens.input_tokens >= 0
    with pytest.raises(ApiError) as err:
        co.rerank(model="rerank-v3.5", query=QUERY, documents=DOCUMENTS)
    assert err.value.status_code == 404 and service["model"] in str(err.value.body)
    denied = cohere.ClientV2(base_url=service["base"], api_key=INGEST_KEY)
    with pytest.raises(ApiError) as err:
        denied.rerank(model=service["model"], query=QUERY, documents=DOCUMENTS)
    assert err.value.status_code == 403


def test_tei_rerank_scores_raw_scores_and_truncation(service) -> None:
    c = service["client"]
    ranks = c.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS, "return_text": True}).json()
    assert ranks[0]["index"] == 1 and ranks[0]["text"] == DOCUMENTS[1]
    raw = c.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS, "raw_scores": True}).json()
    cohere_shape = c.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS}).json()["results"]
    relevance = {r["index"]: r["relevance_score"] for r in cohere_shape}
    for r in raw:  # ColBERT MaxSim of unit vectors: in [0, 1], so the relevance is the raw score
        assert relevance[r["index"]] == pytest.approx(min(max(r["score"], 0.0), 1.0), abs=1e-6)
    too_long = c.post("/rerank", json={"query": QUERY, "texts": [DOCUMENTS[0], LONG]})
    assert too_long.status_code == 413
    assert "texts[1]" in too_long.text and "limit of 512 tokens" in too_long.text
    for direction in ("Right", "Left"):
        body = {"query": QUERY, "texts": [LONG], "truncate": True, "truncation_direction": direction}
        assert c.post("/rerank", json=body).status_code == 200
    # A text the model cut in this request is reported (one served from the cache is not re-checked).
    fresh = LONG + " Nothing else."
    cut = c.post("/v1/rerank", json={"query": QUERY, "documents": [fresh, DOCUMENTS[1]]}).json()
    assert cut["meta"]["truncated"] == [0] and cut["meta"]["warnings"]


def test_openai_sdk_lists_models_and_embeds_with_nim_fields(service) -> None:
    client = openai.OpenAI(base_url=service["base"] + "/v1", api_key=SEARCH_KEY)
    assert [m.id for m in client.models.list()] == [service["model"]]
    text = "アクセストークンの有効期限"
    passage = client.embeddings.create(model=service["model"], input=text).data[0].embedding
    query = client.embeddings.create(model=service["model"], input=text, extra_body={"input_type": "query"})
    vector = np.asarray(query.data[0].embedding)
    assert vector.shape == (service["info"]["dimension"],) and np.isclose(
        np.linalg.norm(vector), 1, atol=1e-3
    )
    assert not np.allclose(vector, passage, atol=1e-4), "the query prefix makes another vector"
    native = service["client"].post("/v1/embed", json={"input": text, "input_type": "query"}).json()
    assert np.allclose(vector, native["data"][0]["dense"], atol=1e-5), "the query vector /v1/embed gives"


def test_openai_sdk_sees_refusals_with_their_reason(service) -> None:
    client = openai.OpenAI(base_url=service["base"] + "/v1", api_key=SEARCH_KEY, max_retries=0)
    model = service["model"]
    with pytest.raises(openai.UnprocessableEntityError) as err:
        client.embeddings.create(model=model, input="x", extra_body={"input_kind": "query"})
    assert "input_kind" in err.value.message
    with pytest.raises(openai.UnprocessableEntityError) as err:
        client.embeddings.create(model=model, input=[[101, 2023, 102]])
    assert "check_embedding_ctx_length=False" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=model, input=[LONG], extra_body={"truncate": "NONE"})
    assert "limit of 512 tokens" in err.value.message
    start = client.embeddings.create(model=model, input=[LONG], extra_body={"truncate": "START"})
    end = client.embeddings.create(model=model, input=[LONG], extra_body={"truncate": "END"})
    assert not np.allclose(start.data[0].embedding, end.data[0].embedding, atol=1e-4)
