"""Word, PowerPoint and Excel files -> Markdown whose headings are chapters, slide titles, sheets and tables.

Each path was chosen by measurement (``specrag bench formats``; figures in
``docs/benchmarks/formats.json``), against markitdown 0.1.9's own converter for the format:

``.docx``: mammoth (Word styles -> HTML; Heading 1-6, and templates' "見出し 1"-style names, -> h1-h6)
    and markitdown's HTML -> Markdown. Not markitdown's ``DocxConverter``: it re-serialises
    ``word/document.xml`` through BeautifulSoup's XML parser to rewrite equations, which with
    beautifulsoup4 4.15 / lxml 6.2 drops every ``w:`` prefix, so mammoth finds no body and every .docx
    fails ("Could not find the body element"); this path keeps 7 of 7 sample strings and 4 of 4
    trails, ``T_ORDER`` unescaped, and a table's first row as its header.
``.pptx``: markitdown's ``PptxConverter``, then each slide becomes ``## <slide title>`` (the whole
    title on one line; ``## Slide N`` when untitled), so a chunk's trail is its slide; the
    ``<!-- Slide number -->`` comments and image placeholders (``![image.png](Picture3.jpg)``) go
    (markitdown alone: 2 of 4 slide trails — a two-line title is cut, an untitled slide has none).
``.xlsx``/``.xlsm``: our own reader over openpyxl. markitdown reads a sheet with pandas as one table:
    merged cells become NaN, a 方眼紙 sheet (a grid of narrow columns, every label and value a merged
    range) becomes a 21-column "Unnamed: n" table of mostly NaN in which no item row survives
    (3 of 11 sample strings, none of the 6 rows of its 項目定義, 0 of 2 trails, against 11 of 11 and 2
    of 2 here; a 10,000-row sheet takes 6.8 s there, about 2 s here). Here each sheet is
    ``# <sheet>``, each table-like region (rows between empty rows) ``## <title>`` — the Excel
    table's name, else a title cell above it (bold, "■ 項目定義"), else its range ("A3:X4") — and a
    pipe table whose columns are where cells start: a merged value appears once and the grid's
    empty filler columns vanish. Lone text cells become paragraphs. Hidden and empty sheets are
    skipped; formulas give their cached value (none when the file was never opened in Excel).

Encrypted files (password-protected OOXML is an OLE compound file holding an ``EncryptedPackage``),
legacy binary files under a modern name, corrupt zips and empty files raise ``UnreadableDocument``.
The title comes from the package's core properties (``dc:title``) when set.
"""

from __future__ import annotations

import datetime as dt
import io
import re
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any
from xml.etree import ElementTree

from serve_app.core.formats.base import Converted, UnreadableDocument

__all__ = ["convert"]

_OLE_MAGIC = bytes.fromhex("d0cf11e0a1b11ae1")
_ENCRYPTED_STREAM = "EncryptedPackage".encode("utf-16-le")
_DC_TITLE = "{http://purl.org/dc/elements/1.1/}title"
# Titles Office templates and generators leave behind: not the document's own.
_PLACEHOLDER_TITLES = frozenset(
    {"powerpoint presentation", "powerpoint プレゼンテーション", "無題", "untitled"}
)


def convert(data: bytes, name: str) -> Converted:
    """Convert one .docx, .pptx, .xlsx or .xlsm file (``name`` picks the format)."""
    suffix = PurePosixPath(name).suffix.lower()
    with _open_package(data, suffix) as package:
        title = _core_title(package)
    if suffix == ".docx":
        text = _docx(data)
    elif suffix == ".pptx":
        text = _pptx(data)
    elif suffix in (".xlsx", ".xlsm"):
        text = _xlsx(data)
    else:
        raise UnreadableDocument(f"{suffix or name!r} is not an Office Open XML format")
    return Converted(text=text, fmt="markdown", title=title)


# --------------------------------------------------------------------------------------------------
# The package: refusals and the title


