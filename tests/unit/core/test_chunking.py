"""Unit tests for serve_app.core.chunking: sentence rules, Markdown structure, size limits, no text loss."""

from __future__ import annotations

import dataclasses
import math
from itertools import pairwise

import pytest

from serve_app.core.chunking import (
    Chunk,
    chunk_document,
    chunk_markdown,
    chunk_text,
    detect_lang,
    split_sentences,
)

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is a test-only dependency
    given = None


def _nonspace(text: str) -> str:
    return "".join(ch for ch in text if not ch.isspace())


def _is_subsequence(needle: str, haystack: str) -> bool:
    it = iter(haystack)
    return all(ch in it for ch in needle)


# --------------------------------------------------------------------------------------------------
# detect_lang


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("認証にはトークンを使います。", "ja"),
        ("The token expires after one hour.", "en"),
        ("Ray Serve の replica を増やす", "ja"),  # mostly Latin letters, but enough kana/kanji
        ("Use the API token for the request 設定", "en"),  # 2 kanji among 29 letters < 20 %
        ("", "en"),
        ("1234 !!! --- 3.14", "en"),
    ],
)
def test_detect_lang(text: str, expected: str) -> None:
    assert detect_lang(text) == expected


# --------------------------------------------------------------------------------------------------
# split_sentences


def test_split_japanese_sentences() -> None:
    text = "認証にはトークンを使います。有効期限は1時間です！更新できますか？はい。"
    assert split_sentences(text) == [
        "認証にはトークンを使います。",
        "有効期限は1時間です！",
        "更新できますか？",
        "はい。",
    ]


def test_split_english_keeps_abbreviations_decimals_versions_urls() -> None:
    text = (
        "Use e.g. Redis or Milvus, i.e. a store. Dr. Smith paid $3.14 vs. $2.50 etc. for v1.2.3 of "
        "config.yaml. See https://example.com/docs/v1.2/index.html now. Done!"
    )
    assert split_sentences(text) == [
        "Use e.g. Redis or Milvus, i.e. a store.",
        "Dr. Smith paid $3.14 vs. $2.50 etc. for v1.2.3 of config.yaml.",
        "See https://example.com/docs/v1.2/index.html now.",
        "Done!",
    ]


def test_split_closing_brackets_stay_with_their_sentence() -> None:
    assert split_sentences("彼は「了解しました。」次の手順に進む。") == [
        "彼は「了解しました。」",
        "次の手順に進む。",
    ]
    # A quotation continued by と is one sentence, and 。 inside 「…」 does not end it.
    assert split_sentences("「はい。そうです。」と答えた。次へ。") == [
        "「はい。そうです。」と答えた。",
        "次へ。",
    ]
    assert split_sentences('He said "stop." Then he left.') == ['He said "stop."', "Then he left."]
    assert split_sentences("（詳細は後述。）本文です。") == ["（詳細は後述。）", "本文です。"]


def test_split_mixed_language_and_newlines() -> None:
    assert split_sentences("Ray Serve を使います。Then we scale! 次へ?はい") == [
        "Ray Serve を使います。",
        "Then we scale!",
        "次へ?",
        "はい",
    ]
    text = "概要\n\n- 項目A\n- 項目B\n1. first step\n2. second step\n・中黒の項目"
    assert split_sentences(text) == [
        "概要",
        "- 項目A",
        "- 項目B",
        "1. first step",
        "2. second step",
        "・中黒の項目",
    ]
    # A single newline inside a sentence is not a boundary; a blank line is.
    assert split_sentences("the value is\nnot cached\n\nnext paragraph") == [
        "the value is\nnot cached",
        "next paragraph",
    ]


def test_split_sentences_loses_nothing_and_has_no_empty_items() -> None:
    text = "  一つ目。  \n\n\n二つ目！ Third one. 3.14 is pi...  \n- item\n"
    sentences = split_sentences(text)
    assert all(s and s == s.strip() for s in sentences)
    assert _nonspace("".join(sentences)) == _nonspace(text)
    assert split_sentences("") == []
    assert split_sentences(" \n\t\n") == []


# --------------------------------------------------------------------------------------------------
# chunk_text


def test_empty_input_gives_no_chunks() -> None:
    for text in ("", "   ", "\n\n\t\r\n"):
        assert chunk_text(text) == []
        assert chunk_markdown(text) == []
        assert chunk_document(text, fmt="text") == []


