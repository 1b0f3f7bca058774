"""Identifiers in queries (ticket ids, error codes, config keys, paths, versions, hashes).

Subword models split ``zq3f9a0c1b2d`` or ``PAY-4821`` into pieces that are common tokens, so
neither the dense nor the sparse channel finds the one chunk that holds such an identifier
reliably. The ``exact`` channel of the fan-out asks the store for the chunks containing it
verbatim (a ``LIKE`` scan in Milvus; an NGRAM index on ``text`` makes it cheap on Milvus 2.6),
and a chunk that holds every identifier of the query ranks above one that holds fewer.

What counts as an identifier is deliberately narrow, so ordinary words and numbers never switch
the channel on: a run of letters, digits and ``_ . - / :`` that mixes letters with digits, or has
an inner ``_``, a capital after a lower-case letter (``maxSurge``), a dotted path of words
(``spring.datasource.url``), a path with ``/`` and a digit or dot, or capitals around a hyphen
(``X-Timestamp``). Japanese text, plain words, plain numbers and years are not identifiers.
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass

_TOKEN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-/:]*[A-Za-z0-9_]|[A-Za-z0-9]")
MAX_IDENTIFIERS = 3  # per query: more is a pasted log line, not a lookup


def _is_identifier(tok: str) -> bool:
    if len(tok) < 4 or "%" in tok:
        return False
    letters = any(c.isalpha() for c in tok)
    digits = any(c.isdigit() for c in tok)
    if letters and digits:  # but not a quantity with its unit: 70km, 3.5GB, 100ms, 2nd
        return not re.fullmatch(r"\d+(\.\d+)?[A-Za-z]{1,3}", tok)
    if not letters:
        return False
    core = tok.strip("_")
    if "_" in core:
        return True
    if re.search(r"[a-z][A-Z]", tok):
        return True
    if re.fullmatch(r"[A-Za-z]\w*(\.[A-Za-z]\w*){2,}", tok):  # a.b.c: config keys, module paths
        return True
    if "/" in tok and ("." in tok or tok.count("/") >= 2):
        return True
    return "-" in tok and any(c.isupper() for c in tok)


def pins(text: str, idents: list[str], *, rest_words: float = 3) -> bool:
    """Whether the query is a lookup of its identifiers (little else in it), so the chunks holding
    them go first. In a longer question the exact matches only join the candidate pool, and the
    rerank decides: an identifier that many chunks mention says little about which one answers."""
    rest = text
    for ident in idents:
        rest = rest.replace(ident, " ")
    # Words besides the identifiers; a Japanese word is about two characters.
    words = (
        len(re.findall(r"[A-Za-z0-9]+", rest)) + len(re.findall(r"[\u3040-\u30ff\u3400-\u9fff]", rest)) / 2
    )
    return bool(idents) and words <= rest_words


def find_identifiers(text: str) -> list[str]:
    """The identifiers of ``text`` in order of appearance, without duplicates (at most 3)."""
    found: dict[str, None] = {}
    for m in _TOKEN.finditer(text):
        tok = m.group(0).rstrip(".:/-")
        if _is_identifier(tok):
            found.setdefault(tok, None)
    return list(found)[:MAX_IDENTIFIERS]


# ------------------------------------------------------------------ the evaluation's generated set


@dataclass(frozen=True, slots=True)
class PlantedIdentifier:
    identifier: str
    shape: str
    doc_id: str  # the planted copy's document id
    source_doc: str  # the real passage it was planted in
    text: str  # the passage with the identifier in it
    title: str
    lang: str
    late: bool  # written just before its search (not in the batch written first)


def _hex(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def _alnum(rng: random.Random, n: int) -> str:
    # At least one letter and one digit, starting with a letter: the shape of generated ids.
    while True:
        s = rng.choice(string.ascii_lowercase) + "".join(
            rng.choice(string.ascii_lowercase + string.digits) for _ in range(n - 1)
        )
        if any(c.isdigit() for c in s):
            return s


_WORDS = ("order", "payment", "refund", "invoice", "stock", "auth", "session", "cache", "queue", "batch")
SHAPES = ("random_id", "ticket", "error_code", "config_key", "path", "version", "commit", "uuid")


def make_identifier(shape: str, rng: random.Random) -> str:
    w1, w2 = rng.sample(_WORDS, 2)
    if shape == "random_id":
        return _alnum(rng, 12)
    if shape == "ticket":
        project = "".join(rng.choice(string.ascii_uppercase) for _ in range(rng.choice((3, 4))))
        return f"{project}-{rng.randint(100, 99999)}"
    if shape == "error_code":
        return f"E_{w1.upper()}_{w2.upper()}_{rng.randint(100, 999)}"
    if shape == "config_key":
        leaf = rng.choice(("max_retries", "timeoutMs", "pool-size", "ttl_seconds"))
        return f"{w1}.{w2}.{leaf}{rng.randint(2, 9)}"
    if shape == "path":
        return f"/api/v{rng.randint(1, 4)}/{w1}s/{w2}_{_hex(rng, 4)}"
    if shape == "version":
        return f"v{rng.randint(1, 30)}.{rng.randint(0, 40)}.{rng.randint(0, 99)}-rc{rng.randint(1, 9)}"
    if shape == "commit":
        return _hex(rng, rng.choice((10, 12))) + rng.choice("abcdef")
    if shape == "uuid":
        return f"{_hex(rng, 8)}-{_hex(rng, 4)}-4{_hex(rng, 3)}-a{_hex(rng, 3)}-{_hex(rng, 12)}"
    raise ValueError(f"unknown identifier shape {shape!r}")


def _plant(text: str, ident: str, lang: str, rng: random.Random) -> str:
    """Put the identifier into the passage, as a sentence of its language, at a random sentence."""
    sentence = (
        rng.choice((f"詳細は {ident} を参照してください。", f"この設定は {ident} で管理されます。"))
        if lang == "ja"
        else rng.choice((f"See {ident} for details.", f"This is tracked as {ident}."))
    )
    cuts = [m.end() for m in re.finditer(r"[。.!?！？]\s*", text)]
    at = rng.choice([0, *cuts]) if cuts else len(text)
    return f"{text[:at]}{sentence}{' ' if lang != 'ja' else ''}{text[at:]}".strip()


def generate_set(
    passages: list[tuple[str, str, str, str]], *, count: int = 80, seed: int = 0
) -> list[PlantedIdentifier]:
    """``count`` identifiers of every shape in turn, planted in real passages (doc_id, title, text,
    lang), half of them to be written just before their search. Same seed, same set."""
    rng = random.Random(seed)
    picked = rng.sample(passages, min(count, len(passages)))
    out = []
    for i, (doc_id, title, text, lang) in enumerate(picked):
        shape = SHAPES[i % len(SHAPES)]
        ident = make_identifier(shape, rng)
        out.append(
            PlantedIdentifier(
                identifier=ident,
                shape=shape,
                doc_id=f"ident-{seed}-{i:03d}",
                source_doc=doc_id,
                text=_plant(text, ident, lang, rng),
                title=title,
                lang=lang,
                late=i % 2 == 1,
            )
        )
    return out
