"""Word-by-word Japanese → English rendering of a query, from a dictionary: translation without an LLM.

Most of the knowledge this service searches is English while many questions are Japanese, and the
offline model (like most small multilingual encoders) prefers passages in the query's language.
An LLM rewrite fixes that where one is configured; without one, a dictionary gloss of every
content word ("Kubernetesクラスターの拡張" → "Kubernetes cluster expansion") gives the fan-out an
English variant that reaches English passages. It is not a translation — particles, auxiliaries
and light verbs are dropped, word order stays Japanese — but the encoders and the sparse channel
read bags of terms well.

Segmentation and part-of-speech come from MeCab with UniDic (``fugashi`` + ``unidic-lite``, both
offline); the glosses from the JMdict-derived TSV that ``specrag lexicon build`` writes
(``serve_app.devtools.lexicon_build``). Japanese morphology and a 380k-form dictionary are not
worth writing by hand; the span matching over tokens below is (it is a few lines).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_JA = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff66-\uff9f々〆]")
_KATAKANA = re.compile(r"^[\u30a0-\u30ffー・]+$")
# Parts of speech that carry no searchable meaning: particles, auxiliaries, symbols, spaces.
_FUNCTION_POS = {"助詞", "助動詞", "補助記号", "記号", "空白"}
_SPAN = 4  # the longest run of tokens looked up as one dictionary word (役に立つ, 名前空間)
_MIN_PIECE = 3  # katakana pieces shorter than this are not split off an unknown compound (アジ...)


class LexiconUnavailable(RuntimeError):
    """The lexicon file or the Japanese tokenizer is missing (``make setup`` builds/installs both)."""


class Lexicon:
    """Japanese written forms → one English gloss each, and the query rendering built on them."""

    def __init__(self, glosses: Mapping[str, str]) -> None:
        self.glosses = glosses
        self._tagger: Any = None
        self._lock = threading.Lock()  # MeCab taggers are not thread-safe
        self.translate = lru_cache(maxsize=4096)(self._translate)

    def __len__(self) -> int:
        return len(self.glosses)

    @classmethod
    def load(cls, path: Path) -> Lexicon:
        """Read ``form<TAB>gloss`` lines (``#`` comments); ``LexiconUnavailable`` if it is missing."""
        if not path.is_file():
            raise LexiconUnavailable(f"{path} not found: run `specrag lexicon build` (make setup does)")
        glosses: dict[str, str] = {}
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("#"):
                    continue
                form, sep, gloss = line.rstrip("\n").partition("\t")
                if sep and form and gloss:
                    glosses[form] = gloss
        return cls(glosses)

    def _tokens(self, text: str) -> list[tuple[str, str, str, str]]:
        """(surface, pos1, pos2, lemma) per morpheme."""
        with self._lock:
            if self._tagger is None:
                try:
                    import fugashi
                except ImportError as exc:  # pragma: no cover - an install problem, said plainly
                    raise LexiconUnavailable("fugashi and unidic-lite are not installed") from exc
                self._tagger = fugashi.Tagger()
            words = self._tagger(text)
            return [
                (w.surface, w.feature.pos1 or "", w.feature.pos2 or "", w.feature.lemma or "") for w in words
            ]

    def _translate(self, text: str) -> str | None:
        """The English rendering of ``text``, or ``None`` when no Japanese word was glossed."""
        tokens = self._tokens(text)
        out: list[str] = []
        glossed = 0
        i = 0
        while i < len(tokens):
            surface, pos1, pos2, lemma = tokens[i]
            if not _JA.search(surface):
                if pos1 not in _FUNCTION_POS:
                    out.append(surface)  # identifiers, English words, numbers: kept as written
                i += 1
                continue
            span = self._span(tokens, i) if pos1 not in _FUNCTION_POS else None
            if span is not None:
                out.append(span[0])
                glossed += 1
                i += span[1]
                continue
            i += 1
            if pos1 in _FUNCTION_POS or pos2 in ("非自立可能", "助動詞語幹"):
                continue  # particles, auxiliaries, light verbs (する, いる, なる)
            gloss = self._word(surface, lemma)
            glossed += gloss is not None
            out.append(gloss or surface)
        if not glossed:
            return None
        return " ".join(out)

    def _span(self, tokens: list[tuple[str, str, str, str]], i: int) -> tuple[str, int] | None:
        """The longest run of 2..4 tokens from ``i`` that is one dictionary word (不正確, 役に立つ)."""
        for n in range(min(_SPAN, len(tokens) - i), 1, -1):
            last = tokens[i + n - 1]
            if last[1] in _FUNCTION_POS:
                continue
            gloss = self.glosses.get("".join(t[0] for t in tokens[i : i + n]))
            if gloss:
                return gloss, n
        return None

    def _word(self, surface: str, lemma: str) -> str | None:
        """One token's gloss: as written, by its dictionary form, or (katakana) from its parts."""
        if gloss := self.glosses.get(surface):
            return gloss
        base, _, origin = lemma.partition("-")  # UniDic: クラスター-cluster for loanwords
        if base and base != surface and (gloss := self.glosses.get(base)):
            return gloss
        if not _KATAKANA.match(surface):
            return None
        if origin and origin.isascii():
            return origin
        return self._compound(surface)

    def _compound(self, word: str) -> str | None:
        """An unknown katakana compound split into known words, longest first (アジャイルソフトウェア
        → アジャイル software); ``None`` when no part is known."""
        parts: list[str] = []
        known = False
        i = 0
        while i < len(word):
            for j in range(len(word), i + _MIN_PIECE - 1, -1):
                if gloss := self.glosses.get(word[i:j]):
                    parts.append(gloss)
                    known = True
                    i = j
                    break
            else:
                j = i + 1  # an unknown run: up to where a known piece starts
                while j < len(word) and not any(
                    word[j:k] in self.glosses for k in range(len(word), j + _MIN_PIECE - 1, -1)
                ):
                    j += 1
                parts.append(word[i:j])
                i = j
        return " ".join(parts) if known else None


def load_lexicon(path: Path) -> Lexicon | None:
    """The lexicon, or ``None`` with a warning when it cannot be used (the expansion goes on without)."""
    try:
        lexicon = Lexicon.load(path)
        lexicon.translate("確認")  # loads the tokenizer now, not on the first query
        return lexicon
    except LexiconUnavailable as exc:
        log.warning("no ja-en lexicon, Japanese queries get no dictionary variant: %s", exc)
        return None
