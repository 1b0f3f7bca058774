"""HTML pages (wiki and Confluence exports, generated API docs) -> Markdown with their headings.

markitdown's HTML converter (markdownify underneath) does the conversion: h1-h6 become ATX headings,
tables pipe tables. It is called directly, not through ``MarkItDown().convert_stream``, whose
content sniffing (magika, charset detection) took 50-100 ms a page against 3-7 ms for the whole
conversion here. Around it:

- the charset: a BOM, else UTF-8 when the bytes are valid UTF-8, else the ``<meta>``/XML
  declaration (Shift_JIS read as Windows' cp932: ①, ～), else charset-normalizer's guess; the
  converter alone reads bytes as UTF-8, and Japanese exports are often Shift_JIS;
- navigation, scripts, styles and embedded objects are removed first (markitdown removes only
  scripts and styles);
- ``_`` and ``*`` stay literal: identifiers read X_REQUEST_ID, not X\\_REQUEST\\_ID (markitdown's
  default lost 1 of 6 sample strings to that);
- a table without ``<th>`` gets its first row as the header (a chunk of a split table repeats it);
- an image becomes its description, or nothing when it has none.

The title is ``<title>``. ``html_to_markdown`` is also how Word files read (mammoth writes HTML).
"""

from __future__ import annotations

import codecs
import re

from serve_app.core.formats.base import Converted, UnreadableDocument

__all__ = ["convert", "decode_html", "drop_images", "html_to_markdown"]

_REMOVED_TAGS = ("script", "style", "noscript", "template", "nav", "iframe", "object", "embed")
_DECLARED = re.compile(
    rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)|<\?xml[^>]+encoding\s*=\s*["']([A-Za-z0-9_.:-]+)""",
    re.IGNORECASE,
)
# Windows' superset of Shift_JIS is what "Shift_JIS" pages really hold (①, ～, NEC special characters).
_ALIASES = {
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "sjis": "cp932",
    "x-sjis": "cp932",
    "ms_kanji": "cp932",
}
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
# Names tools give pictures, and file names: no description of the image.
_DEFAULT_IMAGE_NAME = re.compile(
    r"^(?:(?:picture|image|graphic|図|画像|グラフィックス|図形)\s*\d*|.*\.(?:png|jpe?g|gif|bmp|emf|wmf|svg|tiff?))$",
    re.IGNORECASE,
)


def convert(data: bytes, name: str) -> Converted:
    """Convert one HTML file; its ``<title>`` is the title."""
    from bs4 import BeautifulSoup

    if not data.strip():
        raise UnreadableDocument("empty file")
    soup = BeautifulSoup(decode_html(data), "html.parser")
    for tag in soup.find_all([*_REMOVED_TAGS]):
        tag.decompose()
    for tag in soup.select('[role="navigation"]'):
        tag.decompose()
    title = " ".join(soup.title.get_text(" ").split()) if soup.title is not None else ""
    return Converted(text=html_to_markdown(str(soup)), fmt="markdown", title=title or None)


def decode_html(data: bytes) -> str:
    """Bytes -> text: a BOM, else UTF-8 if valid, else the declared charset, else a guess (never raises)."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return data.decode(encoding, errors="replace")
    declared = _DECLARED.search(data[:8192])
    # Valid UTF-8 is UTF-8 whatever the page declares (Japanese in a legacy charset essentially never
    # is, while pages re-saved as UTF-8 often keep their old declaration).
    candidates = ["utf-8"]
    if declared:
        name = (declared.group(1) or declared.group(2)).decode("ascii").lower()
        candidates.append(_ALIASES.get(name, name))
    for encoding in candidates:
        try:
            return data.decode(encoding)
        except (LookupError, UnicodeDecodeError):
            continue
    guess = _guess(data)
    # The guesser names Shift_JIS variants; Windows' cp932 is what such pages hold (①, ～).
    for encoding in ("cp932", guess) if guess.startswith("shift_jis") else (guess,):
        try:
            return data.decode(encoding)
        except (LookupError, UnicodeDecodeError):
            continue
    return data.decode("cp932", errors="replace")


def _guess(data: bytes) -> str:
    from charset_normalizer import from_bytes

    best = from_bytes(data).best()
    return best.encoding if best is not None and best.encoding else "cp932"


def drop_images(markdown: str) -> str:
    """Image links -> their description, or nothing when the "description" is a default name."""

    def alt(match: re.Match[str]) -> str:
        text = " ".join(match.group(1).split())
        return "" if not text or _DEFAULT_IMAGE_NAME.match(text) else text

    return _IMAGE.sub(alt, markdown)


def html_to_markdown(html: str) -> str:
    """markitdown's HTML -> Markdown with literal ``_``/``*``, real table headers and no image links."""
    from markitdown.converters import HtmlConverter

    markdown = (
        HtmlConverter()
        .convert_string(html, escape_underscores=False, escape_asterisks=False, table_infer_header=True)
        .markdown
    )
    return re.sub(r"\n{3,}", "\n\n", drop_images(markdown)).strip()