def test_chunk_text_respects_max_chars_and_keeps_every_sentence() -> None:
    ja = [f"設定項目{i}はサービスの起動時に読み込まれます。" for i in range(40)]
    en = [f"Setting number {i} is read when the service starts." for i in range(40)]
    text = "".join(ja) + "\n\n" + " ".join(en)
    chunks = chunk_text(text, max_chars=200, overlap_sentences=1)
    assert len(chunks) > 5
    assert all(len(c.text) <= 200 for c in chunks)
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    for sentence in ja + en:
        assert any(sentence in c.text for c in chunks), sentence
    # No chunk ends mid-sentence.
    assert all(c.text.endswith(("。", ".")) for c in chunks)
    assert {c.lang for c in chunks} == {"ja", "en"}


def test_overlap_repeats_last_sentence() -> None:
    sentences = [f"Sentence {i:02d} is about thirty chars." for i in range(12)]
    text = " ".join(sentences)
    with_overlap = chunk_text(text, max_chars=120, overlap_sentences=1)
    for prev, nxt in pairwise(with_overlap):
        last = split_sentences(prev.text)[-1]
        assert nxt.text.startswith(last)
    without = chunk_text(text, max_chars=120, overlap_sentences=0)
    assert sum(len(split_sentences(c.text)) for c in without) == len(sentences)
    assert len(without) < len(with_overlap)


def test_overlap_skipped_when_sentence_is_half_of_max_chars_or_more() -> None:
    long_sentence = "x" * 40 + " is long."
    text = " ".join([long_sentence.replace("x", str(i % 10)) for i in range(4)])
    chunks = chunk_text(text, max_chars=90, overlap_sentences=1)
    assert len(chunks) == 4  # one sentence each, nothing repeated
    assert _nonspace("".join(c.text for c in chunks)) == _nonspace(text)


