"""Japanese design documents built in memory: the files ``core.formats`` must read, with what they hold.

The converter tests and ``specrag bench formats`` (the measurement behind the choice of
converter per format) read the same files, built here rather than checked in as binaries: each
builder returns a ``SampleDocument`` naming the strings that must come out verbatim and the heading
trails the chunks must carry, so a test and the measurement judge a converter by the same facts.

The builders need the test-only writers (python-docx, reportlab) besides openpyxl and python-pptx;
they are imported inside the builders, so importing this module needs none of them.
"""

from __future__ import annotations

import datetime as dt
import io
import struct
import zlib
from dataclasses import dataclass
from typing import Any

__all__ = [
    "SampleDocument",
    "deck_pptx",
    "design_docx",
    "design_html",
    "encrypted_ooxml",
    "encrypted_pdf",
    "form_pdf",
    "grid_workbook",
    "large_workbook",
    "multi_sheet_workbook",
    "paged_pdf",
    "png",
    "restricted_pdf",
    "sample_documents",
    "scanned_pdf",
]


@dataclass(frozen=True, slots=True)
class SampleDocument:
    """One built file and what a good conversion keeps of it.

    ``strings``: text (cells, sentences, clean table rows) that must appear verbatim in the Markdown.
    ``trails``: heading trails below the document title that some chunk must carry (sheet and
    table title, slide title, page number, chapter and section).
    """

    name: str
    data: bytes
    title: str | None
    strings: tuple[str, ...]
    trails: tuple[tuple[str, ...], ...]


# --------------------------------------------------------------------------------------------------
# Spreadsheets

_ITEMS = (  # 項目名, 型, 桁数, 必須, 備考
    ("受注番号", "CHAR", "10", "○", "採番テーブルから取得"),
    ("顧客コード", "CHAR", "8", "○", "顧客マスタを参照"),
    ("受注日", "DATE", "", "○", ""),
    ("合計金額", "NUMBER", "12", "", "税込み"),
    ("備考欄", "VARCHAR", "200", "", "全角100文字まで"),
)


def _row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def grid_workbook() -> SampleDocument:
    """A 方眼紙 sheet: a grid of 2-character-wide columns, every label and value a merged range.

    Row 1 title (bold, merged over the whole form), a header form (label/value pairs), a bold
    "■ 項目定義" title cell, a table whose columns (No / 項目名 / 型 / 桁数 / 必須 / 備考) each span
    2-12 grid columns, and a bold "■ 補足" followed by a note merged over the full width.
    """
    from openpyxl import Workbook  # type: ignore[import-untyped]
    from openpyxl.styles import Font  # type: ignore[import-untyped]

    wb = Workbook()
    ws = wb.active
    ws.title = "テーブル定義"
    for col in range(1, 41):
        ws.column_dimensions[_col(col)].width = 2.5
    bold = Font(bold=True)

    def put(row: int, c1: int, c2: int, value: object, *, strong: bool = False) -> None:
        ws.cell(row=row, column=c1, value=value)
        if c2 > c1:
            ws.merge_cells(start_row=row, start_column=c1, end_row=row, end_column=c2)
        if strong:
            ws.cell(row=row, column=c1).font = bold

    put(1, 1, 32, "テーブル定義書", strong=True)
    put(3, 1, 4, "システム名")
    put(3, 5, 16, "受注管理システム")
    put(3, 17, 20, "作成者")
    put(3, 21, 32, "山田太郎")
    put(4, 1, 4, "テーブル名")
    put(4, 5, 16, "受注（T_ORDER）")
    put(4, 17, 20, "作成日")
    put(4, 21, 32, dt.date(2024, 4, 1))
    put(6, 1, 1, "■ 項目定義", strong=True)
    spans = ((1, 2), (3, 10), (11, 14), (15, 17), (18, 20), (21, 32))
    for (c1, c2), head in zip(spans, ("No", "項目名", "型", "桁数", "必須", "備考"), strict=True):
        put(7, c1, c2, head, strong=True)
    for k, item in enumerate(_ITEMS, start=1):
        row = 7 + k
        values: tuple[object, ...] = (k, *item)
        for (c1, c2), value in zip(spans, values, strict=True):
            if value == "":
                ws.merge_cells(start_row=row, start_column=c1, end_row=row, end_column=c2)  # empty, merged
            else:
                put(row, c1, c2, int(value) if isinstance(value, str) and value.isdigit() else value)
    put(14, 1, 1, "■ 補足", strong=True)
    put(15, 1, 32, "受注番号は採番テーブル（T_SEQ）から取得し、欠番は再利用しない。")
    strings = (
        "受注管理システム",
        "山田太郎",
        "2024-04-01",
        "受注（T_ORDER）",
        _row("No", "項目名", "型", "桁数", "必須", "備考"),
        *(_row(str(k), *item) for k, item in enumerate(_ITEMS, start=1)),
        "受注番号は採番テーブル（T_SEQ）から取得し、欠番は再利用しない。",
    )
    trails = (("テーブル定義", "■ 項目定義"), ("テーブル定義", "■ 補足"))
    return SampleDocument(
        "テーブル定義書_受注.xlsx",
        _workbook_bytes(wb, title="受注テーブル定義書"),
        "受注テーブル定義書",
        strings,
        trails,
    )


