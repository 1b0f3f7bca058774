"""The ja→en lexicon: rendering a Japanese query word by word (real MeCab/UniDic segmentation)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from serve_app.core.expansion import QueryExpansion
from serve_app.core.lexicon import Lexicon, LexiconUnavailable, load_lexicon
from serve_app.settings import ExpanderSettings

GLOSSES = {
    "クラスター": "cluster",
    "拡張": "expansion",
    "役に立つ": "be helpful",
    "不正確": "inaccuracy",
    "ソフトウェア": "software",
    "開発": "development",
    "注文": "order",
    "キャンセル": "cancellation",
    "エンドポイント": "endpoint",
    "使用": "use",
    "アジ": "horse mackerel",  # a short piece that must not be split off an unknown compound
}


@pytest.fixture(scope="module")
def lexicon() -> Lexicon:
    return Lexicon(GLOSSES)


@pytest.mark.parametrize(
    ("query", "english"),
    [
        # particles (の, を, は) and punctuation dropped; identifiers kept as written
        ("Kubernetesクラスターの拡張", "Kubernetes cluster expansion"),
        ("注文をキャンセルするエンドポイントは？", "order cancellation endpoint"),
        # a dictionary word spanning several tokens wins over its parts (役 / に / 立つ)
        ("どのように役に立つのですか", "どの be helpful"),
        # a prefix + word that the dictionary holds whole (不 + 正確)
        ("不正確な計算", "inaccuracy 計算"),
        # an unknown katakana compound split into known words of 3+ characters
        ("アジャイルソフトウェア開発", "アジャイル software development"),
        # conjugated light verbs and auxiliaries (し, た) dropped, the noun kept
        ("kubeadmを使用したクラスター", "kubeadm use cluster"),
    ],
)
def test_content_words_are_glossed_and_function_words_dropped(
    lexicon: Lexicon, query: str, english: str
) -> None:
    assert lexicon.translate(query) == english


def test_nothing_glossed_means_no_rendering(lexicon: Lexicon) -> None:
    assert lexicon.translate("未知の語彙") is None
    assert lexicon.translate("plain English query") is None


def test_a_loanword_unidic_knows_is_glossed_by_its_origin() -> None:
    # Not in the dictionary, but UniDic's lemma of メッシュ is メッシュ-mesh.
    assert Lexicon({"サービス": "service"}).translate("サービスメッシュ") == "service mesh"


def test_load_reads_the_tsv_and_reports_a_missing_file(tmp_path: Path, caplog) -> None:
    path = tmp_path / "ja-en.tsv"
    path.write_text("# JMdict, CC BY-SA 4.0\n拡張\texpansion\nbroken line\n", encoding="utf-8")
    assert dict(Lexicon.load(path).glosses) == {"拡張": "expansion"}
    with pytest.raises(LexiconUnavailable, match="specrag lexicon build"):
        Lexicon.load(tmp_path / "missing.tsv")
    with caplog.at_level(logging.WARNING):
        assert load_lexicon(tmp_path / "missing.tsv") is None
    assert "no ja-en lexicon" in caplog.text


def _variants(engine: QueryExpansion, query: str) -> list[tuple[str, str, str]]:
    out = asyncio.run(engine.expand(query))
    return [(v["origin"], v["lang"], v["text"]) for v in out["variants"]]


def test_a_japanese_query_gets_the_english_rendering_as_a_variant(lexicon: Lexicon) -> None:
    engine = QueryExpansion(ExpanderSettings(glossary=False), lexicon=lexicon)
    assert _variants(engine, "クラスターの拡張") == [
        ("original", "ja", "クラスターの拡張"),
        ("lexicon", "en", "cluster expansion"),
    ]
    assert _variants(engine, "cluster expansion") == [("original", "en", "cluster expansion")]
    off = QueryExpansion(ExpanderSettings(glossary=False, lexicon="off"), lexicon=lexicon)
    assert [o for o, _, _ in _variants(off, "クラスターの拡張")] == ["original"]


def test_no_english_variant_for_a_corpus_without_english(lexicon: Lexicon) -> None:
    engine = QueryExpansion(ExpanderSettings(glossary=False, lexicon_min_share=0.05), lexicon=lexicon)
    engine.languages = {"ja": 990, "en": 10}  # 1 % English: under the share
    assert [o for o, _, _ in _variants(engine, "クラスターの拡張")] == ["original"]
    engine.languages = {"ja": 900, "en": 100}
    assert [o for o, _, _ in _variants(engine, "クラスターの拡張")] == ["original", "lexicon"]
    engine.languages = {"ja": 0, "en": 0}  # an empty collection: nothing to find either way
    assert [o for o, _, _ in _variants(engine, "クラスターの拡張")] == ["original"]