def _open_package(data: bytes, suffix: str) -> zipfile.ZipFile:
    """The OOXML zip, or ``UnreadableDocument`` saying why this file is not one."""
    if not data:
        raise UnreadableDocument("empty file")
    if data.startswith(_OLE_MAGIC):
        if _ENCRYPTED_STREAM in data:
            raise UnreadableDocument("encrypted (password-protected) file; save it without a password")
        raise UnreadableDocument(
            f"a legacy binary Office file (OLE) named {suffix}; save it in the {suffix} format"
        )
    try:
        package = zipfile.ZipFile(io.BytesIO(data))
        names = set(package.namelist())
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as exc:
        raise UnreadableDocument(f"not a valid {suffix} file (corrupt or truncated zip: {exc})") from exc
    if "[Content_Types].xml" not in names:
        raise UnreadableDocument(f"not a valid {suffix} file (a zip, but no Office Open XML package)")
    return package


def _core_title(package: zipfile.ZipFile) -> str | None:
    """``dc:title`` of ``docProps/core.xml``; None when unset, a template's placeholder or unreadable."""
    try:
        root = ElementTree.fromstring(package.read("docProps/core.xml"))
    except (KeyError, ElementTree.ParseError, zipfile.BadZipFile, OSError):
        return None
    element = root.find(_DC_TITLE)
    title = _one_line(element.text or "") if element is not None else ""
    return title if title and title.lower() not in _PLACEHOLDER_TITLES else None


# --------------------------------------------------------------------------------------------------
# Markdown helpers

# A text line that the chunker would read as a heading (ATX or a setext underline) or a code fence.
_MARKDOWN_LINE = re.compile(r"^( {0,3})(#{1,6}(?=[ \t]|$)|=+[ \t]*$|-+[ \t]*$|`{3,}|~{3,})")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _escape_line(line: str) -> str:
    """Keep a line of content from reading as a heading or fence (it would rewrite the trail)."""
    return _MARKDOWN_LINE.sub(r"\1\\\2", line)


def _tidy(markdown: str) -> str:
    """Collapse the blank-line runs that removed lines leave."""
    return re.sub(r"\n{3,}", "\n\n", markdown).strip()


# --------------------------------------------------------------------------------------------------
# Word

_DOCX_STYLE_MAP = "\n".join(
    f"p[style-name='{name}{sep}{level}'] => h{level}:fresh"
    for level in range(1, 7)
    for name in ("見出し", "Heading", "heading")
    for sep in (" ", "")
)


def _docx(data: bytes) -> str:
    import mammoth  # type: ignore[import-untyped]

    from serve_app.core.formats.html import html_to_markdown

    html = mammoth.convert_to_html(io.BytesIO(data), style_map=_DOCX_STYLE_MAP).value
    return html_to_markdown(html)


# --------------------------------------------------------------------------------------------------
# PowerPoint

_SLIDE_COMMENT = re.compile(r"<!-- Slide number: (\d+) -->")
_NOTES = re.compile(r"^### Notes:$", re.MULTILINE)
_GENERATED_HEADING = re.compile(r"^### (?:Notes|Chart\b.*)$")


def _slide_titles(data: bytes) -> list[str]:
    """Each slide's full title text ("" when untitled), as markitdown emits only its first line."""
    from pptx import Presentation

    titles: list[str] = []
    for slide in Presentation(io.BytesIO(data)).slides:
        shape = slide.shapes.title
        titles.append(shape.text_frame.text if shape is not None and shape.has_text_frame else "")
    return titles


def _pptx(data: bytes) -> str:
    from markitdown import StreamInfo
    from markitdown.converters import PptxConverter

    from serve_app.core.formats.html import drop_images

    raw = PptxConverter().convert(io.BytesIO(data), StreamInfo(extension=".pptx")).markdown
    titles = _slide_titles(data)
    parts = _SLIDE_COMMENT.split(raw.replace("\v", "\n"))
    slides: list[str] = []
    for number_text, body in zip(parts[1::2], parts[2::2], strict=True):
        number = int(number_text)
        title = titles[number - 1] if number <= len(titles) else ""
        heading = _one_line(title)
        emitted = "# " + title.replace("\v", "\n").lstrip()
        if heading and emitted in body:
            body = body.replace(emitted, "", 1)
        body = _NOTES.sub("### Notes", body)
        lines = [line if _GENERATED_HEADING.match(line) else _escape_line(line) for line in body.split("\n")]
        content = _tidy(drop_images("\n".join(lines)))
        slides.append(f"## {heading or f'Slide {number}'}" + (f"\n\n{content}" if content else ""))
    return "\n\n".join(slides)


