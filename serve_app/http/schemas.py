"""Wire schemas of the HTTP API, apart from the logic that fills them."""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

_SURROGATE = re.compile("[\ud800-\udfff]")


def surrogate_at(text: str) -> int | None:
    """Where ``text`` holds a lone UTF-16 surrogate (JSON ``"\\ud800"`` parses to one; a pair
    becomes one character). Such a string cannot be encoded as UTF-8, so no tokenizer, cache key
    or Milvus field can take it: it is refused at the door with its position."""
    found = _SURROGATE.search(text)
    return found.start() if found else None


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("query must contain non-whitespace text")
    return value


# A query of any route (search, rerank, Dify): empty or whitespace-only is a 422.
QueryText = Annotated[str, AfterValidator(_not_blank)]


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
    query: QueryText = Field(
        description="The question, in Japanese, English or both.", examples=["認証トークンの有効期限は？"]
    )
    top_k: int | None = Field(default=None, ge=1, le=100, description="Default: search.top_k (10).")
    filters: SearchFilters | None = None
    channels: list[Literal["dense", "sparse", "bm25"]] | None = Field(
        default=None,
        min_length=1,
        description="Retrieval channels; default: search.channels (dense, sparse and bm25).",
    )
    rerank: bool | None = Field(default=None, description="ColBERT rerank; default from settings.")
    expand: bool = Field(default=True, description="Use query variants from the expander.")
    explain: bool = Field(
        default=False,
        description="Add which variant and channel found each result, every search of the fan-out "
        "with its timing, and the expander's state.",
    )


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
    score: float = Field(
        ge=0,
        le=1,
        description="Relevance in [0, 1], higher = more relevant, from the stage named by score_stage: "
        "the rerank's similarity (as /v1/rerank reports it), or, when the rerank is off or failed, the "
        "fused RRF divided by that of a chunk ranked first in every list.",
    )
    score_stage: Literal["rerank", "fusion"] = Field(description="Which stage produced score.")
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
    origin: str = Field(description="original | llm | lexicon | glossary")
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


TOKEN_ARRAYS_REFUSED = (
    "token arrays are not accepted: send the text itself (the model tokenizes it with its own "
    "vocabulary). LangChain's OpenAIEmbeddings sends token arrays by default: construct it with "
    "check_embedding_ctx_length=False"
)


class OpenAIEmbeddingRequest(BaseModel):
    """OpenAI ``POST /v1/embeddings`` plus NIM's ``input_type`` and ``truncate``.

    Any other field is refused with a 422 that names it: an option silently ignored would leave
    a client believing it had an effect.
    """

    model_config = ConfigDict(extra="forbid")

    input: str | list[str] = Field(
        description="A string or a list of strings (token arrays are refused with a 422)."
    )
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, description="Must equal the model's dimension if given.")
    user: str | None = None
    input_type: Literal["query", "passage", "document"] = Field(
        default="passage",
        description="NIM's: query = a search query (the model's query prefix), passage = a text to be "
        "searched; document is accepted as passage (Voyage's name).",
    )
    truncate: Literal["NONE", "START", "END"] = Field(
        default="END",
        description="NIM's: what happens to an input over the model's token window: END cuts its end "
        "(at a sentence end), START its start (at a sentence start), NONE refuses it (400 naming the "
        "limit). Default END (NIM's default is NONE).",
    )

    @field_validator("input", mode="before")
    @classmethod
    def _no_token_arrays(cls, value: Any) -> Any:
        if isinstance(value, list) and any(isinstance(v, int | list) for v in value):
            raise PydanticCustomError("token_arrays", TOKEN_ARRAYS_REFUSED)
        return value


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


class ModelCard(BaseModel):
    """One entry of OpenAI's ``GET /v1/models``."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="Unix seconds; when this API replica started serving it.")
    owned_by: str = "specrag"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class InfoResponse(BaseModel):
    """TEI's ``GET /info``, the fields that apply here, plus the dense dimension and the reranker."""

    model_id: str
    model_sha: str | None = Field(description="The weights' revision (also part of every cache key).")
    model_dtype: str
    model_type: dict[str, dict[str, Any]] = Field(description='{"embedding": {"pooling": "cls" | "mean"}}')
    max_input_length: int = Field(description="Tokens per input, special tokens and prefix included.")
    max_batch_tokens: int = Field(description="Padded tokens per forward pass.")
    max_batch_requests: int = Field(description="Texts per model step (the dynamic batch).")
    max_client_batch_size: int = Field(description="Inputs per /v1/embed or /v1/embeddings request.")
    max_client_rerank_size: int = Field(description="Documents per /v1/rerank or /rerank request.")
    auto_truncate: bool = Field(
        description="Inputs over the window are cut unless a request says not to (/v1/embed, "
        "/v1/embeddings, /v1/rerank); TEI's /rerank keeps its own request default, truncate: false."
    )
    dimension: int
    reranker: dict[str, str] = Field(description="model_id and method (colbert, or colbert+cross-encoder)")
    version: str


# ------------------------------------------------------------------------------------- rerank


class RerankDocument(_Strict):
    text: str


