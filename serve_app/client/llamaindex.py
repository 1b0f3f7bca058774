"""A LlamaIndex retriever over the service's ``/v1/search`` (extra ``specrag[llamaindex]``).

Each result becomes a ``NodeWithScore``: a ``TextNode`` whose id is the chunk id, whose text is
the chunk's and whose metadata holds every other result field (doc_id, title, title_path, source,
kind, tags, lang, score, scores, rank, version, updated_at), with the result's score. The node's
``ref_doc_id`` is the document's id, so LlamaIndex groups chunks of one document.
"""

from __future__ import annotations

from collections.abc import Sequence

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import NodeRelationship, NodeWithScore, QueryBundle, RelatedNodeInfo, TextNode

from serve_app.client.calls import FiltersLike, SearchOptions
from serve_app.client.client import AsyncSpecragClient, SpecragClient
from serve_app.client.models import Channel, SearchResponse

# Shown to the LLM with the text; the rest (scores, ids, version) stays out of the prompt.
_LLM_KEYS = ("title", "title_path", "source", "kind", "lang", "tags")


def to_nodes(response: SearchResponse) -> list[NodeWithScore]:
    nodes = []
    for r in response.results:
        metadata = r.metadata()
        node = TextNode(
            id_=r.chunk_id,
            text=r.text,
            metadata=metadata,
            excluded_llm_metadata_keys=[k for k in metadata if k not in _LLM_KEYS],
            excluded_embed_metadata_keys=list(metadata),
            relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=r.doc_id)},
        )
        nodes.append(NodeWithScore(node=node, score=r.score))
    return nodes


class SpecragLlamaIndexRetriever(BaseRetriever):
    """``SpecragLlamaIndexRetriever(base_url=..., api_key=..., top_k=5, filters={"langs": ["ja"]})``.

    Without ``base_url``/``api_key`` the client reads ``SPECRAG_URL``/``SPECRAG_API_KEY``; pass
    ``client``/``async_client`` to share them (an ``async_client`` on one event loop; without one,
    each async call opens its own). Options apply to every query of this retriever.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        top_k: int | None = None,
        filters: FiltersLike | None = None,
        channels: Sequence[Channel] | None = None,
        rerank: bool | None = None,
        expand: bool = True,
        timeout: float = 30.0,
        client: SpecragClient | None = None,
        async_client: AsyncSpecragClient | None = None,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        super().__init__(callback_manager=callback_manager, verbose=verbose)
        self.options = SearchOptions(top_k, filters, channels, rerank, expand)
        self._base_url, self._api_key, self._timeout = base_url, api_key, timeout
        self._client, self._async_client = client, async_client

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        if self._client is None:
            self._client = SpecragClient(self._base_url, self._api_key, timeout=self._timeout)
        return to_nodes(self._client.send(self.options.call(query_bundle.query_str)))

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        call = self.options.call(query_bundle.query_str)
        if self._async_client is not None:
            return to_nodes(await self._async_client.send(call))
        # An httpx.AsyncClient belongs to the event loop it first ran on: ours lives for one call.
        async with AsyncSpecragClient(self._base_url, self._api_key, timeout=self._timeout) as client:
            return to_nodes(await client.send(call))