# --------------------------------------------------------------------------------------------------
# Excel

_TITLE_MAX = 60
_HEADING_MARKS = tuple("■□◆◇●◎▼▽▶►【")
_DEFAULT_TABLE_NAME = re.compile(r"^(?:Table|テーブル)\d+$", re.IGNORECASE)


@dataclass(slots=True)
class _Cell:
    row: int
    col: int
    text: str
    last_row: int  # a merged range's extent (its own row/column when not merged)
    last_col: int
    obj: Any  # the openpyxl cell (its font is read only for title candidates)

    def is_bold(self) -> bool:
        font = getattr(self.obj, "font", None)
        return bool(font is not None and font.b)


@dataclass(slots=True)
class _Block:
    """Rows between empty rows: each row's cells in column order."""

    rows: list[list[_Cell]] = field(default_factory=list)


def _xlsx(data: bytes) -> str:
    from openpyxl import load_workbook  # type: ignore[import-untyped]

    # read_only=False: merged ranges are only known on a fully loaded sheet. data_only: cached values.
    with warnings.catch_warnings():  # "Data Validation extension is not supported" and the like
        warnings.simplefilter("ignore")
        workbook = load_workbook(io.BytesIO(data), read_only=False, data_only=True, keep_links=False)
    sheets: list[str] = []
    for sheet in workbook.worksheets:
        if sheet.sheet_state != "visible":
            continue
        body = _sheet_markdown(sheet)
        if body:
            sheets.append(f"# {_one_line(str(sheet.title))}\n\n{body}")
    return "\n\n".join(sheets)


def _cell_text(value: object, number_format: str) -> str:
    """The cell as Excel shows it, near enough: integral floats without ".0", ISO dates, 15 digits."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.replace("\r\n", "\n").replace("\r", "\n").strip()
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        if isinstance(number_format, str) and number_format.endswith("%"):
            return f"{value * 100:.10g}%"
        if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.15g}" if isinstance(value, float) else str(value)
    if isinstance(value, dt.datetime):
        if value.time() == dt.time(0):
            return value.date().isoformat()
        return value.isoformat(sep=" ", timespec="seconds" if value.second else "minutes")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dt.time):
        return value.isoformat(timespec="seconds" if value.second else "minutes")
    return str(value).strip()


def _sheet_cells(sheet: Any) -> dict[tuple[int, int], _Cell]:
    """The cells holding a value, each with its merged extent."""
    cells: dict[tuple[int, int], _Cell] = {}
    # The stored cells only: the public iterators create a cell for every coordinate of the used
    # range, which one stray formatted cell far out (XFD1048576) makes enormous.
    for (row, col), cell in sorted(sheet._cells.items()):
        if cell.value is None:  # the covered cells of a merged range, formatted empty cells
            continue
        text = _cell_text(cell.value, cell.number_format)
        if text:
            cells[(row, col)] = _Cell(row, col, text, row, col, cell)
    for merged in sheet.merged_cells.ranges:
        found = cells.get((merged.min_row, merged.min_col))
        if found is not None:
            found.last_row, found.last_col = merged.max_row, merged.max_col
    return cells


def _blocks(cells: dict[tuple[int, int], _Cell]) -> list[_Block]:
    """Group cells into blocks of consecutive occupied rows (a merged value occupies all its rows)."""
    occupied: set[int] = set()
    by_row: dict[int, list[_Cell]] = {}
    for cell in cells.values():
        occupied.update(range(cell.row, cell.last_row + 1))
        by_row.setdefault(cell.row, []).append(cell)
    blocks: list[_Block] = []
    previous = None
    for row in sorted(occupied):
        if previous is None or row != previous + 1:
            blocks.append(_Block())
        if row in by_row:
            blocks[-1].rows.append(sorted(by_row[row], key=lambda c: c.col))
        previous = row
    return [block for block in blocks if block.rows]


def _titleish(cell: _Cell) -> bool:
    """Short, one line, not a sentence or a "label: value" pair: could name what follows."""
    text = cell.text
    return (
        len(text) <= _TITLE_MAX
        and "\n" not in text
        and not text.endswith(("。", "．"))
        and ":" not in text
        and "：" not in text
    )


def _headingish(cell: _Cell) -> bool:
    """A lone cell that titles a part of the sheet: bold, or marked like "■ 項目定義" / "【概要】"."""
    marked = cell.text.startswith(_HEADING_MARKS) and len(cell.text) > 1
    return _titleish(cell) and (marked or cell.is_bold())


def _ref(top: int, left: int, bottom: int, right: int) -> str:
    from openpyxl.utils import get_column_letter  # type: ignore[import-untyped]

    return f"{get_column_letter(left)}{top}:{get_column_letter(right)}{bottom}"


def _table_names(sheet: Any) -> list[tuple[str, tuple[int, int, int, int]]]:
    """The sheet's Excel tables (Insert > Table) and their bounds; a default name ("Table1") is no title."""
    from openpyxl.utils import range_boundaries

    named: list[tuple[str, tuple[int, int, int, int]]] = []
    for table in sheet.tables.values():
        name = str(table.displayName or table.name or "")
        if name and not _DEFAULT_TABLE_NAME.match(name) and table.ref:
            left, top, right, bottom = range_boundaries(table.ref)
            named.append((name, (top, left, bottom, right)))
    return named