def multi_sheet_workbook() -> SampleDocument:
    """Several sheets: a defined Excel table, a plain list, a formula, a hidden and an empty sheet."""
    from openpyxl import Workbook
    from openpyxl.worksheet.table import Table  # type: ignore[import-untyped]

    wb = Workbook()
    screens = wb.active
    screens.title = "画面一覧"
    screens.append(["画面ID", "画面名", "概要"])
    rows = [
        ("SC001", "ログイン画面", "利用者IDとパスワードで認証する"),
        ("SC002", "受注登録画面", "受注を新規に登録する"),
        ("SC003", "受注照会画面", "受注番号で受注を検索する"),
    ]
    for r in rows:
        screens.append(list(r))
    screens.add_table(Table(displayName="画面一覧表", ref="A1:C4"))

    history = wb.create_sheet("変更履歴")
    history["A1"] = "変更履歴"
    history["A3"], history["B3"], history["C3"], history["D3"] = "版", "日付", "変更内容", "工数"
    history["A4"], history["B4"], history["C4"], history["D4"] = "1.0", dt.date(2024, 4, 1), "初版作成", 3
    history["A5"], history["B5"], history["C5"], history["D5"] = (
        "1.1",
        dt.date(2024, 5, 10),
        "受注照会画面を追加",
        2,
    )
    history["A6"], history["C6"] = "合計", "工数の合計"
    history["D6"] = "=SUM(D4:D5)"  # no cached value: openpyxl does not calculate
    history["A8"] = "システム名: 受注管理"

    hidden = wb.create_sheet("作業用")
    hidden["A1"] = "非表示シートの内容"
    hidden.sheet_state = "hidden"
    wb.create_sheet("空シート")

    strings = (
        _row("画面ID", "画面名", "概要"),
        *(_row(*r) for r in rows),
        _row("版", "日付", "変更内容", "工数"),
        _row("1.0", "2024-04-01", "初版作成", "3"),
        _row("1.1", "2024-05-10", "受注照会画面を追加", "2"),
        "システム名: 受注管理",
    )
    trails = (("画面一覧", "画面一覧表"), ("変更履歴", "変更履歴"))
    return SampleDocument("画面設計書.xlsx", _workbook_bytes(wb, title=None), None, strings, trails)


def large_workbook(rows: int = 10_000) -> SampleDocument:
    """One sheet of ``rows`` rows x 8 columns (a log-like list): the converter's speed check."""
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.title = "エラーコード一覧"
    ws.append(["コード", "区分", "メッセージ", "対処", "重要度", "画面ID", "登録日", "担当"])
    for k in range(1, rows + 1):
        ws.append(
            [
                f"E{k:05d}",
                "業務",
                f"受注{k}件目の処理に失敗しました",
                "再実行する",
                k % 5,
                f"SC{k % 97:03d}",
                dt.date(2024, 1, 1) + dt.timedelta(days=k % 365),
                "運用チーム",
            ]
        )
    strings = (
        _row(
            "E00001",
            "業務",
            "受注1件目の処理に失敗しました",
            "再実行する",
            "1",
            "SC001",
            "2024-01-02",
            "運用チーム",
        ),
    )
    return SampleDocument(
        f"大量行_{rows}.xlsx", _workbook_bytes(wb, title=None), None, strings, (("エラーコード一覧",),)
    )


def _col(index: int) -> str:
    from openpyxl.utils import get_column_letter  # type: ignore[import-untyped]

    return str(get_column_letter(index))


