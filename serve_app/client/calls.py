"""Every API call as data (method, path, body, how its answer is read, whether it may be resent),
shared by the sync and the async client so the two cannot drift apart; and the retry policy.

Retries use ``tenacity`` (already a dependency of the service, well kept, sync and async alike)
rather than httpx's transport retries, which only repeat failed *connects* and never a 503.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote, urlsplit

import httpx
from tenacity import retry_if_exception, stop_after_attempt, wait_exponential_jitter

from serve_app.client.errors import (
    ApiError,
    ConnectionFailed,
    RequestTimeout,
    ServiceUnavailable,
    TransportError,
    error_for,
)
from serve_app.client.models import (
    Channel,
    DeleteResponse,
    Document,
    DocumentInfo,
    DocumentsResponse,
    EmbedResponse,
    Filters,
    Readiness,
    SearchResponse,
    SourceStatus,
)

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8000"
FiltersLike = Filters | Mapping[str, Sequence[str]]
DocumentLike = Document | Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request. ``safe``: it writes nothing, so a repeat has the effect and the answer of one
    call; it is retried on 503 and on any connection error. A write (upsert, delete) is idempotent
    in what it stores but not in what it reports: a repeat after a first attempt that did its work
    calls the document "unchanged" or answers ``deleted: 0``; so a write is resent only when it
    never reached the server. ``ok``: statuses whose body is the answer."""

    method: str
    path: str
    parse: Callable[[Any], T]
    json: dict[str, Any] | None = None
    safe: bool = True
    ok: tuple[int, ...] = (200,)

    def read(self, response: httpx.Response) -> T:
        if response.status_code not in self.ok:
            raise error_for(response)
        try:
            body = response.json()
        except ValueError:  # not the service (a proxy's page?): say so instead of a JSON traceback
            raise ApiError(response.status_code, "the answer is not JSON", response.text[:300]) from None
        return self.parse(body)


def resolve_url(base_url: str | None) -> str:
    """The argument, else ``SPECRAG_URL``, else the local default; only http(s) URLs."""
    url = (base_url or os.environ.get("SPECRAG_URL") or DEFAULT_URL).rstrip("/")
    if urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"base URL must start with http:// or https://, not {url!r}")
    return url


def auth_headers(api_key: str | None) -> dict[str, str]:
    """``Authorization: Bearer`` from the argument, else ``SPECRAG_API_KEY``; none if neither is set."""
    key = api_key if api_key is not None else os.environ.get("SPECRAG_API_KEY", "")
    return {"Authorization": f"Bearer {key}"} if key else {}


def transport_error(exc: httpx.TransportError) -> TransportError:
    """httpx's failure as the client's; ``sent`` is False only where the request surely never left."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return ConnectionFailed(f"cannot reach the service: {exc}", sent=False)
    if isinstance(exc, httpx.TimeoutException):
        return RequestTimeout(f"no answer within the timeout: {exc}", sent=True)
    return ConnectionFailed(f"connection failed: {exc}", sent=True)


def retry_policy(call: Call[Any], retries: int, backoff: float) -> dict[str, Any]:
    """tenacity arguments: exponential back-off from ``backoff`` seconds (doubling, at most 4 s) plus
    up to ``backoff`` of jitter, so clients that failed together do not return together; the last
    error re-raised as itself. A timeout and every 4xx are never retried."""

    def retryable(exc: BaseException) -> bool:
        if isinstance(exc, ConnectionFailed):
            return call.safe or not exc.sent
        return isinstance(exc, ServiceUnavailable) and call.safe

    return {
        "retry": retry_if_exception(retryable),
        "stop": stop_after_attempt(retries + 1),
        "wait": wait_exponential_jitter(initial=backoff, max=4.0, jitter=backoff),
        "reraise": True,
    }


# ------------------------------------------------------------------------------------- the calls


def search(
    query: str,
    *,
    top_k: int | None = None,
    filters: FiltersLike | None = None,
    channels: Sequence[Channel] | None = None,
    rerank: bool | None = None,
    expand: bool = True,
    explain: bool = False,
) -> Call[SearchResponse]:
    """``None`` leaves a field to the service's default (settings ``search.*``)."""
    body: dict[str, Any] = {"query": query, "expand": expand, "explain": explain}
    if top_k is not None:
        body["top_k"] = top_k
    if filters is not None:
        body["filters"] = as_filters(filters).model_dump(exclude_none=True)
    if channels is not None:
        body["channels"] = list(channels)
    if rerank is not None:
        body["rerank"] = rerank
    return Call("POST", "/v1/search", SearchResponse.model_validate, body)