def test_long_japanese_paragraph_without_punctuation_is_hard_split() -> None:
    unit = "認証基盤の設定値を確認する"
    text = (unit * (20_000 // len(unit) + 1))[:20_000]
    chunks = chunk_text(text, max_chars=700)
    assert all(len(c.text) <= 700 for c in chunks)
    assert len(chunks) == math.ceil(20_000 / 700)
    assert "".join(c.text for c in chunks) == text
    assert all(c.lang == "ja" for c in chunks)


def test_hard_split_prefers_commas() -> None:
    text = "、".join(["トークンの有効期限を延長する"] * 20) + "。"
    chunks = chunk_text(text, max_chars=100, overlap_sentences=0)
    assert all(len(c.text) <= 100 for c in chunks)
    assert all(c.text.endswith(("、", "。")) for c in chunks)
    assert "".join(c.text for c in chunks) == text


def test_crlf_and_trailing_spaces_are_normalised() -> None:
    crlf = "# 認証\r\nトークンを使います。  \r\nEnds here.\t\r\n"
    lf = "# 認証\nトークンを使います。\nEnds here.\n"
    assert chunk_markdown(crlf) == chunk_markdown(lf)
    chunks = chunk_text("一行目です。 \r\n\r\n二行目です。\r\n", max_chars=50)
    assert [c.text for c in chunks] == ["一行目です。\n\n二行目です。"]


def test_no_nfkc_normalisation() -> None:
    text = "ＡＰＩのﾄｰｸﾝは①番です。"
    assert chunk_text(text)[0].text == text


def test_title_path_is_passed_through() -> None:
    chunks = chunk_text("本文です。", title_path=("設計書",))
    assert chunks == [Chunk(0, "本文です。", ("設計書",), "ja")]


def test_chunk_is_frozen() -> None:
    chunk = Chunk(0, "a", (), "en")
    with pytest.raises(dataclasses.FrozenInstanceError):
        chunk.text = "b"  # type: ignore[misc]


def test_invalid_parameters() -> None:
    with pytest.raises(ValueError, match="max_chars"):
        chunk_text("x", max_chars=0)
    with pytest.raises(ValueError, match="overlap_sentences"):
        chunk_markdown("x", overlap_sentences=-1)


# --------------------------------------------------------------------------------------------------
# chunk_markdown

_API_DOC = """# API 仕様
概要です。

## 認証
トークンを使います。

### トークンの更新
更新は POST /refresh で行います。

## エラー
エラーは JSON で返します。
"""


def test_markdown_heading_trail() -> None:
    chunks = chunk_markdown(_API_DOC)
    assert [(c.ordinal, c.text, c.title_path) for c in chunks] == [
        (0, "概要です。", ("API 仕様",)),
        (1, "トークンを使います。", ("API 仕様", "認証")),
        (2, "更新は POST /refresh で行います。", ("API 仕様", "認証", "トークンの更新")),
        (3, "エラーは JSON で返します。", ("API 仕様", "エラー")),  # h2 replaced, h3 dropped
    ]


def test_markdown_doc_title() -> None:
    same = chunk_markdown(_API_DOC, doc_title="API 仕様")
    assert same[1].title_path == ("API 仕様", "認証")
    other = chunk_markdown(_API_DOC, doc_title="基本設計書")
    assert other[1].title_path == ("基本設計書", "API 仕様", "認証")
    preamble = chunk_markdown("前置きです。\n# 見出し\n本文です。", doc_title="設計書")
    assert [c.title_path for c in preamble] == [("設計書",), ("設計書", "見出し")]


def test_markdown_setext_and_atx_closing_hashes() -> None:
    text = "Title\n=====\n\nBody one.\n\nSub\n---\n\nBody two.\n\n## Closed ##\nBody three."
    chunks = chunk_markdown(text)
    assert [c.title_path for c in chunks] == [("Title",), ("Title", "Sub"), ("Title", "Closed")]
    assert [c.text for c in chunks] == ["Body one.", "Body two.", "Body three."]


def test_markdown_empty_sections_only_contribute_to_trail() -> None:
    chunks = chunk_markdown("# A\n## B\n### C\n本文です。\n## D\n")
    assert [(c.text, c.title_path) for c in chunks] == [("本文です。", ("A", "B", "C"))]


def test_markdown_hash_lines_inside_fences_are_not_headings() -> None:
    code = "```bash\n# install the client\npip install pymilvus\n## not a heading\n```"
    tilde = "~~~\n# also not a heading\n~~~"
    text = f"# Setup\nInstall first.\n\n{code}\n\n{tilde}\n\nAfter the code."
    chunks = chunk_markdown(text, max_chars=700)
    assert all(c.title_path == ("Setup",) for c in chunks)
    joined = "\n".join(c.text for c in chunks)
    assert code in joined
    assert tilde in joined
    assert "After the code." in joined


def test_markdown_code_block_is_not_split_when_it_fits() -> None:
    code = "```python\n" + "\n".join(f"value_{i} = compute({i})  # step {i}" for i in range(8)) + "\n```"
    assert len(code) < 400
    prose = " ".join(f"Sentence {i} explains the code." for i in range(8))
    chunks = chunk_markdown(f"# Code\n{prose}\n\n{code}\n\n{prose}", max_chars=400)
    assert all(len(c.text) <= 400 for c in chunks)
    assert sum(code in c.text for c in chunks) == 1


def test_markdown_oversized_code_block_split_between_lines() -> None:
    lines = [f"echo line-{i:03d}" for i in range(60)]
    code = "```sh\n" + "\n".join(lines) + "\n```"
    chunks = chunk_markdown(code, max_chars=150)
    assert len(chunks) > 1
    assert all(len(c.text) <= 150 for c in chunks)
    chunk_lines = [line for c in chunks for line in c.text.split("\n")]
    assert chunk_lines == ["```sh", *lines, "```"]


def test_markdown_table_split_between_rows() -> None:
    header = "| 項目 | 値 |\n|---|---|"
    rows = [f"| key{i:02d} | 値{i:02d} |" for i in range(30)]
    chunks = chunk_markdown("## 設定\n" + header + "\n" + "\n".join(rows), max_chars=120)
    assert len(chunks) > 1
    assert all(len(c.text) <= 120 for c in chunks)
    for chunk in chunks:
        assert chunk.text.startswith(header)  # short header repeated for context
        assert all(line.startswith("|") and line.endswith("|") for line in chunk.text.split("\n"))
    seen = [line for c in chunks for line in c.text.split("\n")[2:]]
    assert seen == rows


def test_markdown_front_matter_dropped() -> None:
    text = "---\ntitle: 設計書\ntags: [api]\n---\n# 見出し\n本文です。"
    chunks = chunk_markdown(text)
    assert [(c.text, c.title_path) for c in chunks] == [("本文です。", ("見出し",))]
    # A rule that is not at the very start is not front matter.
    assert chunk_markdown("本文です。\n\n---\n\n続きです。")[0].text == "本文です。\n\n続きです。"


def test_markdown_lang_per_chunk_and_limits() -> None:
    ja = "".join(f"第{i}章ではキャッシュの無効化について説明します。" for i in range(30))
    en = " ".join(f"Chapter {i} explains cache invalidation in detail." for i in range(30))
    chunks = chunk_markdown(f"# 日本語\n{ja}\n# English\n{en}", max_chars=300)
    assert all(len(c.text) <= 300 for c in chunks)
    assert {c.lang for c in chunks if c.title_path == ("日本語",)} == {"ja"}
    assert {c.lang for c in chunks if c.title_path == ("English",)} == {"en"}
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))


