"""Wire schemas of Dify's External Knowledge API (``POST /retrieval``), as Dify documents and sends it.

Dify posts ``knowledge_id``, ``query``, ``retrieval_setting`` {``top_k``, ``score_threshold``} and,
from code only, ``metadata_condition`` {``logical_operator``, ``conditions``: [{``name``,
``comparison_operator``, ``value``}]}; it reads ``{"records": [{content, score, title, metadata}]}``.
Unknown fields are refused (422 naming them), so nothing a caller sends is silently dropped. The
error shape (``DifyErrorResponse``) lives with the others in ``schemas.py``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from serve_app.http.schemas import QueryText, _Strict

# Every operator Dify's documentation lists (the older pages add null / not null); which ones a
# field can honour is decided by the route, which refuses the rest with a 400 that names them.
DifyOperator = Literal[
    "contains",
    "not contains",
    "start with",
    "end with",
    "is",
    "is not",
    "in",
    "not in",
    "empty",
    "not empty",
    "null",
    "not null",
    "=",
    "≠",
    ">",
    "<",
    "≥",
    "≤",
    "before",
    "after",
]


class DifyCondition(_Strict):
    name: str | list[str] = Field(
        description="The metadata field (source, kind, tag, lang, doc_id); older Dify pages send a "
        "one-element list."
    )
    comparison_operator: DifyOperator
    value: str | int | float | list[str] | None = Field(
        default=None, description="A string, or for `in` a list (or Dify's comma-separated string)."
    )


class DifyMetadataCondition(_Strict):
    logical_operator: Literal["and", "or"] | None = Field(default="and", description="None = and")
    conditions: list[DifyCondition] | None = None


class DifyRetrievalSetting(_Strict):
    top_k: int = Field(ge=1, description="Records at most; the profile's max_top_k caps it.")
    score_threshold: float = Field(
        ge=0, le=1, description="Records scoring below it are left out; Dify sends 0.0 when it is off."
    )


class DifyRetrievalRequest(_Strict):
    knowledge_id: str = Field(min_length=1, description="A search profile (settings dify.profiles).")
    query: QueryText = Field(examples=["アクセストークンの有効期限は？"])
    retrieval_setting: DifyRetrievalSetting
    metadata_condition: DifyMetadataCondition | None = None


class DifyRecord(BaseModel):
    content: str = Field(description="The chunk's text.")
    score: float = Field(
        description="0-1, higher = more relevant: the rerank's similarity, or the fusion's scaled "
        "score where the rerank was off or failed (metadata.score_stage: rerank | fusion)."
    )
    title: str = Field(description="The document's title, else its id.")
    metadata: dict[str, Any] = Field(
        description="doc_id, chunk_id, version, title_path, source, kind, tags, lang, updated_at, rank, "
        "score_stage"
    )


class DifyRetrievalResponse(BaseModel):
    records: list[DifyRecord]
