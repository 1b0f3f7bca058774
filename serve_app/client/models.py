"""The HTTP API's wire shapes as the client sends and reads them.

Kept apart from the server's ``serve_app/http/schemas.py`` on purpose: the client must install and
import without FastAPI, Ray or the engines. ``tests/unit/client/test_models.py`` checks that both
sides name the same fields. Requests forbid unknown fields (a typo fails here, not as a 422);
responses ignore fields this client does not know yet, so a newer server does not break it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Channel = Literal["dense", "sparse", "bm25"]
Lang = Literal["ja", "en"]
Kind = Literal["spec", "glossary", "api", "design", "faq", "other"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Filters(_Request):
    """Metadata filters of a search: each field matches any of its values; fields are joined by and."""

    kinds: list[str] | None = None
    langs: list[Lang] | None = None
    tags: list[str] | None = Field(default=None, description="chunks carrying any of these tags")
    doc_ids: list[str] | None = None
    sources: list[str] | None = None


class Document(_Request):
    """One document to write; a known ``doc_id`` gets a new version."""

    doc_id: str
    text: str
    format: Literal["markdown", "text"] = "markdown"
    title: str = ""
    lang: Lang | None = None
    kind: Kind = "other"
    source: str = ""
    tags: list[str] = Field(default_factory=list)


class SearchResult(_Response):
    rank: int
    chunk_id: str
    doc_id: str
    version: int
    title: str = ""
    title_path: list[str] = Field(default_factory=list)
    text: str
    lang: str = ""
    kind: str = ""
    source: str = ""
    tags: list[str] = Field(default_factory=list)
    score: float = Field(description="in [0, 1], higher = more relevant")
    score_stage: str = Field(default="", description="rerank | fusion: which stage produced score")
    scores: dict[str, float] = Field(default_factory=dict)
    found_by: list[dict[str, Any]] = Field(default_factory=list)
    updated_at: int = 0

    def metadata(self) -> dict[str, Any]:
        """Every field but the text: what a framework's document carries next to its content."""
        return self.model_dump(exclude={"text", "found_by"})


class QueryVariant(_Response):
    text: str
    lang: str
    origin: str
    terms: list[list[str]] | None = None


class SearchResponse(_Response):
    query: str
    results: list[SearchResult]
    variants: list[QueryVariant] = Field(default_factory=list)
    timings_ms: dict[str, float] = Field(default_factory=dict)
    model: str = ""
    degraded: list[str] = Field(default_factory=list)
    explain: dict[str, Any] | None = None


class Embedding(_Response):
    index: int
    dense: list[float] | None = None
    sparse: dict[str, float] | None = None
    sparse_tokens: dict[str, float] | None = None
    colbert: list[list[float]] | None = None
    tokens: int = 0
    truncated: bool = False
    cached: str | None = None
    error: str | None = None


class EmbedResponse(_Response):
    model: str
    data: list[Embedding]
    usage: dict[str, int] = Field(default_factory=dict)
    timings_ms: dict[str, float] = Field(default_factory=dict)


class DocumentFailure(_Response):
    doc_id: str
    error: str


class DocumentsResponse(_Response):
    documents: int
    added: int
    updated: int
    unchanged: int
    chunks_embedded: int
    chunks_reused: int
    chunks_written: int
    chunks_deleted: int
    failed: list[DocumentFailure] = Field(default_factory=list)
    seconds: float
    embed_seconds: float = 0.0


class DocumentInfo(_Response):
    doc_id: str
    version: int
    updated_at: int
    chunks: int
    title: str = ""
    kind: str = ""
    source: str = ""
    tags: list[str] = Field(default_factory=list)
    langs: list[str] = Field(default_factory=list)
    failed: dict[str, Any] | None = None


class DeleteResponse(_Response):
    deleted: int
    chunks_deleted: int


class SyncFiles(_Response):
    added: int
    modified: int
    deleted: int
    renamed: int


class SyncOutcome(_Response):
    """What a git-source sync did (``POST /v1/sources/{name}/sync`` with ``wait``)."""

    from_commit: str | None
    to_commit: str
    mode: Literal["full", "increment", "unchanged"]
    files: SyncFiles
    recorded: bool
    pending: list[str] = Field(default_factory=list)
    ingest: DocumentsResponse | None = None


class SourceStatus(_Response):
    """A registered git source: its last synced commit and its newest trigger's state."""

    source: str
    state: Literal["idle", "queued", "running", "done", "failed"]
    requested: str | None = None
    error: str | None = None
    commit: str | None = None
    synced_at: int | None = None
    last: dict[str, Any] | None = None
    report: SyncOutcome | None = None


class Readiness(_Response):
    """``GET /readyz``: returned for 200 and 503 alike, since the body says what is wrong."""

    status: str
    checks: dict[str, dict[str, Any]] = Field(default_factory=dict)
    ms: float = 0.0

    @property
    def ready(self) -> bool:
        """``healthy`` or ``degraded``: searches succeed."""
        return self.status in ("healthy", "degraded")
