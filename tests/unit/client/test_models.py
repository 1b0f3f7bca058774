"""The client's wire models against the server's schemas: the same field names on both sides, and
every request field the server takes reachable from the client's calls."""

from __future__ import annotations

import inspect

import pytest
from pydantic import BaseModel

from serve_app.client import calls, models
from serve_app.http import schemas

PAIRS = [
    (models.Filters, schemas.SearchFilters),
    (models.Document, schemas.DocumentIn),
    (models.SearchResult, schemas.SearchResult),
    (models.SearchResponse, schemas.SearchResponse),
    (models.QueryVariant, schemas.QueryVariant),
    (models.Embedding, schemas.Embedding),
    (models.EmbedResponse, schemas.EmbedResponse),
    (models.DocumentsResponse, schemas.DocumentsResponse),
    (models.DocumentFailure, schemas.DocumentFailure),
    (models.DocumentInfo, schemas.DocumentInfo),
    (models.DeleteResponse, schemas.DeleteResponse),
    (models.Readiness, schemas.ReadinessResponse),
    (models.SyncFiles, schemas.SyncFiles),
    (models.SyncOutcome, schemas.SyncOutcome),
    (models.SourceStatus, schemas.SourceStatus),
]


@pytest.mark.parametrize(("mine", "theirs"), PAIRS, ids=[m.__name__ for m, _ in PAIRS])
def test_the_client_names_the_servers_fields(mine: type[BaseModel], theirs: type[BaseModel]) -> None:
    assert set(mine.model_fields) == set(theirs.model_fields)


@pytest.mark.parametrize(
    ("call", "request_model", "positional"),
    [(calls.search, schemas.SearchRequest, "query"), (calls.embed, schemas.EmbedRequest, "input")],
)
def test_every_request_field_is_a_parameter(call, request_model: type[BaseModel], positional: str) -> None:
    params = set(inspect.signature(call).parameters)
    assert params == set(request_model.model_fields), params ^ set(request_model.model_fields)
    assert next(iter(inspect.signature(call).parameters)) == positional
