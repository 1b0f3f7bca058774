"""Word, PowerPoint and Excel files as ingestion reads them: chunk texts, heading trails, titles, refusals."""

from __future__ import annotations

import datetime as dt
import io
import time
import zipfile
from pathlib import PurePosixPath

import pytest
from openpyxl import Workbook  # type: ignore[import-untyped]
from openpyxl.styles import Font  # type: ignore[import-untyped]

from serve_app.core.chunking import Chunk, chunk_markdown
from serve_app.core.formats import UnreadableDocument, convert
from serve_app.testing.documents import (
    deck_pptx,
    design_docx,
    encrypted_ooxml,
    grid_workbook,
    large_workbook,
    multi_sheet_workbook,
)


def _chunks(name: str, data: bytes) -> tuple[str | None, str, list[Chunk]]:
    """As ingestion does it: convert, then chunk under the file's title (else its stem)."""
    converted = convert(name, data)
    assert converted is not None and converted.fmt == "markdown"
    title = converted.title or PurePosixPath(name).stem
    return converted.title, converted.text, chunk_markdown(converted.text, doc_title=title)


def _by_trail(chunks: list[Chunk]) -> dict[tuple[str, ...], str]:
    out: dict[tuple[str, ...], str] = {}
    for chunk in chunks:
        out[chunk.title_path] = (out.get(chunk.title_path, "") + "\n" + chunk.text).strip()
    return out


def _xlsx(wb: Workbook) -> bytes:
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------
# Excel


def test_a_grid_paper_sheet_becomes_clean_tables_under_sheet_and_table_titles() -> None:
    doc = grid_workbook()
    title, text, chunks = _chunks(doc.name, doc.data)
    assert title == "受注テーブル定義書"
    trails = _by_trail(chunks)
    items = trails[("受注テーブル定義書", "テーブル定義", "■ 項目定義")]
    assert items.split("\n") == [
        "| No | 項目名 | 型 | 桁数 | 必須 | 備考 |",
        "| --- | --- | --- | --- | --- | --- |",
        "| 1 | 受注番号 | CHAR | 10 | ○ | 採番テーブルから取得 |",
        "| 2 | 顧客コード | CHAR | 8 | ○ | 顧客マスタを参照 |",
        "| 3 | 受注日 | DATE |  | ○ |  |",  # empty merged cells stay empty cells, once
        "| 4 | 合計金額 | NUMBER | 12 |  | 税込み |",
        "| 5 | 備考欄 | VARCHAR | 200 |  | 全角100文字まで |",
    ]
    # the bold title row names the header form below it; the date is a date, not a datetime
    assert trails[("受注テーブル定義書", "テーブル定義", "テーブル定義書")].split("\n")[::2] == [
        "| システム名 | 受注管理システム | 作成者 | 山田太郎 |",
        "| テーブル名 | 受注（T_ORDER） | 作成日 | 2024-04-01 |",
    ]
    assert trails[("受注テーブル定義書", "テーブル定義", "■ 補足")] == (
        "受注番号は採番テーブル（T_SEQ）から取得し、欠番は再利用しない。"
    )
    assert len(trails) == 3
    assert "Unnamed" not in text and "NaN" not in text and "||" not in text


def test_a_workbook_keeps_sheet_order_and_skips_hidden_and_empty_sheets() -> None:
    doc = multi_sheet_workbook()
    title, text, chunks = _chunks(doc.name, doc.data)
    assert title is None  # no title property: ingestion uses the file stem
    trails = _by_trail(chunks)
    assert list(trails) == [("画面設計書", "画面一覧", "画面一覧表"), ("画面設計書", "変更履歴", "変更履歴")]
    screens = trails[("画面設計書", "画面一覧", "画面一覧表")]  # the Excel table's name is the heading
    assert "| SC002 | 受注登録画面 | 受注を新規に登録する |" in screens.split("\n")
    history = trails[("画面設計書", "変更履歴", "変更履歴")].split("\n")
    assert history[:5] == [
        "| 版 | 日付 | 変更内容 | 工数 |",
        "| --- | --- | --- | --- |",
        "| 1.0 | 2024-04-01 | 初版作成 | 3 |",
        "| 1.1 | 2024-05-10 | 受注照会画面を追加 | 2 |",
        "| 合計 |  | 工数の合計 |  |",  # a formula without a cached value reads as empty
    ]
    assert history[-1] == "システム名: 受注管理"  # a lone label cell is a paragraph
    assert "非表示シート" not in text and "作業用" not in text and "空シート" not in text
    assert text.index("# 画面一覧") < text.index("# 変更履歴")


