"""HTML pages as ingestion reads them: heading trails, tables, charsets (Shift_JIS exports), title."""

from __future__ import annotations

import codecs

import pytest

from serve_app.core.chunking import chunk_markdown
from serve_app.core.formats import UnreadableDocument, convert
from serve_app.core.formats.html import decode_html
from serve_app.testing.documents import design_html

_T = "受注管理 API 仕様"


def _trails(name: str, data: bytes) -> tuple[str | None, str, dict[tuple[str, ...], str]]:
    converted = convert(name, data)
    assert converted is not None and converted.fmt == "markdown"
    chunks = chunk_markdown(converted.text, doc_title=converted.title or name.rsplit(".", 1)[0])
    return converted.title, converted.text, {c.title_path: c.text for c in chunks}


@pytest.mark.parametrize("encoding", ["utf-8", "shift_jis"])
def test_headings_become_the_trail_and_navigation_and_scripts_are_gone(encoding: str) -> None:
    doc = design_html(encoding)
    title, text, trails = _trails(doc.name, doc.data)
    assert title == _T
    assert trails == {
        (_T,): "受注 API は受注の登録と照会を提供する。",  # the h1 is the title: not repeated in the trail
        (
            _T,
            "認証",
        ): "すべての要求にアクセストークンが必要である。\n\n要求ヘッダ X_REQUEST_ID に一意な値を入れる。",
        (_T, "認証", "トークンの有効期限"): "アクセストークンの有効期限は30分とする。",
        (
            _T,
            "エラーコード",
        ): "| コード | 意味 |\n| --- | --- |\n| E001 | 受注番号が存在しない |\n| E002 | 在庫が不足している |",
    }
    assert "ホーム" not in text and "スクリプト" not in text and "font-family" not in text


def test_a_table_without_header_cells_uses_its_first_row_and_images_keep_only_descriptions() -> None:
    page = (
        "<html><body><h2>画面一覧</h2><table><tr><td>画面ID</td><td>画面名</td></tr>"
        "<tr><td>SC001</td><td>ログイン画面</td></tr></table>"
        '<p><img src="arch.png" alt="システム構成図"> <img src="x.png" alt="image1.png">'
        '<img src="y.png"></p>'
        "</body></html>"
    )
    title, _, trails = _trails("画面.html", page.encode())
    assert title is None
    assert (
        trails[("画面", "画面一覧")]
        == "| 画面ID | 画面名 |\n| --- | --- |\n| SC001 | ログイン画面 |\n\nシステム構成図"
    )


def test_charsets_from_bom_declaration_or_guess() -> None:
    text = (
        "<html><head><title>受注</title></head><body>"
        "<p>受注は営業部が登録し、出荷は物流部が担当する。①～③の手順で処理する。</p></body></html>"
    )
    windows = text.encode("cp932")  # ① and ～ exist in Windows' Shift_JIS only
    assert decode_html(windows) == text  # no declaration: guessed, read as cp932
    declared = text.replace("<head>", '<head><meta charset="Shift_JIS">')
    assert decode_html(declared.encode("cp932")) == declared
    euc = text.replace("①～③", "三つ").replace(
        "<head>", "<head><meta http-equiv='Content-Type' content='text/html; charset=EUC-JP'>"
    )
    assert decode_html(euc.encode("euc-jp")) == euc
    assert decode_html(codecs.BOM_UTF8 + text.encode()) == text
    assert decode_html(codecs.BOM_UTF16_LE + text.encode("utf-16-le")) == text
    mislabelled = text.replace("<head>", '<head><meta charset="shift_jis">').encode()  # says SJIS, is UTF-8
    assert decode_html(mislabelled) == mislabelled.decode()


def test_an_empty_page_is_refused() -> None:
    with pytest.raises(UnreadableDocument, match=r"^empty file$"):
        convert("空.html", b"  \n")
