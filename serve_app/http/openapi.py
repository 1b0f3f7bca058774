"""The service's OpenAPI document: FastAPI's, completed at the app level for every route.

FastAPI documents a route's success and a generic validation error. ``install`` makes
``app.openapi()`` add what the service really answers, for any route included in the app, so a
new router needs no declaration beyond its own success model:

- **security**: the two ways to present a key (``Authorization: Bearer <key>``, ``X-API-Key``),
  on each operation with the scope ``security.required_scope`` asks for it; open routes get none;
- **errors**: the statuses an operation can get (401/403/429/503 where a key is needed, 400/413/422
  where it takes a body, 422 where it takes parameters, plus what the route declares with
  ``responses={404: {"description": ...}}``), each with the error schema of its path's shape
  (``errors.ERROR_SHAPE_BY_PREFIX``: default, OpenAI's, Dify's), in place of FastAPI's
  ``HTTPValidationError``; a route's own ``model`` for a status is kept;
- **headers**: ``X-Request-ID`` on every response, ``WWW-Authenticate`` on 401, ``Retry-After`` on 429;
- **tags**: one per router, its module's name (``routes/search.py`` → ``search``) where the route
  has none, described by the module's docstring.

``docs/openapi.json`` is this document as ``specrag openapi`` writes it (a unit test compares).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from typing import Any, cast

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic.json_schema import models_json_schema

from serve_app.http.errors import SHAPES, error_shape
from serve_app.http.security import required_scope

SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "BearerKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "`Authorization: Bearer <key>`; `specrag keys create NAME` makes a key. With no "
        "keys configured (the embedded default) the API is open.",
    },
    "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "The same key."},
}

# What each generic status means; a route's own description for the status wins.
STATUS_DESCRIPTIONS: dict[int, str] = {
    400: "The body could not be read (not UTF-8, not JSON, nested too deeply) or was rejected as a whole.",
    401: "No API key, an Authorization header that is not `Bearer <key>`, or an unknown key.",
    403: "The key lacks the scope this route needs.",
    404: "Not found.",
    409: "Conflicts with the stored state.",
    413: "The body, or a part of it, is over a limit; the message names the limit.",
    422: "The request does not match the schema; the body names each field and why.",
    429: "The key's rate limit is spent; Retry-After says when to try again.",
    503: "A dependency (model, vector store, indexer, reranker) is unavailable; the body names it.",
}

_HEADER = {"schema": {"type": "string"}, "required": True}
REQUEST_ID_HEADER = {
    **_HEADER,
    "description": "The request's id: the client's X-Request-ID if it is a plain token of at most "
    "128 characters, else a new one. Error bodies repeat it; the log has the details under it.",
}
STATUS_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {**_HEADER, "description": 'Bearer realm="specrag"'}},
    429: {"Retry-After": {**_HEADER, "description": "Seconds until the key may be used again."}},
}


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` (served at ``/openapi.json``, read by ``/docs``) the completed document."""

    def openapi() -> dict[str, Any]:
        if not getattr(app.state, "openapi_completed", False):
            complete(FastAPI.openapi(app), app.routes)
            app.state.openapi_completed = True
        return cast(dict[str, Any], app.openapi_schema)

    app.openapi = openapi  # type: ignore[method-assign]


def generic_statuses(route: Any, scope: str | None) -> list[int]:
    """The error statuses any route like this one (a FastAPI route context) can get, whatever it does."""
    statuses: set[int] = set()
    if scope is not None:
        statuses |= {401, 403, 429, 503}  # the key checks; a keyed route reaches the backend
    if route.body_field is not None:
        statuses |= {400, 413, 422}  # unreadable body, the size limit, validation
    elif route.dependant.path_params or route.dependant.query_params or route.dependant.header_params:
        statuses.add(422)
    return sorted(statuses)


def complete(doc: dict[str, Any], routes: Sequence[Any]) -> dict[str, Any]:
    """Add security, error responses, headers and tags to FastAPI's ``doc`` (in place)."""
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    refs, defs = models_json_schema(
        [(model, "serialization") for model in SHAPES.values()], ref_template="#/components/schemas/{model}"
    )
    schemas.update(defs.get("$defs", {}))
    shape_refs = {name: refs[(model, "serialization")] for name, model in SHAPES.items()}
    components["securitySchemes"] = SECURITY_SCHEMES
    tags: dict[str, str] = {}
    for route in iter_route_contexts(routes):  # an included router's routes, with its prefix and tags
        if not isinstance(route.original_route, APIRoute) or not route.include_in_schema:
            continue
        path, tag = str(route.path_format), _router_tag(route)
        if not route.tags:
            tags.setdefault(tag, _module_summary(route))
        for method in sorted(route.methods or ()):
            op = doc["paths"][path][method.lower()]
            if not route.tags:
                op["tags"] = [tag]
            _complete_operation(op, route, method, shape_refs[error_shape(path)])
    doc["tags"] = [*doc.get("tags", []), *({"name": n, "description": d} for n, d in tags.items())]
    fastapis = ("HTTPValidationError", "ValidationError")
    generic = {name: schemas.pop(name) for name in fastapis if name in schemas}
    if any(f'"#/components/schemas/{name}"' in json.dumps(doc) for name in generic):
        schemas.update(generic)  # a route still refers to FastAPI's own
    return doc


def _complete_operation(op: dict[str, Any], route: Any, method: str, error_ref: dict[str, Any]) -> None:
    scope = required_scope(method, route.path_format)
    op["security"] = [{"BearerKey": [scope]}, {"ApiKeyHeader": [scope]}] if scope else []
    if scope:
        op["x-required-scope"] = scope
    responses: dict[str, Any] = op.setdefault("responses", {})
    declared = {int(s) for s in responses if s.isdigit() and int(s) >= 400}
    for status in sorted(declared | set(generic_statuses(route, scope))):
        response = responses.setdefault(str(status), {})
        fastapis = "HTTPValidationError" in json.dumps(response)
        if fastapis or "content" not in response:  # FastAPI's 422, or a status with a description only
            response["content"] = {"application/json": {"schema": error_ref}}
            if fastapis or not response.get("description"):
                response["description"] = STATUS_DESCRIPTIONS.get(status, "Refused.")
        response.setdefault("headers", {}).update(STATUS_HEADERS.get(status, {}))
    for response in responses.values():
        response.setdefault("headers", {})["X-Request-ID"] = REQUEST_ID_HEADER


def _router_tag(route: Any) -> str:
    return route.endpoint.__module__.rsplit(".", 1)[-1]


def _module_summary(route: Any) -> str:
    module = inspect.getmodule(route.endpoint)
    return ((module.__doc__ if module else None) or "").strip().split("\n\n")[0].replace("\n", " ")