def test_a_macro_workbook_reads_like_a_workbook() -> None:
    doc = multi_sheet_workbook()
    assert convert("画面設計書.xlsm", doc.data) == convert("画面設計書.xlsx", doc.data)


def test_a_table_without_a_title_is_named_by_its_range_and_text_after_it_stays() -> None:
    wb = Workbook()
    ws = wb.active
    ws.title = "一覧"
    ws["A1"] = "前文：この一覧は毎月更新する。"
    for row in (("B", 3, "コード", "名称"), ("B", 4, "01", "東京"), ("B", 5, "02", "大阪")):
        ws[f"B{row[1]}"], ws[f"C{row[1]}"] = row[2], row[3]
    ws["B7"] = "■ 注意"
    ws["B8"] = "# 見出しではない"
    ws["B9"] = "----"
    _, _, chunks = _chunks("地域.xlsx", _xlsx(wb))
    trails = _by_trail(chunks)
    assert trails[("地域", "一覧")] == "前文：この一覧は毎月更新する。"
    assert trails[("地域", "一覧", "B3:C5")].split("\n")[2:] == ["| 01 | 東京 |", "| 02 | 大阪 |"]
    # a marked lone cell is a heading; cell text that looks like Markdown structure is not
    assert trails[("地域", "一覧", "■ 注意")] == "\\# 見出しではない\n\\----"
    assert len(trails) == 3


def test_cell_values_read_as_excel_shows_them() -> None:
    wb = Workbook()
    ws = wb.active
    ws.append(["項目", "値", "備考"])
    ws.append(["率", 0.15, "割合"])
    ws["B2"].number_format = "0%"
    ws.append(["件数", 1200.0, "整数の浮動小数"])
    ws.append(["単価", 0.1 + 0.2, "15桁"])
    ws.append(["有効", True, "論理値"])
    ws.append(["日時", dt.datetime(2024, 4, 1, 9, 30), "時刻つき"])
    ws.append(["区切り", "A|B", "改行\nあり"])
    ws["A1"].font = Font(bold=True)
    _, text, _ = _chunks("値.xlsx", _xlsx(wb))
    rows = text.split("\n")
    for row in (
        "| 率 | 15% | 割合 |",
        "| 件数 | 1200 | 整数の浮動小数 |",
        "| 単価 | 0.3 | 15桁 |",
        "| 有効 | TRUE | 論理値 |",
        "| 日時 | 2024-04-01 09:30 | 時刻つき |",
        "| 区切り | A\\|B | 改行 あり |",
    ):
        assert row in rows


def test_a_large_sheet_converts_quickly_and_splits_between_rows_with_its_header() -> None:
    doc = large_workbook(2_000)
    started = time.perf_counter()
    _, text, chunks = _chunks(doc.name, doc.data)
    assert time.perf_counter() - started < 10  # ~0.5 s; markitdown's pandas path takes ~4x as long
    assert doc.strings[0] in text.split("\n")
    table = [c for c in chunks if c.title_path == ("大量行_2000", "エラーコード一覧", "A1:H2001")]
    assert len(table) > 100
    header = "| コード | 区分 | メッセージ | 対処 | 重要度 | 画面ID | 登録日 | 担当 |"
    assert all(c.text.startswith(header + "\n| --- |") for c in table)
    assert all(line.startswith("| ") and line.endswith(" |") for c in table for line in c.text.split("\n"))


# --------------------------------------------------------------------------------------------------
# Word and PowerPoint


def test_a_word_document_keeps_its_chapters_paragraphs_and_table() -> None:
    doc = design_docx()
    title, _, chunks = _chunks(doc.name, doc.data)
    assert title == "受注管理システム 基本設計書"
    trails = _by_trail(chunks)
    t = "受注管理システム 基本設計書"
    assert list(trails) == [
        (t, "1. 概要"),
        (t, "1. 概要", "1.1 目的"),
        (t, "2. 機能一覧"),
        (t, "2. 機能一覧", "2.1 非機能要件"),
    ]
    assert (
        trails[(t, "1. 概要")] == "本書は受注管理システムの基本設計を定める。対象は受注登録と受注照会である。"
    )
    assert (
        "受注テーブル T_ORDER の主キーは ORDER_NO とする。" in trails[(t, "1. 概要", "1.1 目的")]
    )  # no T\_ORDER
    assert trails[(t, "2. 機能一覧")].split("\n") == [  # the first row is the header, not an empty one
        "| 機能ID | 機能名 | 説明 |",
        "| --- | --- | --- |",
        "| F01 | 受注登録 | 受注を登録する |",
        "| F02 | 受注照会 | 受注番号で検索する |",
    ]
    # a template's Japanese-named heading style ("見出し 2") is a heading too
    assert trails[(t, "2. 機能一覧", "2.1 非機能要件")] == "画面の応答時間は3秒以内とする。"


