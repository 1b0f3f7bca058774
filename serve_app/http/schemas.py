"""Wire schemas of the HTTP API, apart from the logic that fills them."""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_SURROGATE = re.compile("[\ud800-\udfff]")


def surrogate_at(text: str) -> int | None:
    """Where ``text`` holds a lone UTF-16 surrogate (JSON ``"\\ud800"`` parses to one; a pair
    becomes one character). Such a string cannot be encoded as UTF-8, so no tokenizer, cache key
    or Milvus field can take it: it is refused at the door with its position."""
    found = _SURROGATE.search(text)
    return found.start() if found else None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")
    per_item_fields: ClassVar[tuple[str, ...]] = ()  # checked item by item by the endpoint instead

    @model_validator(mode="after")
    def _valid_unicode(self) -> _Strict:
        for name, value in self:
            if name in self.per_item_fields:
                continue
            for text in value if isinstance(value, list) else [value]:
                if isinstance(text, str) and (at := surrogate_at(text)) is not None:
                    raise ValueError(f"{name}: lone UTF-16 surrogate at character {at}; send valid Unicode")
        return self


class SearchFilters(_Strict):
    kinds: list[str] | None = Field(
        default=None, description="Only these document kinds (spec, glossary, ...)."
    )
    langs: list[Literal["ja", "en"]] | None = None
    tags: list[str] | None = Field(default=None, description="Chunks carrying any of these tags.")
    doc_ids: list[str] | None = None
    sources: list[str] | None = Field(default=None, description="Only chunks from these sources.")


class SearchRequest(_Strict):
    query: str = Field(
        description="The question, in Japanese, English or both.", examples=["認証トークンの有効期限は？"]
    )
    top_k: int | None = Field(default=None, ge=1, le=100, description="Default: search.top_k (10).")
    filters: SearchFilters | None = None
    channels: list[Literal["dense", "sparse"]] = Field(default=["dense", "sparse"], min_length=1)
    rerank: bool | None = Field(default=None, description="ColBERT rerank; default from settings.")
    expand: bool = Field(default=True, description="Use query variants from the expander.")
    explain: bool = Field(
        default=False,
        description="Add which variant and channel found each result, every search of the fan-out "
        "with its timing, and the expander's state.",
    )

    @field_validator("query")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("query must contain non-whitespace text")
        return value


class SearchResult(BaseModel):
    rank: int
    chunk_id: str
    doc_id: str
    version: int
    title: str
    title_path: list[str]
    text: str
    lang: str
    kind: str
    source: str
    tags: list[str]
    score: float = Field(description="The score the results are ordered by (rerank if on, else RRF).")
    scores: dict[str, float] = Field(
        description="Every score that went into the rank: dense, sparse, rrf, ..."
    )
    found_by: list[dict[str, Any]] = Field(
        default_factory=list,
        description="With explain: variant, channel and rank of every list that found it.",
    )
    updated_at: int = Field(default=0, description="When this version of the document was written (epoch s).")


class QueryVariant(BaseModel):
    text: str
    lang: str
    origin: str = Field(description="original | llm | glossary")
    terms: list[list[str]] | None = Field(
        default=None, description="glossary: the [term, replacement] pairs swapped"
    )


class SearchResponse(BaseModel):
    query: str
    results: list[SearchResult]
    variants: list[QueryVariant]
    timings_ms: dict[str, float]
    model: str
    degraded: list[str] = Field(
        default_factory=list, description="Stages that failed and were skipped (expander, rerank)."
    )
    explain: dict[str, Any] | None = Field(default=None, description="Present when the request set explain.")


class EmbedRequest(_Strict):
    per_item_fields: ClassVar[tuple[str, ...]] = ("input",)
    input: list[Any] | str = Field(
        description="One text or a list of texts; invalid items are reported per item."
    )
    input_type: Literal["query", "passage"] = "passage"
    return_dense: bool = True
    return_sparse: bool = False
    return_colbert: bool = False
    return_tokens: bool = Field(default=False, description="Also give sparse weights keyed by token string.")

    def texts(self) -> list[Any]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class Embedding(BaseModel):
    index: int
    dense: list[float] | None = None
    sparse: dict[str, float] | None = Field(default=None, description="token id -> weight")
    sparse_tokens: dict[str, float] | None = Field(default=None, description="token string -> weight")
    colbert: list[list[float]] | None = None
    tokens: int = Field(default=0, description="tokens the model read (0 when served from the cache)")
    truncated: bool = Field(default=False, description="cut at a sentence end to fit the model's max length")
    cached: str | None = Field(default=None, description="lru | redis when served from a cache")
    error: str | None = Field(
        default=None, description="why this item has no vectors; the others are unaffected"
    )


class EmbedResponse(BaseModel):
    model: str
    data: list[Embedding]
    usage: dict[str, int]
    timings_ms: dict[str, float] = Field(default_factory=dict)


class OpenAIEmbeddingRequest(BaseModel):
    """OpenAI ``POST /v1/embeddings``; unknown fields are ignored as OpenAI-compatible servers do."""

    input: str | list[str] = Field(
        description="A string or a list of strings (token arrays are not accepted)."
    )
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, description="Must equal the model's dimension if given.")
    user: str | None = None


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str
    truncated: bool = False


class OpenAIEmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: dict[str, int]


# ------------------------------------------------------------------------------------ documents


class DocumentIn(_Strict):
    doc_id: str = Field(
        min_length=1, max_length=512, description="Stable id; a repeat creates a new version."
    )
    text: str = Field(description="The whole document (Markdown or plain text).")
    format: Literal["markdown", "text"] = "markdown"
    title: str = Field(default="", max_length=2048)
    lang: Literal["ja", "en"] | None = Field(default=None, description="None = detected per chunk.")
    kind: Literal["spec", "glossary", "api", "design", "faq", "other"] = "other"
    source: str = Field(default="", max_length=2048, description="Path or URL shown with results.")
    tags: list[str] = Field(default_factory=list, max_length=64)

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("text must contain non-whitespace text")
        return value


class DocumentsRequest(_Strict):
    documents: list[DocumentIn] = Field(min_length=1)


class DocumentFailure(BaseModel):
    doc_id: str
    error: str


class DocumentsResponse(BaseModel):
    """What the write did; repeating the same request changes nothing (``unchanged``)."""

    documents: int
    added: int
    updated: int
    unchanged: int
    chunks_embedded: int = Field(description="Chunks the model computed.")
    chunks_reused: int = Field(description="Chunks whose vectors were kept from the stored version.")
    chunks_written: int
    chunks_deleted: int
    failed: list[DocumentFailure] = Field(description="Documents not written; their stored version stays.")
    seconds: float


class DocumentInfo(BaseModel):
    doc_id: str
    version: int
    updated_at: int
    chunks: int
    title: str
    kind: str
    source: str
    tags: list[str]
    langs: list[str]
    failed: dict[str, Any] | None = Field(default=None, description="The last failed write, if any.")


class DeleteResponse(BaseModel):
    deleted: int = Field(description="1 if the document existed, 0 if not (deleting is idempotent).")
    chunks_deleted: int
