"""``specrag bench formats``: the evidence for each format's converter, measured.

Builds the Japanese sample documents of :mod:`serve_app.testing.documents` and converts each with
markitdown's default path (``MarkItDown().convert_stream``, what one would use without thinking)
and with ``serve_app.core.formats.convert`` (the chosen path); for PDF also with pypdfium2 page by
page (the fast alternative to pdfplumber). Per document and path: the share of the known strings
(cells, sentences, clean table rows) found verbatim in the output, the share of the expected heading
trails (sheet / table title, slide title, page number, chapter) that some chunk of
``chunk_markdown`` carries, whether the title came through, the output size and the conversion time
(best of ``--repeat``). Then speed on a large sheet and a long PDF, and how many of 3,257 kana and
level-1 kanji drawn in reportlab's CID font each PDF text extractor gets back.

Writes ``--out`` (JSON), prints a table per format and replaces the formats section of
``docs/BENCHMARKS.md``.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

from serve_app.core.chunking import chunk_markdown
from serve_app.core.formats import convert
from serve_app.devtools.common import machine_facts, replace_section
from serve_app.testing.documents import SampleDocument, large_workbook, paged_pdf, sample_documents

Converter = Callable[[SampleDocument], tuple[str, str | None]]  # -> (markdown, title)


def markitdown_default(doc: SampleDocument) -> tuple[str, str | None]:
    """markitdown's own choice for the file (stream sniffing included), as its README shows it."""
    from markitdown import MarkItDown, StreamInfo

    result = MarkItDown(enable_plugins=False).convert_stream(
        io.BytesIO(doc.data), stream_info=StreamInfo(extension=PurePosixPath(doc.name).suffix)
    )
    return result.markdown, result.title


def chosen(doc: SampleDocument) -> tuple[str, str | None]:
    """``serve_app.core.formats.convert``: what ingestion runs."""
    converted = convert(doc.name, doc.data)
    assert converted is not None
    return converted.text, converted.title


def pdfium_pages(doc: SampleDocument) -> tuple[str, str | None]:
    """pypdfium2 page by page, in the same ``## p. N`` layout as the chosen path."""
    import pypdfium2 as pdfium  # type: ignore[import-untyped]

    pdf = pdfium.PdfDocument(doc.data)
    try:
        pages = []
        for k in range(len(pdf)):
            text = pdf[k].get_textpage().get_text_bounded().replace("\r\n", "\n").replace("\x02", "")
            pages.append(f"## p. {k + 1}\n\n{text.strip()}")
        title = pdf.get_metadata_dict().get("Title") or None
    finally:
        pdf.close()
    return "\n\n".join(pages), title


def _best_time(fn: Callable[[], Any], repeat: int) -> tuple[Any, float]:
    best = float("inf")
    result: Any = None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return result, best


def measure(doc: SampleDocument, path: str, converter: Converter, repeat: int) -> dict[str, Any]:
    """One document through one converter: recall of strings and trails, title, size, time."""
    row: dict[str, Any] = {"document": doc.name, "path": path}
    try:
        (text, title), seconds = _best_time(partial(converter, doc), repeat)
    except Exception as exc:  # a converter failing on a file is a result to record
        reason = str(exc).strip().splitlines()[-1].strip(" -")  # markitdown's: the converter's message
        return {**row, "error": f"{type(exc).__name__}: {reason[:160]}"}
    doc_title = title or PurePosixPath(doc.name).stem
    paths = {chunk.title_path for chunk in chunk_markdown(text, doc_title=doc_title)}
    found = [s for s in doc.strings if s in text]
    kept = [t for t in doc.trails if any(p[-len(t) :] == t and len(p) > len(t) for p in paths)]
    return {
        **row,
        "strings": f"{len(found)}/{len(doc.strings)}",
        "string_recall": round(len(found) / len(doc.strings), 3) if doc.strings else None,
        "trails": f"{len(kept)}/{len(doc.trails)}",
        "title_ok": (title or None) == doc.title,
        "chars": len(text),
        "ms": round(seconds * 1000, 1),
        "missing": [s for s in doc.strings if s not in text][:3],
    }


def glyph_coverage() -> dict[str, Any]:
    """Kana and JIS level-1 kanji drawn in HeiseiMin-W3 (40 a line): how many each extractor returns."""
    import pdfplumber
    import pypdfium2 as pdfium
    from reportlab.pdfbase import pdfmetrics  # type: ignore[import-untyped]
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont  # type: ignore[import-untyped]
    from reportlab.pdfgen import canvas  # type: ignore[import-untyped]

    chars = [chr(c) for c in (*range(0x3041, 0x3097), *range(0x30A1, 0x30FB))]
    for hi in range(0x88, 0x99):
        for lo in (*range(0x40, 0x7F), *range(0x80, 0xFD)):
            try:
                ch = bytes([hi, lo]).decode("cp932")
            except UnicodeDecodeError:
                continue
            if "\u4e00" <= ch <= "\u9fff":
                chars.append(ch)
    pdfmetrics.registerFont(UnicodeCIDFont("HeiseiMin-W3"))
    buf = io.BytesIO()
    c = canvas.Canvas(buf)
    lines = ["".join(chars[k : k + 40]) for k in range(0, len(chars), 40)]
    for start in range(0, len(lines), 60):
        c.setFont("HeiseiMin-W3", 10)
        for n, line in enumerate(lines[start : start + 60]):
            c.drawString(20, 800 - 13 * n, line)
        c.showPage()
    c.setFont("HeiseiMin-W3", 10)
    c.drawString(200, 700, "型")  # one kanji on its own, as in a table cell
    c.showPage()
    c.save()
    data = buf.getvalue()
    with pdfplumber.open(io.BytesIO(data)) as pdf:
        plumber = [page.extract_text() for page in pdf.pages]
    pdf2 = pdfium.PdfDocument(data)
    pdfium_text = [pdf2[k].get_textpage().get_text_bounded() for k in range(len(pdf2))]
    pdf2.close()
    return {
        "characters": len(chars),
        "pdfplumber_found": len(set(chars) & set("".join(plumber))),
        "pypdfium2_found": len(set(chars) & set("".join(pdfium_text))),
        "lone_kanji_page": {"pdfplumber": plumber[-1], "pypdfium2": pdfium_text[-1]},
    }


