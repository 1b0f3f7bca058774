"""``POST /v1/documents``, ``GET`` and ``DELETE /v1/documents/{doc_id}``."""

from __future__ import annotations

from fastapi import APIRouter

from serve_app.http.errors import ClientError
from serve_app.http.routes import BackendDep, PrincipalDep, SettingsDep
from serve_app.http.schemas import DeleteResponse, DocumentInfo, DocumentsRequest, DocumentsResponse
from serve_app.settings import Settings

router = APIRouter()


def check_limits(body: DocumentsRequest, s: Settings) -> None:
    lim = s.limits
    if len(body.documents) > lim.max_documents:
        raise ClientError(413, f"at most {lim.max_documents} documents per request")
    ids = [d.doc_id for d in body.documents]
    if len(set(ids)) != len(ids):
        raise ClientError(422, "a doc_id appears twice in this request")
    if too_long := [d.doc_id for d in body.documents if len(d.text) > lim.max_document_chars]:
        raise ClientError(413, f"documents longer than {lim.max_document_chars} characters", too_long[:10])


@router.post(
    "/v1/documents",
    response_model=DocumentsResponse,
    summary="Add or update documents (idempotent: unchanged documents are not re-embedded).",
    responses={409: {"description": "The index was built with another model."}},
)
async def put_documents(
    body: DocumentsRequest, s: SettingsDep, b: BackendDep, who: PrincipalDep
) -> DocumentsResponse:
    """A known ``doc_id`` gets a new version; only chunks whose content changed are embedded.

    Searches see the old version until the new one is completely written, then only the new
    one. A document whose chunks fail to embed is listed in ``failed`` and keeps its stored
    version; the others are written. A caller with a write scope gets 403 (and nothing is
    written) when a document, as sent or as stored under its id, lies outside it.
    """
    check_limits(body, s)
    docs = [{**d.model_dump(exclude={"format"}), "fmt": d.format} for d in body.documents]
    report = await b.upsert_documents(docs, who.write)
    if report["failed"] and len(report["failed"]) == len(docs) and not report["unchanged"]:
        raise ClientError(503, "no document could be embedded", report["failed"][:10])
    return DocumentsResponse(**{k: v for k, v in report.items() if k in DocumentsResponse.model_fields})


@router.get(
    "/v1/documents/{doc_id:path}",
    response_model=DocumentInfo,
    summary="A document's current version.",
    responses={404: {"description": "No such document."}},
)
async def get_document(doc_id: str, b: BackendDep, who: PrincipalDep) -> DocumentInfo:
    """A document outside the caller's read scope is answered like a missing one."""
    info = await b.get_document(doc_id)
    readable = info is not None and (
        who.read is None
        or who.read.allows(info.get("source", ""), info.get("kind", ""), info.get("tags") or [])
    )
    if info is None or not readable:
        raise ClientError(404, f"no document {doc_id!r}")
    return DocumentInfo(**info)


@router.delete(
    "/v1/documents/{doc_id:path}", response_model=DeleteResponse, summary="Remove a document (idempotent)."
)
async def delete_document(doc_id: str, b: BackendDep, who: PrincipalDep) -> DeleteResponse:
    """403 when the stored document lies outside the caller's write scope."""
    return DeleteResponse(**await b.delete_documents([doc_id], who.write))