def _workbook_bytes(wb: Any, *, title: str | None) -> bytes:
    if title:
        wb.properties.title = title
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------
# Word and PowerPoint


def design_docx() -> SampleDocument:
    """A basic design document: Heading 1/2 chapters, paragraphs, a table, a Japanese-named heading style."""
    from docx import Document
    from docx.enum.style import WD_STYLE_TYPE

    doc = Document()
    doc.core_properties.title = "受注管理システム 基本設計書"
    doc.add_heading("1. 概要", level=1)
    doc.add_paragraph("本書は受注管理システムの基本設計を定める。対象は受注登録と受注照会である。")
    doc.add_heading("1.1 目的", level=2)
    doc.add_paragraph("受注業務の入力ミスを減らし、出荷までのリードタイムを短縮する。")
    doc.add_paragraph("受注テーブル T_ORDER の主キーは ORDER_NO とする。")
    doc.add_heading("2. 機能一覧", level=1)
    table = doc.add_table(rows=1, cols=3)
    for cell, text in zip(table.rows[0].cells, ("機能ID", "機能名", "説明"), strict=True):
        cell.text = text
    functions = (("F01", "受注登録", "受注を登録する"), ("F02", "受注照会", "受注番号で検索する"))
    for values in functions:
        for cell, text in zip(table.add_row().cells, values, strict=True):
            cell.text = text
    ja_heading = doc.styles.add_style("見出し 2", WD_STYLE_TYPE.PARAGRAPH)  # a template's own heading style
    doc.add_paragraph("2.1 非機能要件", style=ja_heading)
    doc.add_paragraph("画面の応答時間は3秒以内とする。")
    buf = io.BytesIO()
    doc.save(buf)
    strings = (
        "本書は受注管理システムの基本設計を定める。",
        "受注業務の入力ミスを減らし、出荷までのリードタイムを短縮する。",
        "受注テーブル T_ORDER の主キーは ORDER_NO とする。",
        _row("機能ID", "機能名", "説明"),
        _row("F01", "受注登録", "受注を登録する"),
        _row("F02", "受注照会", "受注番号で検索する"),
        "画面の応答時間は3秒以内とする。",
    )
    trails = (("1. 概要",), ("1. 概要", "1.1 目的"), ("2. 機能一覧",), ("2. 機能一覧", "2.1 非機能要件"))
    return SampleDocument("基本設計書.docx", buf.getvalue(), "受注管理システム 基本設計書", strings, trails)


