"""A LangChain retriever over the service's ``/v1/search`` (extra ``specrag[langchain]``).

Each result becomes a ``Document`` whose ``page_content`` is the chunk's text, whose ``id`` is the
chunk id and whose ``metadata`` holds every other result field (doc_id, chunk_id, title,
title_path, source, kind, tags, lang, score, scores, rank, version, updated_at), so a chain can
cite and filter without a second call. Search options set on the retriever apply to every
query; ``invoke(query, filters=..., top_k=...)`` overrides them for one call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field

from serve_app.client.calls import FiltersLike, SearchOptions
from serve_app.client.client import AsyncSpecragClient, SpecragClient
from serve_app.client.models import Channel, SearchResponse


def to_documents(response: SearchResponse) -> list[Document]:
    return [Document(page_content=r.text, metadata=r.metadata(), id=r.chunk_id) for r in response.results]


class SpecragLangChainRetriever(BaseRetriever):
    """``SpecragLangChainRetriever(base_url=..., api_key=..., top_k=5, filters={"kinds": ["spec"]})``.

    Without ``base_url``/``api_key`` the client reads ``SPECRAG_URL``/``SPECRAG_API_KEY``. Pass
    ``client``/``async_client`` to share connections (or a mock transport) with other code; an
    ``async_client`` must then be used on one event loop. Without one, each async call opens its own.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    base_url: str | None = None
    api_key: str | None = Field(default=None, repr=False)
    timeout: float = 30.0
    top_k: int | None = Field(default=None, ge=1, le=100, description="None: the service's search.top_k")
    filters: FiltersLike | None = None
    channels: Sequence[Channel] | None = None
    rerank: bool | None = None
    expand: bool = True
    client: SpecragClient | None = Field(default=None, exclude=True)
    async_client: AsyncSpecragClient | None = Field(default=None, exclude=True)

    def _options(self, overrides: dict[str, Any]) -> SearchOptions:
        """The retriever's options with one call's overrides (an unknown name is a TypeError)."""
        options = SearchOptions(self.top_k, self.filters, self.channels, self.rerank, self.expand)
        return dataclasses.replace(options, **overrides)

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **overrides: Any
    ) -> list[Document]:
        if self.client is None:
            self.client = SpecragClient(self.base_url, self.api_key, timeout=self.timeout)
        return to_documents(self.client.send(self._options(overrides).call(query)))

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **overrides: Any
    ) -> list[Document]:
        call = self._options(overrides).call(query)
        if self.async_client is not None:
            return to_documents(await self.async_client.send(call))
        # An httpx.AsyncClient belongs to the event loop it first ran on; one of ours lives for one
        # call, so ``asyncio.run(retriever.ainvoke(...))`` can be repeated.
        async with AsyncSpecragClient(self.base_url, self.api_key, timeout=self.timeout) as client:
            return to_documents(await client.send(call))
