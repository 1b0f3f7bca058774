"""PDF files as ingestion reads them: one section per page, Japanese intact, titles, refusals."""

from __future__ import annotations

import io

import pytest
from reportlab.lib.pdfencrypt import StandardEncryption  # type: ignore[import-untyped]

from serve_app.core.chunking import chunk_markdown
from serve_app.core.formats import UnreadableDocument, convert
from serve_app.testing.documents import encrypted_pdf, form_pdf, paged_pdf, restricted_pdf, scanned_pdf


def _trails(name: str, data: bytes) -> tuple[str | None, dict[tuple[str, ...], str]]:
    converted = convert(name, data)
    assert converted is not None and converted.fmt == "markdown"
    chunks = chunk_markdown(converted.text, doc_title=converted.title or name.removesuffix(".pdf"))
    return converted.title, {c.title_path: c.text for c in chunks}


def test_each_page_is_a_section_carrying_its_page_number() -> None:
    doc = paged_pdf()
    title, trails = _trails(doc.name, doc.data)
    assert title == "受注管理システム 運用手順書"
    t = "受注管理システム 運用手順書"
    assert trails == {
        (t, "p. 1"): "1. はじめに\n本書は受注管理システムの運用手順を定める。\n対象読者は運用担当者である。",
        (t, "p. 2"): "2. 日次処理\n毎日22時に受注データを集計する。\n集計に失敗した場合は翌朝に再実行する。",
        (t, "p. 3"): "3. 障害対応\n障害発生時は情報システム部へ連絡する。\n連絡先は内線1234である。",
    }


def test_lone_kanji_cells_and_letter_spaced_lines_come_out_whole() -> None:
    doc = form_pdf()
    title, trails = _trails(doc.name, doc.data)
    assert title == "テーブル定義書"  # "Microsoft Word - テーブル定義書.docx" without the tool's decoration
    assert trails[("テーブル定義書", "p. 1")].split("\n") == [
        "受注テーブル定義",  # drawn with 6 pt between characters: pdfminer reads "受 注 テ ー ブ ル 定 義"
        "項目名 型 桁数 必須",  # 型 drawn on its own: PDFium drops it
        "受注番号 CHAR 10 ○",
        "受注日 DATE 8 ○",
        "必須欄が○の項目は省略できない。",
    ]


def test_a_pdf_with_only_an_owner_password_is_read() -> None:
    doc = restricted_pdf()
    title, trails = _trails(doc.name, doc.data)
    assert title == "受注管理システム 運用手順書"
    assert list(trails) == [(title, "p. 1"), (title, "p. 2"), (title, "p. 3")]
    assert all(text in "\n".join(trails.values()) for text in doc.strings)


def test_text_that_looks_like_markdown_structure_does_not_make_headings() -> None:
    from reportlab.pdfgen import canvas  # type: ignore[import-untyped]

    buf = io.BytesIO()
    c = canvas.Canvas(buf)
    for k, line in enumerate(("Overview", "--------", "# not a heading", "```", "body text.")):
        c.drawString(72, 760 - 14 * k, line)
    c.save()
    _, trails = _trails("notes.pdf", buf.getvalue())
    assert trails == {("notes", "p. 1"): "Overview\n\\--------\n\\# not a heading\n\\```\nbody text."}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (encrypted_pdf().data, r"^encrypted PDF: it needs a password to open$"),
        (scanned_pdf().data, r"^no text layer \(scanned PDF\?\); OCR is not run$"),
        (paged_pdf().data[:2000], r"^not a valid PDF file \(corrupt or truncated\)"),
        (b"%PDF-1.4\nnothing else", r"^not a valid PDF file \(corrupt or truncated\)"),
        (b"<html>not a pdf</html>", r"^not a PDF file \(no %PDF- header\)$"),
        (b"", r"^empty file$"),
    ],
    ids=["encrypted", "scanned", "truncated", "no-body", "not-pdf", "empty"],
)
def test_unreadable_pdfs_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(UnreadableDocument, match=reason):
        convert("手順書.pdf", data)


def test_a_user_password_at_any_strength_is_refused() -> None:
    data = paged_pdf(encrypt=StandardEncryption("secret", strength=128)).data
    with pytest.raises(UnreadableDocument, match="needs a password"):
        convert("手順書.pdf", data)