def png() -> bytes:
    """A 1x1 white PNG (no imaging library needed)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0\xff\xff\xff"))
        + chunk(b"IEND", b"")
    )


def deck_pptx() -> SampleDocument:
    """A 4-slide deck: three titled slides (one with a table, one with a picture and notes), one untitled."""
    from pptx import Presentation
    from pptx.util import Inches

    prs = Presentation()
    prs.core_properties.title = "受注管理システム 説明資料"
    layout = prs.slide_layouts[1]  # title and content

    slide = prs.slides.add_slide(layout)
    slide.shapes.title.text = "システム概要"
    slide.placeholders[1].text = "受注から出荷までを一元管理する。\n既存の販売管理システムと連携する。"

    slide = prs.slides.add_slide(prs.slide_layouts[5])  # title only
    slide.shapes.title.text = "画面構成"
    rows = (("画面ID", "画面名"), ("SC001", "ログイン画面"), ("SC002", "受注登録画面"))
    shape = slide.shapes.add_table(3, 2, Inches(1), Inches(2), Inches(6), Inches(2))
    for r, values in enumerate(rows):
        for c, text in enumerate(values):
            shape.table.cell(r, c).text = text

    slide = prs.slides.add_slide(layout)
    slide.shapes.title.text = "今後の予定\n（2024年度）"
    slide.placeholders[1].text = "第2四半期に受注照会を公開する。"
    slide.shapes.add_picture(io.BytesIO(png()), Inches(6), Inches(5))
    slide.notes_slide.notes_text_frame.text = "リリース日は営業部と調整中。"

    slide = prs.slides.add_slide(prs.slide_layouts[6])  # blank: no title
    box = slide.shapes.add_textbox(Inches(1), Inches(1), Inches(6), Inches(1))
    box.text_frame.text = "問い合わせ先: 情報システム部"

    buf = io.BytesIO()
    prs.save(buf)
    strings = (
        "受注から出荷までを一元管理する。",
        "既存の販売管理システムと連携する。",
        _row("SC001", "ログイン画面"),
        "第2四半期に受注照会を公開する。",
        "リリース日は営業部と調整中。",
        "問い合わせ先: 情報システム部",
    )
    trails = (("システム概要",), ("画面構成",), ("今後の予定 （2024年度）",), ("Slide 4",))
    return SampleDocument("説明資料.pptx", buf.getvalue(), "受注管理システム 説明資料", strings, trails)


# --------------------------------------------------------------------------------------------------
# PDF

_PAGES = (
    ("1. はじめに", ("本書は受注管理システムの運用手順を定める。", "対象読者は運用担当者である。")),
    ("2. 日次処理", ("毎日22時に受注データを集計する。", "集計に失敗した場合は翌朝に再実行する。")),
    ("3. 障害対応", ("障害発生時は情報システム部へ連絡する。", "連絡先は内線1234である。")),
)


def _pdf_canvas(buf: io.BytesIO, **kwargs: Any) -> Any:
    from reportlab.lib.pagesizes import A4  # type: ignore[import-untyped]
    from reportlab.pdfbase import pdfmetrics  # type: ignore[import-untyped]
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont  # type: ignore[import-untyped]
    from reportlab.pdfgen import canvas  # type: ignore[import-untyped]

    pdfmetrics.registerFont(UnicodeCIDFont("HeiseiMin-W3"))
    return canvas.Canvas(buf, pagesize=A4, **kwargs)


def paged_pdf(*, pages: int = 3, filler: int = 0, encrypt: object = None) -> SampleDocument:
    """A4 pages of Japanese text in reportlab's CID font HeiseiMin-W3, with a metadata title.

    Pages repeat the three chapters' text (1. はじめに, 2. 日次処理, 3. 障害対応) when ``pages`` > 3,
    ``filler`` adds that many lines of body text to each page (a realistic page for timings);
    ``encrypt`` is reportlab's (a user password, or a ``StandardEncryption``).
    """
    buf = io.BytesIO()
    c = _pdf_canvas(buf, encrypt=encrypt)
    c.setTitle("受注管理システム 運用手順書")
    for k in range(pages):
        heading, lines = _PAGES[k % len(_PAGES)]
        c.setFont("HeiseiMin-W3", 16)
        c.drawString(72, 770, heading)
        c.setFont("HeiseiMin-W3", 11)
        for n, line in enumerate(lines):
            c.drawString(72, 740 - 18 * n, line)
        for n in range(filler):
            line = f"{n + 1}行目：受注データは日次で集計し、結果を管理画面（SC{n:03d}）に表示する。"
            c.drawString(72, 700 - 15 * n, line)
        c.showPage()
    c.save()
    strings = tuple(text for heading, lines in _PAGES[:pages] for text in (heading, *lines))
    trails = tuple((f"p. {k}",) for k in range(1, min(pages, len(_PAGES)) + 1))
    return SampleDocument("運用手順書.pdf", buf.getvalue(), "受注管理システム 運用手順書", strings, trails)


def form_pdf() -> SampleDocument:
    """A form-like page: a letter-spaced (字間) heading and a table whose cells are drawn one by one,
    some a single kanji (型) or mark (○) — where PDF text extractors differ."""
    buf = io.BytesIO()
    c = _pdf_canvas(buf)
    c.setTitle("Microsoft Word - テーブル定義書.docx")
    text = c.beginText(72, 780)
    text.setFont("HeiseiMin-W3", 14)
    text.setCharSpace(6)
    text.textLine("受注テーブル定義")
    c.drawText(text)
    text = c.beginText(72, 760)
    text.setCharSpace(0)  # the spacing stays in the page's text state: reset it for the table
    c.drawText(text)
    rows = (("項目名", "型", "桁数", "必須"), ("受注番号", "CHAR", "10", "○"), ("受注日", "DATE", "8", "○"))
    c.setFont("HeiseiMin-W3", 10)
    for r, cells in enumerate(rows):
        for x, value in zip((72, 200, 280, 340), cells, strict=True):
            c.drawString(x, 730 - 16 * r, value)
    c.drawString(72, 670, "必須欄が○の項目は省略できない。")
    c.showPage()
    c.save()
    strings = (
        "受注テーブル定義",
        "項目名 型 桁数 必須",
        "受注番号 CHAR 10 ○",
        "必須欄が○の項目は省略できない。",
    )
    return SampleDocument("帳票.pdf", buf.getvalue(), "テーブル定義書", strings, (("p. 1",),))


def encrypted_pdf() -> SampleDocument:
    """The three-page PDF behind a user password: it cannot be opened without one."""
    doc = paged_pdf(encrypt="secret")
    return SampleDocument("暗号化.pdf", doc.data, None, (), ())


def restricted_pdf() -> SampleDocument:
    """The three-page PDF with an owner password only (no copying): anyone may open it, as
    distributed specs often are; its strings are encrypted like a password-protected file's."""
    from reportlab.lib.pdfencrypt import StandardEncryption  # type: ignore[import-untyped]

    doc = paged_pdf(encrypt=StandardEncryption("", ownerPassword="owner", canCopy=0))
    return SampleDocument("運用手順書_コピー禁止.pdf", doc.data, doc.title, doc.strings, doc.trails)


