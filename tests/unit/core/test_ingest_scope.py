"""Write scopes: a caller may write or delete only documents inside its scope, before and after."""

from __future__ import annotations

from typing import Any

import pytest

from serve_app.core.ingest import Ingestor, OutOfScope, SourceDocument
from serve_app.settings import ChunkSettings, DataScope
from serve_app.testing.doubles import FakeStore


def _row(doc: str, version: int, ordinal: int, source: str, kind: str = "spec", tags=()) -> dict[str, Any]:
    return {
        "chunk_id": f"{doc}-{version}-{ordinal}",
        "doc_id": doc,
        "version": version,
        "ordinal": ordinal,
        "text": "t",
        "kind": kind,
        "lang": "en",
        "source": source,
        "tags": list(tags),
        "updated_at": version,
        "is_current": True,
        "dense": [1.0, 0.0],
        "sparse": {1: 1.0},
    }


@pytest.fixture
def ingestor() -> Ingestor:
    store = FakeStore(
        [
            _row("a-spec", 1, 0, "team-a/spec.md"),
            _row("a-spec", 1, 1, "team-a/spec.md"),
            # moved to team B in version 2: the newest version decides
            _row("moved", 1, 0, "team-a/moved.md"),
            _row("moved", 2, 0, "team-b/moved.md"),
            _row("b-api", 1, 0, "team-b/api.md", kind="api", tags=["public"]),
        ]
    )
    return Ingestor(lambda texts: None, store, ChunkSettings(), model_key="hash")  # type: ignore[arg-type,return-value]


A = DataScope(sources=["team-a/"])


def test_no_scope_allows_everything(ingestor: Ingestor) -> None:
    ingestor.check_scope(None, docs=[SourceDocument("b-api", "x", source="elsewhere")], doc_ids=["moved"])


def test_new_documents_must_land_inside_the_scope(ingestor: Ingestor) -> None:
    ingestor.check_scope(A, docs=[SourceDocument("new", "x", source="team-a/new.md")])
    with pytest.raises(OutOfScope, match=r"'new'.*'team-b/new\.md'.*outside this caller's write scope"):
        ingestor.check_scope(A, docs=[SourceDocument("new", "x", source="team-b/new.md")])


def test_a_stored_document_of_another_team_cannot_be_overwritten_or_deleted(ingestor: Ingestor) -> None:
    # same id, metadata that would fit: still B's document as stored
    with pytest.raises(OutOfScope, match="'b-api' exists outside"):
        ingestor.check_scope(A, docs=[SourceDocument("b-api", "x", source="team-a/api.md")])
    with pytest.raises(OutOfScope, match="'moved' exists outside"):
        ingestor.check_scope(A, doc_ids=["moved"])
    ingestor.check_scope(A, doc_ids=["a-spec", "never-existed"])  # unknown ids are no one's
    tags_only = DataScope(tags=["public"])
    ingestor.check_scope(tags_only, doc_ids=["b-api"])
    with pytest.raises(OutOfScope):
        ingestor.check_scope(tags_only, doc_ids=["a-spec"])
