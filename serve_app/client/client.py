"""``SpecragClient`` and ``AsyncSpecragClient``: the service's HTTP API as typed Python calls.

Both build their requests with ``calls.py`` and differ only in how they send them. The URL comes
from the argument, else ``SPECRAG_URL``; the API key from the argument, else ``SPECRAG_API_KEY``.
Reads are retried on 503 and connection errors; see ``calls.Call`` for why writes are not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import httpx
from tenacity import AsyncRetrying, Retrying

import serve_app.client.calls as calls
from serve_app.client.calls import Call, DocumentLike, FiltersLike
from serve_app.client.models import (
    Channel,
    DeleteResponse,
    DocumentInfo,
    DocumentsResponse,
    EmbedResponse,
    Readiness,
    SearchResponse,
    SourceStatus,
)

T = TypeVar("T")


class _Base:
    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        retries: int,
        backoff: float,
        headers: Mapping[str, str] | None,
    ) -> None:
        if retries < 0 or backoff < 0:
            raise ValueError("retries and backoff must be >= 0")
        self.base_url = calls.resolve_url(base_url)
        self.retries, self.backoff = retries, backoff
        self.headers = {**calls.auth_headers(api_key), **(headers or {})}


class SpecragClient(_Base):
    """Synchronous client; use it as a context manager or call ``close()``.

    ``transport``: an httpx transport (an ``httpx.MockTransport`` in tests, an ASGI transport to
    call an app in-process). ``retries``: how many times a retryable failure is repeated (0: never);
    ``backoff``: the first wait in seconds, doubling (``calls.retry_policy``).
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = 30.0,
        retries: int = 3,
        backoff: float = 0.25,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, retries, backoff, headers)
        self._http = httpx.Client(
            base_url=self.base_url, headers=self.headers, timeout=timeout, transport=transport
        )

    def _once(self, call: Call[T]) -> T:
        try:
            response = self._http.request(call.method, call.path, json=call.json)
        except httpx.TransportError as exc:
            raise calls.transport_error(exc) from exc
        return call.read(response)

    def send(self, call: Call[T]) -> T:
        """Send a prepared call (``calls.search(...)``, ``SearchOptions.call``) with its retries."""
        return Retrying(**calls.retry_policy(call, self.retries, self.backoff))(self._once, call)

    def search(
        self,
        query: str,
        *,
        top_k: int | None = None,
        filters: FiltersLike | None = None,
        channels: Sequence[Channel] | None = None,
        rerank: bool | None = None,
        expand: bool = True,
        explain: bool = False,
    ) -> SearchResponse:
        """``POST /v1/search``; ``filters``: a ``Filters`` or a mapping such as ``{"kinds": ["spec"]}``."""
        return self.send(
            calls.search(
                query,
                top_k=top_k,
                filters=filters,
                channels=channels,
                rerank=rerank,
                expand=expand,
                explain=explain,
            )
        )

    def embed(
        self,
        input: str | Sequence[str],
        *,
        input_type: Literal["query", "passage"] = "passage",
        return_dense: bool = True,
        return_sparse: bool = False,
        return_colbert: bool = False,
        return_tokens: bool = False,
    ) -> EmbedResponse:
        """``POST /v1/embed``; an invalid item comes back with ``error`` set, the others embedded."""
        return self.send(
            calls.embed(
                input,
                input_type=input_type,
                return_dense=return_dense,
                return_sparse=return_sparse,
                return_colbert=return_colbert,
                return_tokens=return_tokens,
            )
        )

    def upsert_documents(self, documents: Sequence[DocumentLike]) -> DocumentsResponse:
        """``POST /v1/documents``: ``Document``s or mappings of its fields."""
        return self.send(calls.upsert_documents(documents))

    def get_document(self, doc_id: str) -> DocumentInfo:
        """``GET /v1/documents/{doc_id}``; raises ``NotFound`` for an unknown id."""
        return self.send(calls.get_document(doc_id))

    def delete_document(self, doc_id: str) -> DeleteResponse:
        return self.send(calls.delete_document(doc_id))

    def sync_source(
        self, name: str, commit: str | None = None, *, full: bool = False, wait: bool = False
    ) -> SourceStatus:
        """``POST /v1/sources/{name}/sync``: a registered git source to ``commit`` (default its ref)."""
        return self.send(calls.sync_source(name, commit, full=full, wait=wait))

    def source_status(self, name: str) -> SourceStatus:
        """``GET /v1/sources/{name}``: the last synced commit and the newest trigger's state."""
        return self.send(calls.source_status(name))

    def health(self) -> dict[str, Any]:
        """``GET /healthz``: the ingress answers."""
        return self.send(calls.health())

    def ready(self) -> Readiness:
        """``GET /readyz``: ``.ready`` and per-dependency ``checks``, for 200 and 503 alike."""
        return self.send(calls.ready())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncSpecragClient(_Base):
    """The same calls as ``SpecragClient``, awaited; ``async with`` it or ``await aclose()``."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = 30.0,
        retries: int = 3,
        backoff: float = 0.25,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, retries, backoff, headers)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=self.headers, timeout=timeout, transport=transport
        )

    async def _once(self, call: Call[T]) -> T:
        try:
            response = await self._http.request(call.method, call.path, json=call.json)
        except httpx.TransportError as exc:
            raise calls.transport_error(exc) from exc
        return call.read(response)

    async def send(self, call: Call[T]) -> T:
        return await AsyncRetrying(**calls.retry_policy(call, self.retries, self.backoff))(self._once, call)

    async def search(
        self,
        query: str,
        *,
        top_k: int | None = None,
        filters: FiltersLike | None = None,
        channels: Sequence[Channel] | None = None,
        rerank: bool | None = None,
        expand: bool = True,
        explain: bool = False,
    ) -> SearchResponse:
        return await self.send(
            calls.search(
                query,
                top_k=top_k,
                filters=filters,
                channels=channels,
                rerank=rerank,
                expand=expand,
                explain=explain,
            )
        )

    async def embed(
        self,
        input: str | Sequence[str],
        *,
        input_type: Literal["query", "passage"] = "passage",
        return_dense: bool = True,
        return_sparse: bool = False,
        return_colbert: bool = False,
        return_tokens: bool = False,
    ) -> EmbedResponse:
        return await self.send(
            calls.embed(
                input,
                input_type=input_type,
                return_dense=return_dense,
                return_sparse=return_sparse,
                return_colbert=return_colbert,
                return_tokens=return_tokens,
            )
        )

    async def upsert_documents(self, documents: Sequence[DocumentLike]) -> DocumentsResponse:
        return await self.send(calls.upsert_documents(documents))

    async def get_document(self, doc_id: str) -> DocumentInfo:
        return await self.send(calls.get_document(doc_id))

    async def delete_document(self, doc_id: str) -> DeleteResponse:
        return await self.send(calls.delete_document(doc_id))

    async def sync_source(
        self, name: str, commit: str | None = None, *, full: bool = False, wait: bool = False
    ) -> SourceStatus:
        return await self.send(calls.sync_source(name, commit, full=full, wait=wait))

    async def source_status(self, name: str) -> SourceStatus:
        return await self.send(calls.source_status(name))

    async def health(self) -> dict[str, Any]:
        return await self.send(calls.health())

    async def ready(self) -> Readiness:
        return await self.send(calls.ready())

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