@dataclass(frozen=True, slots=True)
class SearchOptions:
    """A retriever's search options (every query); ``dataclasses.replace`` overrides one call's,
    and refuses an option that does not exist."""

    top_k: int | None = None
    filters: FiltersLike | None = None
    channels: Sequence[Channel] | None = None
    rerank: bool | None = None
    expand: bool = True

    def __post_init__(self) -> None:
        if self.top_k is not None and not 1 <= self.top_k <= 100:
            raise ValueError("top_k must be between 1 and 100")
        if self.filters is not None:
            object.__setattr__(self, "filters", as_filters(self.filters))

    def call(self, query: str) -> Call[SearchResponse]:
        return search(
            query,
            top_k=self.top_k,
            filters=self.filters,
            channels=self.channels,
            rerank=self.rerank,
            expand=self.expand,
        )


def as_filters(filters: FiltersLike) -> Filters:
    """A mapping is validated here, so an unknown filter name fails before the request is sent."""
    return filters if isinstance(filters, Filters) else Filters.model_validate(dict(filters))


def embed(
    input: str | Sequence[str],
    *,
    input_type: Literal["query", "passage"] = "passage",
    return_dense: bool = True,
    return_sparse: bool = False,
    return_colbert: bool = False,
    return_tokens: bool = False,
) -> Call[EmbedResponse]:
    body = {
        "input": input if isinstance(input, str) else list(input),
        "input_type": input_type,
        "return_dense": return_dense,
        "return_sparse": return_sparse,
        "return_colbert": return_colbert,
        "return_tokens": return_tokens,
    }
    return Call("POST", "/v1/embed", EmbedResponse.model_validate, body)


def upsert_documents(documents: Sequence[DocumentLike]) -> Call[DocumentsResponse]:
    docs = [Document.model_validate(d).model_dump(exclude_unset=True) for d in documents]
    return Call("POST", "/v1/documents", DocumentsResponse.model_validate, {"documents": docs}, safe=False)


def _document_path(doc_id: str) -> str:
    if not doc_id:
        raise ValueError("doc_id must not be empty")
    return "/v1/documents/" + quote(doc_id, safe="/")


def get_document(doc_id: str) -> Call[DocumentInfo]:
    return Call("GET", _document_path(doc_id), DocumentInfo.model_validate)


def delete_document(doc_id: str) -> Call[DeleteResponse]:
    """Deleting twice answers ``deleted: 0`` the second time: a write, not resent once sent."""
    return Call("DELETE", _document_path(doc_id), DeleteResponse.model_validate, safe=False)


def _source_path(name: str) -> str:
    if not name or "/" in name:
        raise ValueError(f"not a source name: {name!r}")
    return "/v1/sources/" + quote(name, safe="")


def sync_source(
    name: str, commit: str | None = None, *, full: bool = False, wait: bool = False
) -> Call[SourceStatus]:
    """Trigger a sync of a registered git source (what a CI job or a git hook calls): 202 at once,
    or 200 with the sync's ``report`` when ``wait``. A repeat for a commit already synced changes
    nothing, but it is a write: resent only when it never reached the server."""
    body: dict[str, Any] = {"full": full, "wait": wait}
    if commit is not None:
        body["commit"] = commit
    return Call(
        "POST", _source_path(name) + "/sync", SourceStatus.model_validate, body, safe=False, ok=(200, 202)
    )


def source_status(name: str) -> Call[SourceStatus]:
    return Call("GET", _source_path(name), SourceStatus.model_validate)


def health() -> Call[dict[str, Any]]:
    return Call("GET", "/healthz", dict)


def ready() -> Call[Readiness]:
    """503 (unhealthy, not initialized) is an answer here, not an error: the body says why."""
    return Call("GET", "/readyz", Readiness.model_validate, ok=(200, 503))