def test_a_deck_is_one_section_per_slide_under_its_title() -> None:
    doc = deck_pptx()
    title, text, chunks = _chunks(doc.name, doc.data)
    assert title == "受注管理システム 説明資料"
    t = "受注管理システム 説明資料"
    trails = _by_trail(chunks)
    assert list(trails) == [
        (t, "システム概要"),
        (t, "画面構成"),
        (t, "今後の予定 （2024年度）"),  # a two-line title, whole, on one line
        (t, "今後の予定 （2024年度）", "Notes"),
        (t, "Slide 4"),  # untitled
    ]
    assert (
        trails[(t, "システム概要")] == "受注から出荷までを一元管理する。\n既存の販売管理システムと連携する。"
    )
    assert "| SC001 | ログイン画面 |" in trails[(t, "画面構成")].split("\n")
    assert trails[(t, "今後の予定 （2024年度）")] == "第2四半期に受注照会を公開する。"  # no image placeholder
    assert trails[(t, "今後の予定 （2024年度）", "Notes")] == "リリース日は営業部と調整中。"
    assert trails[(t, "Slide 4")] == "問い合わせ先: 情報システム部"
    assert "<!--" not in text and "![" not in text and ".jpg" not in text


def test_pictures_leave_no_base64_or_placeholder_behind() -> None:
    from docx import Document
    from docx.shared import Inches

    from serve_app.testing.documents import png

    doc = Document()
    doc.add_heading("構成", 1)
    doc.add_paragraph("図の前。")
    doc.add_picture(io.BytesIO(png()), width=Inches(1))
    doc.add_paragraph("図の後。")
    buf = io.BytesIO()
    doc.save(buf)
    converted = convert("構成.docx", buf.getvalue())
    assert converted is not None and converted.text == "# 構成\n\n図の前。\n\n図の後。"


def test_an_unset_title_property_is_none() -> None:
    from pptx import Presentation

    buf = io.BytesIO()
    prs = Presentation()
    prs.slides.add_slide(prs.slide_layouts[0]).shapes.title.text = "表紙"
    prs.save(buf)
    converted = convert("表紙.pptx", buf.getvalue())
    assert converted is not None and converted.title is None and converted.text == "## 表紙"


# --------------------------------------------------------------------------------------------------
# Files that cannot be read


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        (
            "仕様.xls",
            bytes.fromhex("d0cf11e0a1b11ae1") + bytes(504),
            r"\.xls is the legacy binary Office format",
        ),
        (
            "仕様.doc",
            bytes.fromhex("d0cf11e0a1b11ae1") + bytes(504),
            r"\.doc is the legacy binary Office format",
        ),
        ("仕様.ppt", b"", r"\.ppt is the legacy binary Office format"),
        ("仕様.xlsx", b"PK\x03\x04\x14\x00garbage", r"not a valid \.xlsx file \(corrupt or truncated zip"),
        ("仕様.docx", design_docx().data[:3000], r"not a valid \.docx file \(corrupt or truncated zip"),
        ("仕様.pptx", _zip({"a.txt": b"x"}), r"not a valid \.pptx file \(a zip, but no Office Open XML"),
        ("仕様.docx", encrypted_ooxml(), r"^encrypted \(password-protected\) file"),
        ("仕様.xlsx", encrypted_ooxml(), r"^encrypted \(password-protected\) file"),
        ("仕様.pptx", encrypted_ooxml(), r"^encrypted \(password-protected\) file"),
        (
            "仕様.xlsx",
            bytes.fromhex("d0cf11e0a1b11ae1") + bytes(504),
            r"legacy binary Office file \(OLE\) named \.xlsx",
        ),
        ("仕様.docx", b"", r"^empty file$"),
        ("仕様.xlsm", b"", r"^empty file$"),
    ],
)
def test_unreadable_files_are_refused_with_a_reason(name: str, data: bytes, reason: str) -> None:
    with pytest.raises(UnreadableDocument, match=reason):
        convert(name, data)


def test_a_package_of_the_wrong_kind_is_refused_not_crashed() -> None:
    with pytest.raises(UnreadableDocument, match=r"cannot read 取り違え\.xlsx"):
        convert("取り違え.xlsx", design_docx().data)  # a Word file named .xlsx
