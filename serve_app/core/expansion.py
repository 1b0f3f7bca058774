"""Query expansion: an LLM rewrites the query into ja/en variants; a learned glossary always helps.

Two sources, each optional, the original query always first:

* ``LLMExpander`` talks to any OpenAI-compatible chat endpoint (vLLM, Ollama, llama.cpp server, a
  hosted API) with JSON-constrained output. What comes back is validated item by item; the whole
  call has one time budget with retries inside it, and a circuit breaker stops calling an endpoint
  that keeps failing. Any failure means "no LLM variants", never a failed search.
* ``Glossary`` learns bilingual term pairs from what was ingested — ``用語 (Term)`` patterns in
  glossary documents and headings, ``用語（term）`` asides anywhere, tables with a ja and an en cell,
  and the titles of translated twins (doc ids that differ only by a ja/en segment) — plus optional
  TSV term files. It swaps known terms between the languages: useful with no LLM at all.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pybreaker
from pydantic import BaseModel, ConfigDict, ValidationError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, stop_after_delay, wait_fixed

from serve_app.core.chunking import detect_lang
from serve_app.core.contracts import Expansion, QueryVariant
from serve_app.core.lexicon import Lexicon
from serve_app.settings import DataScope, ExpanderSettings

log = logging.getLogger(__name__)

_JA_CHAR = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff66-\uff9f々〆ー・"
_HAS_JA = re.compile(f"[{_JA_CHAR}]")
_HAS_LATIN = re.compile(r"[A-Za-z]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Variant:
    text: str
    lang: str
    origin: str  # original | llm | lexicon | glossary
    terms: tuple[tuple[str, str], ...] = ()  # glossary: the (term, replacement) pairs swapped

    def as_dict(self) -> QueryVariant:
        out: QueryVariant = {"text": self.text, "lang": self.lang, "origin": self.origin}
        if self.terms:
            out["terms"] = [list(t) for t in self.terms]
        return out


class ExpansionError(Exception):
    """The LLM gave no usable variants (down, slow, refused, or answered something invalid)."""


# ---------------------------------------------------------------------------------------------- LLM


class _LLMVariants(BaseModel):
    model_config = ConfigDict(extra="ignore")
    ja: list[Any] = []
    en: list[Any] = []


def _schema(n_ja: int, n_en: int) -> dict[str, Any]:
    def items(n: int) -> dict[str, Any]:
        return {"type": "array", "items": {"type": "string"}, "minItems": n, "maxItems": n}

    return {
        "type": "object",
        "properties": {"ja": items(n_ja), "en": items(n_en)},
        "required": ["ja", "en"],
        "additionalProperties": False,
    }


_SYSTEM = (
    "You rewrite search queries for a search engine over technical documentation written in "
    "Japanese and English (specifications, design documents, API docs, glossaries). Given a query, "
    'return JSON with key "ja": {n_ja} Japanese rewrite(s) and key "en": {n_en} English '
    "rewrite(s). Each rewrite keeps the query's meaning: translate it, use the usual technical terms "
    "and their synonyms, spell out abbreviations. Keep identifiers, code and product names unchanged. "
    "No explanations, only the JSON object."
)


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code == 429 or exc.response.status_code >= 500
    return isinstance(exc, httpx.TransportError | ExpansionError)


class _OpenedAt(pybreaker.CircuitBreakerListener):
    def __init__(self, owner: LLMExpander) -> None:
        self.owner = owner

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        if new_state is not None and new_state.name == "open":
            self.owner._opened_at = time.monotonic()


class LLMExpander:
    """Client for an OpenAI-compatible ``/chat/completions``; ``expand`` raises ``ExpansionError``."""

    def __init__(
        self,
        settings: ExpanderSettings,
        *,
        max_chars: int = 2000,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not settings.llm_url:
            raise ValueError("expander.llm_url is not set")
        self.settings = settings
        self.max_chars = max_chars
        headers = {}
        if settings.llm_api_key:
            headers["Authorization"] = f"Bearer {settings.llm_api_key.get_secret_value()}"
        self._client = httpx.AsyncClient(
            base_url=settings.llm_url.rstrip("/") + "/", headers=headers, transport=transport
        )
        self._opened_at = 0.0
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=settings.breaker_fail_max,
            reset_timeout=settings.breaker_reset_s,
            name="llm-expander",
            listeners=[_OpenedAt(self)],
        )

    @property
    def state(self) -> str:
        """The breaker's ``closed`` (healthy), ``open`` (skipping the LLM) or ``half-open``.

        pybreaker leaves an idle breaker ``open`` until the next call; once the reset timeout has
        passed that call will probe the LLM, so it is reported ``half-open`` (readiness recovers
        without waiting for traffic)."""
        state = str(self.breaker.current_state)
        if state == "open" and time.monotonic() - self._opened_at >= self.settings.breaker_reset_s:
            return "half-open"
        return state

    async def aclose(self) -> None:
        await self._client.aclose()

    async def expand(self, query: str) -> list[Variant]:
        s = self.settings
        try:
            with self.breaker.calling():
                return await asyncio.wait_for(self._with_retries(query), s.timeout_s)
        except pybreaker.CircuitBreakerError as exc:
            raise ExpansionError(f"circuit open after {s.breaker_fail_max} failures in a row") from exc
        except TimeoutError as exc:
            raise ExpansionError(f"no valid answer within {s.timeout_s} s") from exc
        except ExpansionError:
            raise
        except httpx.HTTPStatusError as exc:
            raise ExpansionError(f"HTTP {exc.response.status_code} from the LLM endpoint") from exc
        except httpx.HTTPError as exc:
            raise ExpansionError(f"{type(exc).__name__}: {exc}") from exc

    async def _with_retries(self, query: str) -> list[Variant]:
        s = self.settings
        started = time.monotonic()
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(s.attempts) | stop_after_delay(s.timeout_s),
            wait=wait_fixed(0.05),
            retry=retry_if_exception(_retryable),
            reraise=True,
        ):
            with attempt:
                remaining = max(0.05, s.timeout_s - (time.monotonic() - started))
                return self.parse(query, await self._complete(query, remaining))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _complete(self, query: str, timeout_s: float) -> str:
        s = self.settings
        body: dict[str, Any] = {
            "model": s.llm_model,
            "temperature": 0,
            "max_tokens": 64 * (s.ja_variants + s.en_variants) + 32,
            "messages": [
                {"role": "system", "content": _SYSTEM.format(n_ja=s.ja_variants, n_en=s.en_variants)},
                {"role": "user", "content": query},
            ],
        }
        if s.response_format == "json_schema":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "query_variants", "schema": _schema(s.ja_variants, s.en_variants)},
            }
        elif s.response_format == "json_object":
            body["response_format"] = {"type": "json_object"}
        response = await self._client.post("chat/completions", json=body, timeout=timeout_s)
        response.raise_for_status()
        try:
            return str(response.json()["choices"][0]["message"]["content"])
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ExpansionError("the endpoint's answer is not a chat completion") from exc

    def parse(self, query: str, content: str) -> list[Variant]:
        """Validate the model's JSON: strings only, right language, no repeats, within limits.

        Invalid JSON raises ``ExpansionError`` (retried); invalid items are dropped one by one.
        """
        text = content.strip()
        if text.startswith("```"):  # some servers wrap JSON in a fence despite the constraint
            text = re.sub(r"^```[a-zA-Z]*\s*|\s*```$", "", text)
        try:
            parsed = _LLMVariants.model_validate(json.loads(text))
        except (ValueError, ValidationError) as exc:
            raise ExpansionError(f"invalid JSON from the LLM: {text[:120]!r}") from exc
        seen = {_key(query)}
        out: list[Variant] = []
        for lang, items, wanted in (
            ("ja", parsed.ja, self.settings.ja_variants),
            ("en", parsed.en, self.settings.en_variants),
        ):
            kept = 0
            for item in items:
                if kept >= wanted or not isinstance(item, str):
                    continue
                cand = _CONTROL.sub(" ", unicodedata.normalize("NFC", item)).strip()
                if not cand or len(cand) > self.max_chars or _key(cand) in seen:
                    continue
                if detect_lang(cand) != lang:
                    continue  # a "Japanese" variant in English, or the other way round
                seen.add(_key(cand))
                out.append(Variant(cand, lang, "llm"))
                kept += 1
        return out  # may be empty: a valid answer with nothing new is not a fault


def _key(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


# ----------------------------------------------------------------------------------------- glossary

# 用語 (Term) / Term (用語), as a whole heading or term line
_PAIR_LINE = re.compile(
    r"^\s*(?:[#*\-|]+\s*)?(?P<a>[^()（）|:：]{1,60}?)\s*[（(](?P<b>[^()（）]{1,80})[)）]\s*\**\s*$"
)
# an aside inside running text: the trailing kana/kanji run right before （English）
_ASIDE = re.compile(
    r"(?P<a>[\u30a0-\u30ff\u3400-\u4dbf\u4e00-\u9fff々ー・]{2,20})\s*"
    r"[（(](?P<b>[A-Za-z][A-Za-z0-9 ./\-]{1,50})[)）]"
)
_LANG_SEGMENT = re.compile(r"(?<=[/:._-])(ja|en)(?=[/:._-]|$)|^(ja|en)(?=[/:._-])")


def _side(term: str) -> str | None:
    """``ja`` for a Japanese term, ``en`` for a Latin one, ``None`` for anything unusable."""
    term = term.strip()
    if not term or len(term) > 60 or "\n" in term:
        return None
    if _HAS_JA.search(term):
        return "ja" if len(term) >= 2 else None
    if _HAS_LATIN.search(term) and len(term) >= 2 and len(term.split()) <= 6:
        return "en"
    return None


def _twin_key(doc_id: str) -> tuple[str, str] | None:
    """(doc id with its language segment blanked, that language) — ``docs/ja/x`` ↔ ``docs/en/x``."""
    match = _LANG_SEGMENT.search(doc_id)
    if not match:
        return None
    lang = match.group(1) or match.group(2)
    return doc_id[: match.start()] + "{lang}" + doc_id[match.end() :], lang


# Where a term pair was learned: the (source, kind, tags) of the documents that had to be read to
# learn it (one chunk; both titles of translated twins), or None for the operator's term files
# (visible to every caller).
Document = tuple[str, str, tuple[str, ...]]
Origin = tuple[Document, ...] | None
MAX_ORIGINS = 64  # per pair; beyond it a scoped caller may miss the pair, never see a foreign one


def _document(row: dict[str, Any]) -> Document:
    return (str(row.get("source") or ""), str(row.get("kind") or ""), tuple(row.get("tags") or ()))


@dataclass
class Glossary:
    """Bilingual term pairs with evidence counts and provenance; ``variants`` swaps known terms in
    a query, using only pairs learned from documents the caller's data scope allows."""

    pairs: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    origins: dict[tuple[str, str], set[Origin]] = field(default_factory=lambda: defaultdict(set))
    learned_at: float = 0.0

    def __len__(self) -> int:
        return sum(len(v) for v in self.pairs.values())

    def add(self, a: str, b: str, weight: int = 1, origin: Origin = None) -> bool:
        a, b = _clean_term(a), _clean_term(b)
        sa, sb = _side(a), _side(b)
        if not sa or not sb or sa == sb or _key(a) == _key(b):
            return False
        self.pairs[_key(a)][b] += weight
        self.pairs[_key(b)][a] += weight
        for pair in ((_key(a), b), (_key(b), a)):
            seen = self.origins[pair]
            if len(seen) < MAX_ORIGINS:
                seen.add(origin)
        return True

    def allowed(self, term: str, replacement: str, scope: DataScope | None) -> bool:
        """The pair was learned from a document ``scope`` allows (or from a term file)."""
        if scope is None:
            return True
        return any(
            o is None or all(scope.allows(*doc) for doc in o)
            for o in self.origins.get((term, replacement), ())
        )

    def load_tsv(self, path: Path) -> int:
        """``term<TAB>translation[<TAB>...]`` per line, ``#`` comments; same-language terms are synonyms."""
        added = 0
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            terms = [t.strip() for t in line.split("\t") if t.strip()]
            for other in terms[1:]:
                if _side(terms[0]) == _side(other) and _side(other):  # a synonym: both directions
                    self.pairs[_key(terms[0])][other] += 5
                    self.pairs[_key(other)][terms[0]] += 5
                    self.origins[(_key(terms[0]), other)].add(None)
                    self.origins[(_key(other), terms[0])].add(None)
                    added += 1
                else:
                    added += self.add(terms[0], other, 5)
        return added

    def learn(self, rows: Iterable[dict[str, Any]]) -> int:
        """Learn from stored chunks (``doc_id``, ``title``, ``title_path``, ``text``, ``kind``,
        ``lang``, ``source``, ``tags``); each pair remembers the documents it came from."""
        added = 0
        titles: dict[tuple[str, str], tuple[str, Document]] = {}
        for row in rows:
            origin: Origin = (_document(row),)
            glossary = row.get("kind") == "glossary"
            for heading in [row.get("title") or "", *(row.get("title_path") or [])]:
                added += self._from_line(heading, origin)
            text = row.get("text") or ""
            if glossary:
                for line in text.splitlines():
                    if len(line) <= 120:
                        added += self._from_line(line, origin) + self._from_table(line, origin)
            for m in _ASIDE.finditer(text):
                added += self.add(m.group("a"), m.group("b"), origin=origin)
            twin = _twin_key(str(row.get("doc_id", "")))
            if twin and row.get("title"):
                titles.setdefault(twin, (_first_title(str(row["title"])), _document(row)))
        for (key, lang), (title, doc) in titles.items():
            if lang == "ja" and (other := titles.get((key, "en"))):
                # The pair says what both twins are titled: visible where both can be read.
                added += self.add(title, other[0], origin=tuple(dict.fromkeys((doc, other[1]))))
        self.learned_at = time.time()
        return added

    def _from_line(self, line: str, origin: Origin = None) -> int:
        m = _PAIR_LINE.match(line.strip())
        return int(bool(m and self.add(m.group("a"), m.group("b"), origin=origin)))

    def _from_table(self, line: str, origin: Origin = None) -> int:
        if not line.lstrip().startswith("|"):
            return 0
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        ja = next((c for c in cells if _side(c) == "ja"), None)
        en = next((c for c in cells if _side(c) == "en"), None)
        return int(bool(ja and en and self.add(ja, en, origin=origin)))

    def options(self, term: str, scope: DataScope | None = None) -> list[str]:
        """The replacements of a known term, most evidence first, learned where ``scope`` reads."""
        return [t for t, _ in self.pairs[term].most_common() if self.allowed(term, t, scope)]

    def matches(self, query: str, scope: DataScope | None = None) -> list[tuple[int, int, str]]:
        """Known terms in ``_base(query)``, longest first, not overlapping: (start, end, term key)."""
        folded = _base(query).casefold()
        taken = [False] * len(folded)
        found: list[tuple[int, int, str]] = []
        for term in sorted(self.pairs, key=len, reverse=True):
            if len(term) < 2:
                continue
            start = folded.find(term)
            # The scope check costs a walk over the term's origins: only for terms in the query.
            if start < 0 or (scope is not None and not self.options(term, scope)):
                continue
            latin = not _HAS_JA.search(term)
            while start >= 0:
                end = start + len(term)
                bounded = not latin or (
                    (start == 0 or not folded[start - 1].isalnum())
                    and (end == len(folded) or not folded[end].isalnum())
                )
                if bounded and not any(taken[start:end]):
                    taken[start:end] = [True] * len(term)
                    found.append((start, end, term))
                    break
                start = folded.find(term, start + 1)
        return sorted(found)

    def variants(self, query: str, n: int = 1, scope: DataScope | None = None) -> list[Variant]:
        """Up to ``n`` variants with known terms swapped to the other language (best, 2nd best...),
        using only pairs learned where ``scope`` reads."""
        if n <= 0 or not self.pairs:
            return []
        found = self.matches(query, scope)
        if not found:
            return []
        base = _base(query)
        out: list[Variant] = []
        seen = {_key(query)}
        for choice in range(n):
            parts, swapped, pos = [], [], 0
            for start, end, term in found:
                options = self.options(term, scope)
                repl = options[min(choice, len(options) - 1)]
                parts += [base[pos:start], f" {repl} " if _HAS_LATIN.search(repl) else repl]
                swapped.append((base[start:end], repl))
                pos = end
            text = " ".join("".join([*parts, base[pos:]]).split())
            if _key(text) in seen:
                continue
            seen.add(_key(text))
            out.append(Variant(text, detect_lang(text), "glossary", tuple(swapped)))
        return out


