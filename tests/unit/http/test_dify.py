"""Dify's External Knowledge API (``POST /retrieval``) over the in-process app: Dify's documented
request replayed, the response schema, profile filters, metadata conditions, auth and errors in
Dify's shape. The backend is the real ``SearchPipeline`` over a retriever double that applies the
filters it receives, so what a profile or condition maps to shows in the records."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serve_app.core.contracts import EmbedOutput, Fanout
from serve_app.core.fusion import Candidate
from serve_app.core.pipeline import OriginalOnly, SearchPipeline
from serve_app.http.app import create_app
from serve_app.http.security import hash_key, new_key
from serve_app.settings import SearchSettings, Settings

SEARCH_KEY, INGEST_KEY = new_key(), new_key()
CHUNKS: list[dict[str, Any]] = [
    {
        "chunk_id": "auth#0",
        "doc_id": "auth",
        "version": 2,
        "text": "アクセストークンの有効期限は1時間です。",
        "title": "認証仕様",
        "title_path": ["認証仕様", "トークン"],
        "lang": "ja",
        "kind": "spec",
        "source": "specs/auth.md",
        "tags": ["security", "api"],
        "doc_updated_at": 1700000000,
    },
    {
        "chunk_id": "glossary#3",
        "doc_id": "glossary",
        "version": 1,
        "text": "アクセストークン: API を呼ぶための短命な資格情報。",
        "title": "",
        "title_path": ["用語集"],
        "lang": "ja",
        "kind": "glossary",
        "source": "glossary.md",
        "tags": ["api"],
    },
    {
        "chunk_id": "billing#1",
        "doc_id": "billing",
        "version": 1,
        "text": "Refunds are issued within 14 days.",
        "title": "Billing FAQ",
        "title_path": ["Billing FAQ"],
        "lang": "en",
        "kind": "faq",
        "source": "faq/billing.md",
        "tags": ["billing"],
    },
]
RERANK = {"auth#0": 0.91, "glossary#3": 0.62, "billing#1": 0.18}


def _matches(fields: dict[str, Any], filters: dict[str, list[str]]) -> bool:
    for key, name in (("kinds", "kind"), ("langs", "lang"), ("doc_ids", "doc_id"), ("sources", "source")):
        if filters.get(key) and fields[name] not in filters[key]:
            return False
    return not filters.get("tags") or bool(set(filters["tags"]) & set(fields["tags"]))


class Backend:
    """The real pipeline; the retriever filters ``CHUNKS``, the reranker scores from ``RERANK``."""

    def __init__(self) -> None:
        self.filters: list[Any] = []
        self.rerank_error: Exception | None = None
        self.pipeline = SearchPipeline(
            SearchSettings(rerank=False),  # the profile asks for the rerank itself
            expander=OriginalOnly(),
            embedder=self,
            retriever=self,  # type: ignore[arg-type]
            reranker=self,
        )

    async def embed(self, texts: list[str], input_type: str, *_: Any, **__: Any) -> list[EmbedOutput]:
        out: EmbedOutput = {
            "dense": np.full(4, 0.5, np.float32),
            "sparse": {},
            "colbert": None,
            "tokens": 3,
            "truncated": False,
            "cached": None,
            "error": None,
        }
        return [out for _ in texts]

    async def search(self, vectors: list[Any], **kw: Any) -> Fanout:
        self.filters.append(kw["filters"])
        hits = [c for c in CHUNKS if _matches(c, kw["filters"] or {})]
        candidates = [
            Candidate(c["chunk_id"], dict(c), rrf=1 / (60 + i)) for i, c in enumerate(hits, start=1)
        ][: kw["limit"]]
        return Fanout(candidates, {"search": 1.0, "versions": 0.1, "fuse": 0.1}, 2, rrf_max=1 / 61)

    async def rerank(
        self, query: str, candidates: list[Candidate], queries: Sequence[Any] = ()
    ) -> list[Candidate]:
        if self.rerank_error:
            raise self.rerank_error
        for c in candidates:
            c.channel_scores["rerank"] = RERANK[c.chunk_id]
        return sorted(candidates, key=lambda c: -c.channel_scores["rerank"])

    async def model_info(self) -> dict[str, Any]:
        return {"model": "fake-m3", "dim": 4, "model_key": "fake"}


SETTINGS = Settings(
    dify={
        "profiles": {
            "specs-ja": {"kinds": ["spec", "glossary"], "langs": ["ja"], "max_top_k": 5},
            "everything": {},
            "api-tagged": {"tags": ["api", "security"]},
            "fusion-only": {"rerank": False},
        }
    },
    auth={
        "keys": [
            {"name": "dify", "sha256": hash_key(SEARCH_KEY), "scopes": ["search"]},
            {"name": "loader", "sha256": hash_key(INGEST_KEY), "scopes": ["ingest"]},
        ]
    },
)
AUTH = {"Authorization": f"Bearer {SEARCH_KEY}"}

# Dify's documented example request, as its ExternalDatasetService sends it.
DIFY_REQUEST: dict[str, Any] = {
    "knowledge_id": "specs-ja",
    "query": "アクセストークンの有効期限は？",
    "retrieval_setting": {"top_k": 2, "score_threshold": 0.5},
}


@pytest.fixture
def dify() -> tuple[TestClient, Backend]:
    backend = Backend()
    return TestClient(create_app(SETTINGS, backend), raise_server_exceptions=False), backend


def _post(client: TestClient, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    return client.post("/retrieval", json=body, headers=AUTH if headers is None else headers)


def _condition(*conditions: dict[str, Any], op: str | None = "and") -> dict[str, Any]:
    condition = {"logical_operator": op, "conditions": list(conditions)}
    return {**DIFY_REQUEST, "knowledge_id": "everything", "metadata_condition": condition}


def test_dify_request_gets_records_in_dify_schema(dify) -> None:
    client, backend = dify
    r = _post(client, DIFY_REQUEST)
    assert r.status_code == 200, r.text
    records = r.json()["records"]
    assert set(r.json()) == {"records"}
    assert [set(rec) for rec in records] == [{"content", "score", "title", "metadata"}] * 2
    first, second = records
    assert first["content"] == CHUNKS[0]["text"] and first["score"] == pytest.approx(0.91)
    assert first["title"] == "認証仕様" and second["title"] == "glossary"  # no title: the doc id
    assert first["metadata"] == {
        "rank": 1,
        "chunk_id": "auth#0",
        "doc_id": "auth",
        "version": 2,
        "title_path": ["認証仕様", "トークン"],
        "lang": "ja",
        "kind": "spec",
        "source": "specs/auth.md",
        "tags": ["security", "api"],
        "updated_at": 1700000000,
        "score_stage": "rerank",
    }
    assert backend.filters == [{"kinds": ["glossary", "spec"], "langs": ["ja"]}]  # the profile's


def test_score_threshold_and_the_profiles_top_k_cap(dify) -> None:
    client, _ = dify
    body = {**DIFY_REQUEST, "retrieval_setting": {"top_k": 10, "score_threshold": 0.7}}
    assert [rec["metadata"]["chunk_id"] for rec in _post(client, body).json()["records"]] == ["auth#0"]
    body = {
        "knowledge_id": "everything",
        "query": "q",
        "retrieval_setting": {"top_k": 50, "score_threshold": 0},
    }
    assert len(_post(client, body).json()["records"]) == 3  # every chunk: top_k 50 capped at 10
    capped = {**DIFY_REQUEST, "retrieval_setting": {"top_k": 50, "score_threshold": 0.0}}
    assert len(_post(client, capped).json()["records"]) == 2  # the two ja spec/glossary chunks


def test_without_the_rerank_the_score_is_the_fusions_and_says_so(dify) -> None:
    client, backend = dify
    body = {
        **DIFY_REQUEST,
        "knowledge_id": "fusion-only",
        "retrieval_setting": {"top_k": 3, "score_threshold": 0},
    }
    records = _post(client, body).json()["records"]
    assert records[0]["score"] == pytest.approx(1.0) and 0 < records[-1]["score"] < 1
    assert {rec["metadata"]["score_stage"] for rec in records} == {"fusion"}
    backend.rerank_error = RuntimeError("reranker replica died")
    records = _post(client, DIFY_REQUEST).json()["records"]  # degraded, still answered
    assert records and {rec["metadata"]["score_stage"] for rec in records} == {"fusion"}


def test_unknown_knowledge_id_is_difys_2001(dify) -> None:
    client, backend = dify
    r = _post(client, {**DIFY_REQUEST, "knowledge_id": "no-such-kb"})
    assert r.status_code == 404
    assert r.json()["error_code"] == 2001
    assert (
        r.json()["error_msg"].startswith("The knowledge does not exist")
        and "no-such-kb" in r.json()["error_msg"]
    )
    assert backend.filters == []


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, 1001),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, 401, 1001),
        ({"Authorization": "Bearer "}, 401, 1001),
        ({"Authorization": "Bearer sk-not-a-key"}, 401, 1002),
        ({"Authorization": f"Bearer {INGEST_KEY}"}, 403, 1002),
    ],
)
def test_bad_auth_answers_in_difys_shape(dify, headers: dict[str, str], status: int, code: int) -> None:
    client, backend = dify
    r = _post(client, DIFY_REQUEST, headers=headers)
    assert (r.status_code, r.json()["error_code"]) == (status, code), r.text
    assert isinstance(r.json()["error_msg"], str) and "error" not in r.json()
    if headers.get("Authorization", "").strip() and code == 1001:  # Dify's wording of 1001
        assert r.json()["error_msg"].startswith("invalid Authorization header format")
    assert backend.filters == []


def test_invalid_bodies_are_422_in_difys_shape(dify) -> None:
    client, _ = dify
    for body, field in [
        ({k: v for k, v in DIFY_REQUEST.items() if k != "retrieval_setting"}, "retrieval_setting"),
        ({**DIFY_REQUEST, "query": "  "}, "query"),
        (
            {**DIFY_REQUEST, "retrieval_setting": {"top_k": 0, "score_threshold": 0}},
            "retrieval_setting.top_k",
        ),
        ({**DIFY_REQUEST, "retrieval_setting": {"top_k": 2, "score_threshold": 1.5}}, "score_threshold"),
        ({**DIFY_REQUEST, "rerank": True}, "rerank"),  # not Dify's: refused, not ignored
        (_condition({"name": "kind", "comparison_operator": "like", "value": "x"}), "comparison_operator"),
    ]:
        r = _post(client, body)
        assert r.status_code == 422 and r.json()["error_code"] == 422, (body, r.text)
        assert field in r.json()["error_msg"]
    r = _post(client, {**DIFY_REQUEST, "query": "長" * 2001})
    assert (r.status_code, r.json()["error_code"]) == (413, 413)


@pytest.mark.parametrize(
    ("conditions", "op", "filters"),
    [
        ([{"name": "kind", "comparison_operator": "is", "value": "faq"}], "and", {"kinds": ["faq"]}),
        ([{"name": ["source"], "comparison_operator": "in", "value": ["glossary.md", "x.md"]}], "and",
         {"sources": ["glossary.md", "x.md"]}),
        ([{"name": "lang", "comparison_operator": "in", "value": "ja, en"}], None, {"langs": ["en", "ja"]}),
        ([{"name": "tag", "comparison_operator": "contains", "value": "api"},
          {"name": "doc_id", "comparison_operator": "is", "value": "glossary"}], "and",
         {"tags": ["api"], "doc_ids": ["glossary"]}),
        ([{"name": "kind", "comparison_operator": "is", "value": "spec"},
          {"name": "kind", "comparison_operator": "is", "value": "faq"}], "or", {"kinds": ["faq", "spec"]}),
        ([{"name": "kind", "comparison_operator": "in", "value": ["spec", "faq"]},
          {"name": "kind", "comparison_operator": "is", "value": "faq"}], "and", {"kinds": ["faq"]}),
    ],
)  # fmt: skip
def test_metadata_conditions_map_onto_the_filters(dify, conditions, op, filters) -> None:
    client, backend = dify
    r = _post(client, _condition(*conditions, op=op))
    assert r.status_code == 200, r.text
    assert backend.filters == [filters]
    for rec in r.json()["records"]:
        assert rec["metadata"]["kind"] in filters.get("kinds", [rec["metadata"]["kind"]])


def test_conditions_narrow_a_profile_and_never_widen_it(dify) -> None:
    client, backend = dify
    faq = {"name": "kind", "comparison_operator": "is", "value": "faq"}
    body = {**DIFY_REQUEST, "metadata_condition": {"conditions": [faq]}}
    r = _post(client, body)  # specs-ja allows spec and glossary only: nothing can match
    assert (r.status_code, r.json()) == (200, {"records": []}) and backend.filters == []
    glossary = {**faq, "value": "glossary"}
    r = _post(client, {**DIFY_REQUEST, "metadata_condition": {"conditions": [glossary]}})
    assert [rec["metadata"]["doc_id"] for rec in r.json()["records"]] == ["glossary"]
    assert backend.filters == [{"kinds": ["glossary"], "langs": ["ja"]}]
    api = {"name": "tag", "comparison_operator": "is", "value": "api"}
    body = {**DIFY_REQUEST, "knowledge_id": "api-tagged", "metadata_condition": {"conditions": [api]}}
    assert _post(client, body).status_code == 200 and backend.filters[-1] == {"tags": ["api"]}


@pytest.mark.parametrize(
    ("conditions", "op", "says"),
    [
        ([{"name": "kind", "comparison_operator": "not in", "value": ["faq"]}], "and", "'not in' on 'kind'"),
        ([{"name": "kind", "comparison_operator": "is not", "value": "faq"}], "and", "'is not'"),
        ([{"name": "source", "comparison_operator": "start with", "value": "specs/"}], "and", "'start with'"),
        ([{"name": "kind", "comparison_operator": "contains", "value": "sp"}], "and", "'contains' on 'kind'"),
        ([{"name": "tag", "comparison_operator": "empty"}], "and", "'empty'"),
        ([{"name": "upload_date", "comparison_operator": "after", "value": "2024-01-01"}], "and",
         "'upload_date' cannot be filtered"),
        ([{"name": ["kind", "tag"], "comparison_operator": "is", "value": "x"}], "and", "exactly one"),
        ([{"name": "kind", "comparison_operator": "is", "value": 3}], "and", "must be a string"),
        ([{"name": "kind", "comparison_operator": "in", "value": []}], "and", "non-empty list"),
        ([{"name": "kind", "comparison_operator": "is", "value": "spec"},
          {"name": "lang", "comparison_operator": "is", "value": "ja"}], "or", "'or' across"),
        ([{"name": "tag", "comparison_operator": "is", "value": "api"},
          {"name": "tag", "comparison_operator": "is", "value": "billing"}], "and", "tag conditions"),
    ],
)  # fmt: skip
def test_conditions_that_cannot_be_honoured_are_refused(dify, conditions, op, says) -> None:
    client, backend = dify
    r = _post(client, _condition(*conditions, op=op))
    assert r.status_code == 400, r.text
    assert r.json()["error_code"] == 400 and says in r.json()["error_msg"]
    assert backend.filters == []


def test_a_refusal_names_the_fields_it_concerns(dify) -> None:
    client, _ = dify
    across = [{"name": "kind", "comparison_operator": "is", "value": "spec"},
              {"name": "lang", "comparison_operator": "is", "value": "ja"}]  # fmt: skip
    r = _post(client, _condition(*across, op="or"))
    assert r.json()["error_msg"].endswith("cannot be expressed: kind, lang"), r.text
    several = {"name": ["kind", "tag"], "comparison_operator": "is", "value": "x"}
    assert "kind" in _post(client, _condition(several)).json()["error_msg"]
    r = _post(client, {**DIFY_REQUEST, "rerank": True, "top_n": 3})  # every unknown field named
    assert "rerank" in r.json()["error_msg"] and "top_n" in r.json()["error_msg"]


def test_retrieval_is_in_the_openapi_document_with_difys_error_schema(dify) -> None:
    client, _ = dify
    op = client.get("/openapi.json").json()["paths"]["/retrieval"]["post"]
    assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "DifyRetrievalResponse"
    )
    refs = {
        op["responses"][s]["content"]["application/json"]["schema"]["$ref"] for s in ("401", "404", "422")
    }
    assert refs == {"#/components/schemas/DifyErrorResponse"}