def _cell_md(text: str) -> str:
    return _one_line(text).replace("|", "\\|")


def _table_markdown(rows: list[list[_Cell]]) -> str:
    """A pipe table whose columns are the distinct columns where cells start (a merged value once)."""
    columns = sorted({cell.col for row in rows for cell in row})
    index = {col: k for k, col in enumerate(columns)}
    lines: list[str] = []
    for k, row in enumerate(rows):
        values = [""] * len(columns)
        for cell in row:
            slot = index[cell.col]
            values[slot] = f"{values[slot]} {_cell_md(cell.text)}".strip()
        lines.append("| " + " | ".join(values) + " |")
        if k == 0:
            lines.append("| " + " | ".join("---" for _ in columns) + " |")
    return "\n".join(lines)


def _text_lines(row: list[_Cell]) -> Iterator[str]:
    if len(row) == 1:
        yield from (_escape_line(line) for line in row[0].text.split("\n"))
    else:
        yield _escape_line(" | ".join(_one_line(cell.text) for cell in row))


def _sheet_markdown(sheet: Any) -> str:
    """One sheet's regions in order: headings from title cells, tables, paragraphs of lone cells."""
    cells = _sheet_cells(sheet)
    if not cells:
        return ""
    named = _table_names(sheet)
    out: list[str] = []
    paragraph: list[str] = []
    title_line: str | None = None  # paragraph[-1] is a lone title-like cell: it may name a table
    under_heading = False  # nothing written since the last heading: a table there is under it

    def flush() -> None:
        nonlocal under_heading
        if paragraph:
            out.append("\n".join(paragraph))
            paragraph.clear()
            under_heading = False

    def heading(text: str) -> None:
        nonlocal under_heading
        flush()
        out.append(f"## {_one_line(text)}")
        under_heading = True

    for block in _blocks(cells):
        multi = [k for k, row in enumerate(block.rows) if len(row) >= 2]
        first = multi[0] if len(multi) >= 2 else len(block.rows)  # fewer than 2 such rows: no table
        for row in block.rows[:first]:
            title_line = None
            if len(row) == 1 and _headingish(row[0]):
                heading(row[0].text)
                continue
            paragraph.extend(_text_lines(row))
            if len(row) == 1 and _titleish(row[0]):
                title_line = row[0].text
        if first == len(block.rows):
            continue
        rows = block.rows[first:]
        top, left = rows[0][0].row, min(cell.col for row in rows for cell in row)
        bottom = max(cell.last_row for row in rows for cell in row)
        right = max(cell.last_col for row in rows for cell in row)
        name = next(
            (n for n, (t, lf, b, r) in named if t <= bottom and top <= b and lf <= right and left <= r),
            None,
        )
        if name is None and title_line is not None:
            paragraph.pop()
            name = title_line
        title_line = None
        if name is not None:
            heading(name)
        elif not (under_heading and not paragraph):
            heading(_ref(top, left, bottom, right))
        out.append(_table_markdown(rows))
        under_heading = False
    flush()
    return "\n\n".join(out)