def speed(rows: int, pages: int, repeat: int) -> list[dict[str, Any]]:
    """Conversion time of a ``rows``-row sheet and a ``pages``-page PDF, per path."""
    out: list[dict[str, Any]] = []
    sheet = large_workbook(rows)
    long_pdf = paged_pdf(pages=pages, filler=40)
    sheet_size, pdf_size = f"{rows} rows x 8 columns", f"{pages} pages x 43 lines"
    cases: list[tuple[SampleDocument, str, str, Converter]] = [
        (sheet, sheet_size, "markitdown", markitdown_default),
        (sheet, sheet_size, "chosen", chosen),
        (long_pdf, pdf_size, "markitdown", markitdown_default),
        (long_pdf, pdf_size, "chosen", chosen),
        (long_pdf, pdf_size, "pypdfium2 pages", pdfium_pages),
    ]
    for doc, size, path, converter in cases:
        (text, _), seconds = _best_time(partial(converter, doc), repeat)
        out.append(
            {
                "document": doc.name,
                "size": size,
                "path": path,
                "seconds": round(seconds, 3),
                "chars": len(text),
            }
        )
    return out


MARK_START = "<!-- bench:formats:start -->"
MARK_END = "<!-- bench:formats:end -->"


def _cell(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"| {r['document']} | {r['path']} | error: {str(r['error'])[:80]} | | | | |"
    title = "yes" if r["title_ok"] else "no"
    cells = (r["document"], r["path"], r["strings"], r["trails"], title, r["chars"], f"{r['ms']:.1f}")
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table(rows: list[dict[str, Any]]) -> list[str]:
    return [
        "| document | path | known strings found | heading trails | title | chars | ms (best) |",
        "|---|---|---|---|---|---|---|",
        *(_cell(r) for r in rows),
    ]


def section(report: dict[str, Any], json_path: str) -> str:
    link = json_path.split("docs/")[-1]
    glyphs = report["pdf_glyphs"]
    speed_rows = [f"| {t['size']} | {t['path']} | {t['seconds']} |" for t in report["speed"]]
    return "\n".join(
        [
            MARK_START,
            "### Document formats",
            "",
            f"`{report['command']}` — figures in [`{json_path}`]({link}). Japanese documents built by",
            "`serve_app/testing/documents.py` (the ones the format tests use), converted by markitdown's",
            "default path and by the chosen one; a string counts when found verbatim, a trail when some",
            "chunk carries it.",
            "",
            *table(report["documents"]),
            "",
            "| input | path | seconds |",
            "|---|---|---|",
            *speed_rows,
            "",
            f"PDF glyphs in reportlab's HeiseiMin-W3: pdfplumber {glyphs['pdfplumber_found']}/"
            f"{glyphs['characters']}, pypdfium2 {glyphs['pypdfium2_found']}/{glyphs['characters']}; "
            f"a kanji alone on a line: pdfplumber {glyphs['lone_kanji_page']['pdfplumber']!r}, "
            f"pypdfium2 {glyphs['lone_kanji_page']['pypdfium2']!r}.",
            "",
            MARK_END,
        ]
    )


def run_formats_bench(
    *,
    out: Path,
    markdown: Path,
    rows: int = 10_000,
    pages: int = 100,
    repeat: int = 3,
    command: str = "specrag bench formats",
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measure every sample document on every path, then speed and glyph coverage; write both files."""
    chosen(sample_documents()[0])  # import and first-use costs out of the timings
    found: list[dict[str, Any]] = []
    for doc in sample_documents():
        found.append(measure(doc, "markitdown", markitdown_default, repeat))
        found.append(measure(doc, "chosen", chosen, repeat))
        if doc.name.endswith(".pdf"):
            found.append(measure(doc, "pypdfium2 pages", pdfium_pages, repeat))
    for line in table(found):
        echo(line)
    timings = speed(rows, pages, min(repeat, 2))
    for t in timings:
        echo(f"{t['size']:<26} {t['path']:<16} {t['seconds']:>8.3f} s {t['chars']:>9} chars")
    glyphs = glyph_coverage()
    report: dict[str, Any] = {
        "command": command,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_facts(),
        "documents": found,
        "speed": timings,
        "pdf_glyphs": glyphs,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    text = markdown.read_text(encoding="utf-8") if markdown.exists() else ""
    markdown.write_text(replace_section(text, section(report, str(out))), encoding="utf-8")
    return report