def scanned_pdf() -> SampleDocument:
    """A page of drawn shapes and no text layer, as a scanner's image-only PDF reads to a converter."""
    buf = io.BytesIO()
    c = _pdf_canvas(buf)
    c.rect(72, 600, 300, 150, fill=1)
    c.showPage()
    c.save()
    return SampleDocument("スキャン.pdf", buf.getvalue(), None, (), ())


# --------------------------------------------------------------------------------------------------
# HTML and unreadable files


def design_html(encoding: str = "utf-8") -> SampleDocument:
    """An exported wiki page: title, navigation, a script, h1-h3 and a table, declared in ``encoding``."""
    page = f"""<!DOCTYPE html>
<html lang="ja"><head>
<meta http-equiv="Content-Type" content="text/html; charset={encoding}">
<title>受注管理 API 仕様</title>
<script>var tracking = "スクリプトの中身";</script>
<style>body {{ font-family: sans-serif; }}</style>
</head><body>
<nav><a href="/">ホーム</a> &gt; <a href="/spec">仕様一覧</a></nav>
<h1>受注管理 API 仕様</h1>
<p>受注 API は受注の登録と照会を提供する。</p>
<h2>認証</h2>
<p>すべての要求にアクセストークンが必要である。</p>
<p>要求ヘッダ X_REQUEST_ID に一意な値を入れる。</p>
<h3>トークンの有効期限</h3>
<p>アクセストークンの有効期限は30分とする。</p>
<h2>エラーコード</h2>
<table>
<tr><th>コード</th><th>意味</th></tr>
<tr><td>E001</td><td>受注番号が存在しない</td></tr>
<tr><td>E002</td><td>在庫が不足している</td></tr>
</table>
</body></html>
"""
    strings = (
        "受注 API は受注の登録と照会を提供する。",
        "すべての要求にアクセストークンが必要である。",
        "要求ヘッダ X_REQUEST_ID に一意な値を入れる。",
        "アクセストークンの有効期限は30分とする。",
        _row("E001", "受注番号が存在しない"),
        _row("E002", "在庫が不足している"),
    )
    trails = (("認証",), ("認証", "トークンの有効期限"), ("エラーコード",))  # the h1 is the title
    suffix = "" if encoding == "utf-8" else f"_{encoding}"
    return SampleDocument(
        f"api仕様{suffix}.html", page.encode(encoding), "受注管理 API 仕様", strings, trails
    )


def encrypted_ooxml() -> bytes:
    """The start of a password-protected .docx/.xlsx/.pptx: an OLE compound file holding the
    ``EncryptionInfo`` and ``EncryptedPackage`` streams (their directory names are UTF-16)."""
    header = bytes.fromhex("d0cf11e0a1b11ae1") + bytes(16) + struct.pack("<HHH", 0x3E, 3, 0xFFFE)
    names = "EncryptionInfo".encode("utf-16-le") + bytes(50) + "EncryptedPackage".encode("utf-16-le")
    return header.ljust(512, b"\0") + names.ljust(1024, b"\0")


def sample_documents() -> list[SampleDocument]:
    """One readable document per kind the converters handle (what the measurement compares)."""
    return [
        design_docx(),
        deck_pptx(),
        grid_workbook(),
        multi_sheet_workbook(),
        paged_pdf(),
        form_pdf(),
        restricted_pdf(),
        design_html(),
        design_html("shift_jis"),
    ]
