"""PDF -> Markdown, one ``## p. N`` section per page, so every chunk says which page it quotes.

Converters that flatten a PDF (markitdown's among them) lose the page numbers an answer should cite.
Text comes from pdfplumber (pdfminer.six), page by page, chosen by ``specrag bench formats``
over pypdfium2, though PDFium is ~40x faster (100 pages of 43 lines:
0.13 s against 5.7 s; markitdown 7.1 s): with reportlab's CID font HeiseiMin-W3 (Adobe-Japan1, not
embedded — what Japanese form generators emit) PDFium drops a character drawn on its own, a
one-kanji cell like 型 in a table (2 of 4 sample lines lost), where pdfminer keeps it; of 3,235
kana and level-1 kanji drawn as lines pdfminer returns all but ゕ and ゖ, PDFium all.
pdfminer instead splits letter-spaced lines (字間 of 4 pt or more, 均等割付) into "受 注 テ ー ブ ル";
such a line — at least three space-separated pieces, mostly single characters, with Japanese in
it — is joined back. Overprinted characters (fake bold) are deduplicated; ``(cid:N)`` placeholders
for glyphs without a Unicode mapping are dropped, and a page that had them is read again with
PDFium, whose text is kept when it has more characters (pdfminer returns only placeholders for
reportlab's CID fonts once the file is encrypted, even with no user password: 0 of 9 sample
strings through markitdown, 9 of 9 here).

The title is the metadata title (without "Microsoft Word - " and a file suffix). A PDF that needs
a password, a corrupt one and one with no text layer (scanned) raise ``UnreadableDocument``.
"""

from __future__ import annotations

import io
import re
import threading
import unicodedata
from typing import Any

from serve_app.core.formats.base import Converted, UnreadableDocument

__all__ = ["convert"]

_CID = re.compile(r"\(cid:\d+\)")
# A text line the chunker would read as a heading (ATX or a setext underline) or a code fence.
_MARKDOWN_LINE = re.compile(r"^( {0,3})(#{1,6}(?=[ \t]|$)|=+[ \t]*$|-+[ \t]*$|`{3,}|~{3,})")
_OFFICE_PREFIX = re.compile(r"^Microsoft (?:Word|PowerPoint|Excel) - ", re.IGNORECASE)
_FILE_SUFFIX = re.compile(r"\.(?:docx?|xlsx?|xlsm|pptx?|pdf|txt|html?)$", re.IGNORECASE)
_PLACEHOLDER_TITLES = frozenset({"untitled", "無題", "無題のドキュメント"})
_PDFIUM_LOCK = threading.Lock()


def convert(data: bytes, name: str) -> Converted:
    """Convert one PDF page by page; the metadata title is the title."""
    import pdfplumber
    from pdfminer.pdfdocument import PDFEncryptionError, PDFPasswordIncorrect

    if not data:
        raise UnreadableDocument("empty file")
    if b"%PDF-" not in data[:1024]:
        raise UnreadableDocument("not a PDF file (no %PDF- header)")
    try:
        pdf = pdfplumber.open(io.BytesIO(data))
    except Exception as exc:
        cause = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else exc
        if isinstance(cause, PDFPasswordIncorrect):
            raise UnreadableDocument("encrypted PDF: it needs a password to open") from exc
        if isinstance(cause, PDFEncryptionError):
            raise UnreadableDocument(f"encrypted PDF this reader cannot decrypt: {cause}") from exc
        raise UnreadableDocument(
            f"not a valid PDF file (corrupt or truncated): {type(cause).__name__}: {cause}"
        ) from exc
    pages: list[str] = []
    with pdf:
        title = _title(pdf.metadata)
        for number, page in enumerate(pdf.pages, start=1):
            try:
                pages.append(_deduplicated(page).extract_text())
            except Exception as exc:
                raise UnreadableDocument(f"corrupt PDF: page {number}: {type(exc).__name__}: {exc}") from exc
            finally:
                page.close()  # drop the page's parsed objects: a long PDF would hold them all
    unmapped = [k for k, raw in enumerate(pages) if _CID.search(raw)]
    if unmapped:
        for k, text in _pdfium_texts(data, unmapped).items():
            if _letters(text) > _letters(_CID.sub("", pages[k])):
                pages[k] = text
    sections = [f"## p. {k}\n\n{body}" for k, body in enumerate(map(_page_markdown, pages), start=1) if body]
    if not sections:
        if unmapped:
            raise UnreadableDocument(
                "no readable text: the fonts map glyphs to no characters; OCR is not run"
            )
        raise UnreadableDocument("no text layer (scanned PDF?); OCR is not run")
    return Converted(text="\n\n".join(sections), fmt="markdown", title=title)


