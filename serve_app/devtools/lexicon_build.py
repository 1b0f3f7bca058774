"""Build the ja→en lexicon the query expansion translates with, from JMdict (``jamdict-data``).

JMdict (the Electronic Dictionary Research and Development Group's Japanese-English dictionary,
CC BY-SA 4.0) is the broadest offline ja→en word list there is, with a ``computing`` field on
~11,800 senses. ``jamdict-data`` installs it as a 310 MB SQLite file that also holds the name and
kanji dictionaries; the expander needs one gloss per written form, so this reads that file once
and writes a ~10 MB TSV (``form<TAB>gloss``) that ``core.lexicon.Lexicon`` loads in a second.
Like the offline model, it is built on the machine (``make setup``), never downloaded at run time.

Choice of gloss, per entry: the first sense tagged ``computing`` when there is one (this is a
system-development search: 配列 is "array", not "arrangement"), else the first sense that is not
archaic, obsolete or rare; its first English gloss, without parenthesised notes or a leading
"to ". Choice of entry for a form several entries share: one where that form is marked common
(JMdict's priority tags), then the entry with any common form, then the lowest sequence number.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

_SKIP_MISC = {"archaism", "obsolete term", "rare term", "rarely-used kanji form", "obscure term"}
_PAREN = re.compile(r"\s*[(（][^)）]*[)）]")


def jmdict_path() -> Path:
    """The SQLite file of the installed ``jamdict-data`` package."""
    try:
        import jamdict_data
    except ImportError as exc:  # pragma: no cover - an install problem, said plainly
        raise RuntimeError(
            "jamdict-data is not installed: pip install jamdict-data (make setup does)"
        ) from exc
    return Path(jamdict_data.JAMDICT_DB_PATH)


def clean_gloss(text: str) -> str:
    """``"to be helpful (esp. ...)"`` → ``"be helpful"``: what a search engine should read."""
    text = _PAREN.sub("", text).strip()
    text = text.removeprefix("to ").strip()
    return " ".join(text.split())


def entry_glosses(db: sqlite3.Connection) -> dict[int, str]:
    """Entry sequence number → its chosen English gloss (see the module docstring)."""
    rows = db.execute(
        """
        SELECT s.idseq, s.ID,
               (SELECT g.text FROM SenseGloss g WHERE g.sid = s.ID AND g.lang = 'eng' LIMIT 1),
               (SELECT group_concat(f.text, '|') FROM field f WHERE f.sid = s.ID),
               (SELECT group_concat(m.text, '|') FROM misc m WHERE m.sid = s.ID)
        FROM Sense s ORDER BY s.idseq, s.ID
        """
    )
    first: dict[int, str] = {}
    computing: dict[int, str] = {}
    for idseq, _sid, gloss, fields, misc in rows:
        if not gloss:
            continue
        text = clean_gloss(gloss)
        if not text or len(text) > 60:
            continue
        if fields and "computing" in fields.split("|"):
            computing.setdefault(idseq, text)
        if misc and _SKIP_MISC & set(misc.split("|")):
            continue
        first.setdefault(idseq, text)
    return {**first, **computing}


def form_entries(db: sqlite3.Connection) -> dict[str, int]:
    """Written form (kanji or kana) → the entry it translates with (see the module docstring)."""
    forms: list[tuple[str, int, bool]] = []
    for table, prio in (("Kanji", "KJP"), ("Kana", "KNP")):
        forms += [
            (text, idseq, bool(common))
            for text, idseq, common in db.execute(
                f"SELECT k.text, k.idseq, EXISTS(SELECT 1 FROM {prio} p WHERE p.kid = k.ID) FROM {table} k"
            )
        ]
    common_entries = {idseq for _, idseq, common in forms if common}
    best: dict[str, tuple[tuple[int, int, int], int]] = {}
    for text, idseq, common in forms:
        rank = (0 if common else 1, 0 if idseq in common_entries else 1, idseq)
        if text not in best or rank < best[text][0]:
            best[text] = (rank, idseq)
    return {text: idseq for text, (_, idseq) in best.items()}


def build_lexicon(target: Path, source: Path | None = None) -> int:
    """Write ``target`` (TSV, sorted, with a provenance header); returns the number of forms."""
    source = source or jmdict_path()
    db = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        glosses = entry_glosses(db)
        version = dict(db.execute("SELECT key, value FROM meta").fetchall()).get("jmdict.version", "?")
        pairs = sorted(
            (form, glosses[idseq])
            for form, idseq in form_entries(db).items()
            if idseq in glosses and "\t" not in form and "\n" not in form
        )
    finally:
        db.close()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(
            f"# specrag ja-en lexicon: {len(pairs)} forms from JMdict {version} (jamdict-data).\n"
            "# JMdict is the property of the Electronic Dictionary Research and Development Group,\n"
            "# used under CC BY-SA 4.0 (https://www.edrdg.org/edrdg/licence.html).\n"
        )
        fh.writelines(f"{form}\t{gloss}\n" for form, gloss in pairs)
    tmp.replace(target)
    return len(pairs)