def test_chunk_document_dispatch() -> None:
    text = "# 見出し\n本文です。"
    assert chunk_document(text, fmt="markdown") == chunk_markdown(text)
    plain = chunk_document(text, fmt="text", doc_title="メモ")
    assert plain == [Chunk(0, "# 見出し\n本文です。", ("メモ",), "ja")]
    with pytest.raises(ValueError, match="html"):
        chunk_document(text, fmt="html")


# --------------------------------------------------------------------------------------------------
# Property tests

if given is not None:
    _JA_WORDS = [
        "認証",
        "トークン",
        "を",
        "更新",
        "します",
        "設定",
        "は",
        "サーバー",
        "の",
        "ログ",
        "、",
        "1.2",
    ]
    _EN_WORDS = ["the", "token", "Redis", "v1.2.3", "e.g.", "config.yaml", "3.14", "is", "refreshed", "Dr."]
    _ja_sentence = st.builds(
        lambda words, end: "".join(words) + end,
        st.lists(st.sampled_from(_JA_WORDS), min_size=1, max_size=30),
        st.sampled_from(["。", "！", "？", "」", "", "。」"]),
    )
    _en_sentence = st.builds(
        lambda words, end: " ".join(words) + end,
        st.lists(st.sampled_from(_EN_WORDS), min_size=1, max_size=30),
        st.sampled_from([".", "!", "?", ""]),
    )
    _document = st.builds(
        lambda parts: "".join(s + sep for s, sep in parts),
        st.lists(
            st.tuples(
                st.one_of(_ja_sentence, _en_sentence), st.sampled_from(["", " ", "\n", "\n\n", "\r\n- "])
            ),
            max_size=25,
        ),
    )

    @settings(max_examples=75, deadline=None)
    @given(text=_document, max_chars=st.integers(min_value=10, max_value=300), overlap=st.integers(0, 3))
    def test_property_size_limit_and_no_loss(text: str, max_chars: int, overlap: int) -> None:
        chunks = chunk_text(text, max_chars=max_chars, overlap_sentences=overlap)
        assert all(0 < len(c.text) <= max_chars for c in chunks)
        expected = _nonspace(text)
        got = _nonspace("".join(c.text for c in chunks))
        if overlap == 0:
            assert got == expected
        else:
            assert _is_subsequence(expected, got)
        for md_chunk in chunk_markdown(text, max_chars=max_chars, overlap_sentences=overlap):
            assert len(md_chunk.text) <= max_chars

    @settings(max_examples=50, deadline=None)
    @given(
        text=st.text(alphabet=st.characters(blacklist_characters="\ufeff"), max_size=400),
        max_chars=st.integers(1, 80),
    )
    def test_property_arbitrary_text(text: str, max_chars: int) -> None:
        chunks = chunk_text(text, max_chars=max_chars, overlap_sentences=0)
        assert all(0 < len(c.text) <= max_chars for c in chunks)
        assert _nonspace("".join(c.text for c in chunks)) == _nonspace(text)

    _HOSTILE_PARTS = st.sampled_from(
        [
            "仕様書の要件を満たすこと。",
            "The token expires after 3600 s. ",
            "срок действия токена. ",
            "صلاحية الرمز. ",
            "🔑🚀",
            "\x00\x07\x1b[0m\u202e\ufeff\u200b",
            "\r\n\t  \u3000",
            "# 見出し\n",
            "| a | b |\n",
            "a" * 50,
        ]
    )

    @settings(max_examples=40, deadline=None)
    @given(
        parts=st.lists(_HOSTILE_PARTS, max_size=30),
        repeat=st.sampled_from([1, 1, 50, 400]),  # up to ~30k characters: far over 8k tokens
        fmt=st.sampled_from(["markdown", "text"]),
    )
    def test_property_hostile_documents_chunk_within_limits_without_loss(
        parts: list[str], repeat: int, fmt: str
    ) -> None:
        """Control characters, bidi marks, mixed scripts, emoji, whitespace-only and huge texts."""
        text = "".join(parts) * repeat
        chunks = chunk_document(text, fmt=fmt, doc_title="t", max_chars=300, overlap_sentences=0)
        assert all(0 < len(c.text) <= 300 and c.text.strip() for c in chunks)
        if not text.strip():
            assert chunks == []
        if fmt == "text":
            assert _nonspace("".join(c.text for c in chunks)) == _nonspace(text)

else:  # pragma: no cover - keeps the missing dependency visible instead of silently running fewer tests

    def test_property_size_limit_and_no_loss() -> None:
        pytest.skip("hypothesis is not installed")
