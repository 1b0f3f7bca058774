"""The OpenAPI document: committed as docs/openapi.json, and complete for every route — security
per scope, the real error schemas of each path's shape, the request-id header, a tag per router."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest
from fastapi import APIRouter, FastAPI

from serve_app.cli.openapi import DEFAULT_OUT, document
from serve_app.http import errors, openapi
from serve_app.http.app import Backend, create_app
from serve_app.http.security import required_scope
from serve_app.settings import Settings

COMMITTED = Path(__file__).parents[3] / DEFAULT_OUT
SHAPE_SCHEMA = {"default": "ErrorResponse", "openai": "OpenAIErrorResponse", "dify": "DifyErrorResponse"}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return create_app(Settings(), cast(Backend, None)).openapi()


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, ops in doc["paths"].items() for method, op in ops.items()]


def test_docs_openapi_json_is_what_the_app_serves() -> None:
    generated = document(Settings())
    committed = COMMITTED.read_text(encoding="utf-8") if COMMITTED.exists() else ""
    if committed != generated:
        pytest.fail(
            f"{DEFAULT_OUT} differs from the app's OpenAPI document: run `specrag openapi` "
            "(it rewrites docs/openapi.json) and commit the result",
            pytrace=False,
        )


def test_every_operation_declares_the_security_its_scope_needs(doc) -> None:
    schemes = doc["components"]["securitySchemes"]
    assert schemes["BearerKey"] == {**schemes["BearerKey"], "type": "http", "scheme": "bearer"}
    assert schemes["ApiKeyHeader"] == {**schemes["ApiKeyHeader"], "in": "header", "name": "X-API-Key"}
    for path, method, op in _operations(doc):
        scope = required_scope(method.upper(), path)
        if scope is None:
            assert op["security"] == [] and "401" not in op["responses"], path
        else:
            assert op["security"] == [{"BearerKey": [scope]}, {"ApiKeyHeader": [scope]}], path
            assert {"401", "403", "429"} <= set(op["responses"]), path
            assert op["responses"]["401"]["headers"]["WWW-Authenticate"]["required"]
            assert op["responses"]["429"]["headers"]["Retry-After"]["required"]
    assert required_scope("GET", "/healthz") is None and doc["paths"]["/healthz"]["get"]["security"] == []


def test_errors_have_the_schema_of_their_path_shape_not_fastapis(doc) -> None:
    assert "HTTPValidationError" not in json.dumps(doc)
    assert "ValidationError" not in doc["components"]["schemas"]
    seen = set()
    for path, _method, op in _operations(doc):
        shape = errors.error_shape(path)
        for status, response in op["responses"].items():
            assert response["headers"]["X-Request-ID"]["required"], (path, status)
            if int(status) < 400 or path.startswith("/readyz"):  # a 503 readiness report, not an error
                continue
            ref = response["content"]["application/json"]["schema"]["$ref"]
            assert ref == f"#/components/schemas/{SHAPE_SCHEMA[shape]}", (path, status)
            seen.add(shape)
        if "requestBody" in op:
            assert {"400", "413", "422"} <= set(op["responses"]), path
    assert {"default", "openai"} <= seen
    assert doc["paths"]["/v1/embeddings"]["post"]["responses"]["404"]["description"].startswith("`model`")
    readyz = doc["paths"]["/readyz"]["get"]["responses"]
    assert readyz["503"]["content"]["application/json"]["schema"]["$ref"].endswith("/ReadinessResponse")


def test_every_operation_is_tagged_by_its_router(doc) -> None:
    names = {t["name"] for t in doc["tags"]}
    for path, _method, op in _operations(doc):
        assert op["tags"] and set(op["tags"]) <= names, path
    assert doc["paths"]["/v1/search"]["post"]["tags"] == ["search"]


def test_a_router_added_later_is_covered_without_declaring_anything(monkeypatch) -> None:
    """The contract is the app's: a new router (here with its own error shape by path prefix)
    gets security, error schemas, headers and a tag from ``openapi.complete`` alone."""
    monkeypatch.setitem(errors.ERROR_SHAPE_BY_PREFIX, "/v1/extra", "openai")
    router = APIRouter()

    @router.post("/v1/extra/things")
    async def things(body: dict[str, int]) -> dict[str, int]:
        return body

    app = FastAPI()
    app.include_router(router)
    openapi.install(app)
    op = app.openapi()["paths"]["/v1/extra/things"]["post"]
    assert op["security"][0] == {"BearerKey": ["admin"]} and op["tags"] == [__name__.rsplit(".", 1)[-1]]
    assert set(op["responses"]) == {"200", "400", "401", "403", "413", "422", "429", "503"}
    assert op["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/OpenAIErrorResponse"
    )