class RerankRequest(_Strict):
    """Cohere's (v1, v2) and Jina's ``POST /v1/rerank``; any other field is a 422 naming it."""

    query: QueryText
    documents: list[str | RerankDocument] = Field(
        min_length=1, description="Texts, or objects with a text (Cohere v1, Jina); empty = 422."
    )
    model: str | None = Field(default=None, description="The served model or the reranker, if given.")
    top_n: int | None = Field(default=None, ge=1, description="Only the best n results; default all.")
    return_documents: bool = Field(
        default=False, description="Add each result's document text (Cohere's default; Jina's is true)."
    )
    max_tokens_per_doc: int | None = Field(
        default=None,
        ge=1,
        description="Cohere v2: documents are cut to this many tokens. Values below the model's window "
        "are refused (422); at or above it, documents are cut at the window.",
    )

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


class RerankResultDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int = Field(description="Position of the document in the request.")
    relevance_score: float = Field(description="In [0, 1], higher = more relevant.")
    document: RerankResultDocument | None = Field(default=None, description="With return_documents.")


class RerankMeta(BaseModel):
    tokens: dict[str, int] = Field(description="input_tokens: tokens the model read (0 when cached)")
    truncated: list[int] = Field(description="Documents cut to the model's token window.")
    warnings: list[str] = Field(default_factory=list)


class RerankResponse(BaseModel):
    id: str
    model: str
    results: list[RerankResult] = Field(description="Best first.")
    meta: RerankMeta
    usage: dict[str, int] = Field(description="total_tokens, as Jina reports it")


class TEIRerankRequest(_Strict):
    """text-embeddings-inference's ``POST /rerank``; any other field is a 422 naming it."""

    query: QueryText
    texts: list[str] = Field(min_length=1, description="Empty = 422.")
    raw_scores: bool = Field(default=False, description="The raw score instead of the [0, 1] relevance.")
    return_text: bool = False
    truncate: bool = Field(default=False, description="Cut inputs over the token window; false = 413.")
    truncation_direction: Literal["Right", "Left", "right", "left"] = Field(
        default="Right", description="Right cuts the end, Left the start."
    )


class TEIRank(BaseModel):
    index: int
    score: float
    text: str | None = None


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
    embed_seconds: float = Field(default=0.0, description="Of ``seconds``, waiting for the embedder.")


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


# -------------------------------------------------------------------------------------- sources


class SyncRequest(_Strict):
    commit: str | None = Field(
        default=None,
        min_length=1,
        max_length=250,
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9._/@{}^~-]*$",
        description="A commit id (what a CI job or git hook knows) or a ref; default: the source's ref.",
    )
    full: bool = Field(
        default=False, description="Read every file at the commit, not just what changed since the last sync."
    )
    wait: bool = Field(
        default=False,
        description="Answer when the sync is done (200 with its report); default: 202 at once.",
    )


class SyncFiles(BaseModel):
    added: int
    modified: int
    deleted: int
    renamed: int


class SyncOutcome(BaseModel):
    from_commit: str | None = Field(description="The commit synced before (None: the first sync).")
    to_commit: str
    mode: Literal["full", "increment", "unchanged"]
    files: SyncFiles
    recorded: bool = Field(
        description="The commit was recorded; false when documents failed to embed (the next sync "
        "redoes them)."
    )
    pending: list[str] = Field(
        default_factory=list, description="Documents whose write failed to embed: the next sync redoes them."
    )
    ingest: DocumentsResponse | None = None


class SourceStatus(BaseModel):
    source: str
    state: Literal["idle", "queued", "running", "done", "failed"] = Field(
        description="The newest trigger's state (idle: none since the Indexer started)."
    )
    requested: str | None = Field(description="The commit the newest trigger asked for.")
    error: str | None = Field(description="Why the newest trigger's sync failed.")
    commit: str | None = Field(description="The last commit synced completely.")
    synced_at: int | None
    last: dict[str, Any] | None = Field(description="The last sync's figures.")
    report: SyncOutcome | None = Field(default=None, description="This sync's report (with wait).")


# --------------------------------------------------------------------------------- errors, health


class ErrorResponse(BaseModel):
    """The service's refusal: the cause in one line, what it concerns, the request's id."""

    error: str = Field(description="Why, in one line.")
    detail: str | list[Any] | dict[str, Any] | None = Field(
        default=None,
        description="What it concerns: the cause's own message, the invalid fields "
        "([{field, reason}]), the items over a limit, ...",
    )
    request_id: str = Field(description="Also in the X-Request-ID header; the log has the rest under it.")


class OpenAIErrorObject(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, or server_error for a 5xx")
    param: str | None = None
    code: str | None = None


class OpenAIErrorResponse(BaseModel):
    """OpenAI's error shape (its client libraries raise with ``error.message``)."""

    error: OpenAIErrorObject
    request_id: str


class DifyErrorResponse(BaseModel):
    """Dify's External Knowledge API error: 1001 bad Authorization header, 1002 authorization
    failed, 2001 no such knowledge; other refusals carry their HTTP status as the code."""

    error_code: int
    error_msg: str
    request_id: str


class ReadinessResponse(BaseModel):
    status: Literal["healthy", "degraded", "unhealthy", "not_initialized"]
    checks: dict[str, dict[str, Any]] = Field(description="model, redis, milvus, expander: status and detail")
    ms: float
