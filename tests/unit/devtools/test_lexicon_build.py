"""The lexicon builder on a small SQLite file with jamdict-data's JMdict schema."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from serve_app.core.lexicon import Lexicon
from serve_app.devtools.lexicon_build import build_lexicon, clean_gloss

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);
CREATE TABLE Entry (idseq INTEGER NOT NULL UNIQUE);
CREATE TABLE Kanji (ID INTEGER PRIMARY KEY, idseq INTEGER, text TEXT);
CREATE TABLE KJP (kid INTEGER, text TEXT);
CREATE TABLE Kana (ID INTEGER PRIMARY KEY, idseq INTEGER, text TEXT, nokanji BOOLEAN);
CREATE TABLE KNP (kid INTEGER, text TEXT);
CREATE TABLE Sense (ID INTEGER PRIMARY KEY, idseq INTEGER);
CREATE TABLE SenseGloss (sid INTEGER, lang TEXT, gend TEXT, text TEXT);
CREATE TABLE field (sid INTEGER, text TEXT);
CREATE TABLE misc (sid INTEGER, text TEXT);
"""


def _jmdict(path: Path) -> Path:
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)
    db.execute("INSERT INTO meta VALUES ('jmdict.version', '1.08')")

    def entry(idseq: int, kanji: list[tuple[str, bool]], kana: list[tuple[str, bool]], senses) -> None:
        db.execute("INSERT INTO Entry VALUES (?)", (idseq,))
        for table, prio, forms in (("Kanji", "KJP", kanji), ("Kana", "KNP", kana)):
            for text, common in forms:
                kid = db.execute(f"INSERT INTO {table} (idseq, text) VALUES (?, ?)", (idseq, text)).lastrowid
                if common:
                    db.execute(f"INSERT INTO {prio} VALUES (?, 'ichi1')", (kid,))
        for gloss, fields, misc in senses:
            sid = db.execute("INSERT INTO Sense (idseq) VALUES (?)", (idseq,)).lastrowid
            db.execute("INSERT INTO SenseGloss VALUES (?, 'eng', '', ?)", (sid, gloss))
            db.execute("INSERT INTO SenseGloss VALUES (?, 'ger', '', 'Anordnung')", (sid,))
            for f in fields:
                db.execute("INSERT INTO field VALUES (?, ?)", (sid, f))
            for m in misc:
                db.execute("INSERT INTO misc VALUES (?, ?)", (sid, m))

    # the computing sense wins over the first one
    entry(1, [("配列", True)], [("はいれつ", True)], [("arrangement", [], []), ("array", ["computing"], [])])
    # an archaic first sense is passed over
    entry(
        2,
        [("確認", True)],
        [("かくにん", True)],
        [("old sense", [], ["archaism"]), ("to confirm (sth)", [], [])],
    )
    # two entries share a kana form: the one where that form is common wins, whatever its number
    entry(3, [], [("ロード", False)], [("road", [], [])])
    entry(4, [], [("ロード", True)], [("load", [], [])])
    db.commit()
    db.close()
    return path


def test_forms_map_to_the_chosen_gloss(tmp_path: Path) -> None:
    target = tmp_path / "lexicon" / "ja-en.tsv"
    assert build_lexicon(target, _jmdict(tmp_path / "jmdict.db")) == 5  # ロード once
    text = target.read_text(encoding="utf-8")
    assert text.startswith("# specrag ja-en lexicon: 5 forms from JMdict 1.08")
    assert "CC BY-SA 4.0" in text
    assert dict(Lexicon.load(target).glosses) == {
        "配列": "array",
        "はいれつ": "array",
        "確認": "confirm",
        "かくにん": "confirm",
        "ロード": "load",
    }
    assert not target.with_suffix(".tmp").exists()


def test_glosses_lose_notes_and_infinitive_markers() -> None:
    assert clean_gloss("to be helpful (esp. of a tool)") == "be helpful"
    assert clean_gloss("floating-point  number") == "floating-point number"