def _letters(text: str) -> int:
    return sum(1 for ch in text if not ch.isspace())


def _pdfium_texts(data: bytes, indexes: list[int]) -> dict[int, str]:
    """PDFium's text of these pages (0-based), for pages pdfminer left as ``(cid:N)``; {} if it fails.

    pdfminer finds a CID font's character collection by its ``CIDSystemInfo`` strings; in an
    encrypted file (a permissions-only owner password, common for distributed specs) it can decrypt
    them wrongly and return no characters at all, where PDFium reads the page.
    """
    import pypdfium2 as pdfium  # type: ignore[import-untyped]

    texts: dict[int, str] = {}
    with _PDFIUM_LOCK:  # PDFium is not thread-safe, not even across documents
        try:
            pdf = pdfium.PdfDocument(data)
        except pdfium.PdfiumError:
            return texts
        try:
            for k in indexes:
                text = pdf[k].get_textpage().get_text_bounded()
                texts[k] = text.replace("\r\n", "\n").replace("\x02", "")  # \x02: PDFium's soft hyphen
        finally:
            pdf.close()
    return texts


def _title(metadata: dict[str, Any]) -> str | None:
    value = metadata.get("Title")
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        return None
    title = _FILE_SUFFIX.sub("", _OFFICE_PREFIX.sub("", " ".join(value.split()))).strip()
    return title if title and title.lower() not in _PLACEHOLDER_TITLES else None


def _deduplicated(page: Any) -> Any:
    """The page without overprinted copies of a character (fake bold: the same glyph drawn twice).

    pdfplumber's ``dedupe_chars`` does this too but triples the page's extraction time.
    """
    seen: set[tuple[str, int, int]] = set()

    def keep(obj: dict[str, Any]) -> bool:
        if obj.get("object_type") != "char":
            return True
        key = (obj["text"], round(obj["x0"]), round(obj["top"]))
        if key in seen:
            return False
        seen.add(key)
        return True

    return page.filter(keep)


def _is_cjk(ch: str) -> bool:
    name = unicodedata.name(ch, "")
    return name.startswith(("CJK", "HIRAGANA", "KATAKANA", "FULLWIDTH", "IDEOGRAPHIC", "HALFWIDTH KATAKANA"))


def _unspace(line: str) -> str:
    """Join a letter-spaced line ("均 等 割 付 の 見 出 し") that has Japanese in it; others unchanged."""
    pieces = line.split(" ")
    if len(pieces) < 3 or not any(_is_cjk(ch) for ch in line):
        return line
    singles = sum(1 for piece in pieces if len(piece) == 1)
    return "".join(pieces) if singles >= 0.75 * len(pieces) else line


def _page_markdown(raw: str) -> str:
    lines: list[str] = []
    for line in _CID.sub("", raw).split("\n"):
        line = "".join(ch for ch in line if ch == "\t" or unicodedata.category(ch) != "Cc").rstrip()
        lines.append(_MARKDOWN_LINE.sub(r"\1\\\2", _unspace(line)))
    return "\n".join(lines).strip()