def _base(query: str) -> str:
    """NFKC with collapsed whitespace; casefolding it must keep positions (else use the folded form)."""
    base = " ".join(unicodedata.normalize("NFKC", query).split())
    return base if len(base.casefold()) == len(base) else base.casefold()


def _clean_term(term: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", term).strip(" *_`\"'「」『』").split())


def _first_title(title: str) -> str:
    return re.split(r"\s+(?:>|/|›|»)\s+", title.strip(), maxsplit=1)[0]


# ------------------------------------------------------------------------------------------- engine


class QueryExpansion:
    """The original query, then LLM variants (if configured and healthy), then glossary variants."""

    def __init__(
        self,
        settings: ExpanderSettings,
        *,
        max_chars: int = 2000,
        llm: LLMExpander | None = None,
        lexicon: Lexicon | None = None,
    ) -> None:
        self.settings = settings
        self.llm = llm or (LLMExpander(settings, max_chars=max_chars) if settings.llm_url else None)
        self.lexicon = lexicon
        # Current chunks per language (``store.language_counts``), refreshed with the glossary;
        # None = not measured yet.
        self.languages: dict[str, int] | None = None
        self.glossary = Glossary()
        if settings.glossary:
            for path in settings.term_files:
                self.glossary.load_tsv(Path(path))

    async def expand(self, query: str, enabled: bool = True, scope: DataScope | None = None) -> Expansion:
        """``scope``: the caller's data scope; glossary variants use only terms learned from the
        documents it allows (LLM and lexicon variants come from outside the corpus)."""
        variants = [Variant(query, detect_lang(query), "original")]
        llm = "off" if self.llm is None else "skipped"
        if not enabled:
            return {"variants": [v.as_dict() for v in variants], "llm": llm}
        llm_error: str | None = None
        if self.llm is not None:
            try:
                found = await self.llm.expand(query)
                variants += found
                llm = "ok" if found else "empty"
            except ExpansionError as exc:
                llm, llm_error = "fallback", str(exc)
                log.warning("query expansion fell back to the glossary: %s", exc)
        if lexical := self._lexicon_variant(query, variants):
            variants.append(lexical)
        if self.settings.glossary:
            seen = {_key(v.text) for v in variants}
            for v in self.glossary.variants(query, self.settings.glossary_variants, scope):
                if _key(v.text) not in seen:
                    variants.append(v)
        out: Expansion = {"variants": [v.as_dict() for v in variants], "llm": llm}
        if llm_error is not None:
            out["llm_error"] = llm_error
        out["glossary_pairs"] = len(self.glossary)
        return out

    def _lexicon_variant(self, query: str, variants: list[Variant]) -> Variant | None:
        """The dictionary's English rendering of a Japanese query (``expander.lexicon``)."""
        mode = self.settings.lexicon
        if self.lexicon is None or mode == "off" or variants[0].lang != "ja":
            return None
        if (counts := self.languages) is not None:  # nothing English to find: no English variant
            total = sum(counts.values())
            if not total or counts.get("en", 0) / total < self.settings.lexicon_min_share:
                return None
        if mode == "fallback" and any(v.origin == "llm" and v.lang == "en" for v in variants):
            return None
        text = self.lexicon.translate(query)
        if not text or _key(text) in {_key(v.text) for v in variants}:
            return None
        return Variant(text, detect_lang(text), "lexicon")


_LEARN_FIELDS = ["doc_id", "title", "title_path", "text", "kind", "lang", "source", "tags"]


def learn_glossary(store: Any, settings: ExpanderSettings) -> Glossary:
    """A fresh glossary from the term files and every current chunk of the store's collection."""
    from serve_app.core.store import build_filter  # pymilvus loads only when learning from a store

    glossary = Glossary()
    for path in settings.term_files:
        glossary.load_tsv(Path(path))
    # One pass over every page: translated twins may sit on different pages.
    pages = store.iter_rows(build_filter(), fields=_LEARN_FIELDS, batch_size=2000)
    glossary.learn(row for page in pages for row in page)
    return glossary
