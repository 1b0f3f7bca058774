"""Split ja/en system-development documents into retrieval chunks.

Embedding models see a bounded window and answers must quote a readable passage, so chunks are packed
from whole sentences (Japanese and English rules), small code blocks and table rows are never cut, and
every chunk carries its heading trail. The user's text is kept as written: only line endings and
trailing spaces are normalised (no NFKC, full-width forms carry meaning in Japanese specs).
Stdlib only, deterministic, no Ray: it runs inside ingestion jobs and in unit tests alike.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field, replace
from itertools import pairwise

__all__ = ["Chunk", "chunk_document", "chunk_markdown", "chunk_text", "detect_lang", "split_sentences"]


@dataclass(frozen=True, slots=True)
class Chunk:
    """One retrievable passage; the heading trail is kept apart so callers choose how to show it."""

    ordinal: int
    text: str
    title_path: tuple[str, ...]
    lang: str


# --------------------------------------------------------------------------------------------------
# Language detection

_JA_RANGES: tuple[tuple[int, int], ...] = (
    (0x3040, 0x30FF),  # hiragana, katakana
    (0x31F0, 0x31FF),  # katakana phonetic extensions
    (0x3005, 0x3007),  # 々〆〇
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF66, 0xFF9F),  # half-width katakana
    (0x20000, 0x2FA1F),  # CJK extensions B.. and compatibility supplement
)


def _is_ja(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _JA_RANGES)


def detect_lang(text: str) -> str:
    """Return "ja" when kana/kanji make up >= 20 % of the letters, else "en".

    A cheap ratio rather than a model: technical Japanese is full of Latin identifiers (API, Redis, JSON),
    so a low threshold still routes it to Japanese-aware handling, and the result is reproducible.
    """
    letters = ja = 0
    for ch in text:
        if ch.isalpha():
            letters += 1
            if _is_ja(ch):
                ja += 1
    return "ja" if letters and ja / letters >= 0.2 else "en"


# --------------------------------------------------------------------------------------------------
# Normalisation


def _normalize(text: str) -> str:
    """CRLF/CR -> LF, drop a leading BOM and trailing whitespace per line; nothing else (no NFKC)."""
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(line.rstrip() for line in text.split("\n"))


# --------------------------------------------------------------------------------------------------
# Sentence splitting

_JA_TERMS = "。｡！？"
_TERM_START = frozenset(_JA_TERMS + "．.!?")
_TERM_RUN = frozenset(_JA_TERMS + "．.!?…‥")
_CLOSERS = frozenset("」』）)】］]〕》〉”’\"'")
_PAIRS = {
    "「": "」",
    "『": "』",
    "（": "）",
    "(": ")",
    "【": "】",
    "［": "］",
    "〔": "〕",
    "《": "》",
    "〈": "〉",
}
_PAIR_CLOSERS = frozenset(_PAIRS.values())
_MAX_BRACKET_SPAN = 300  # a longer "quotation" is more likely an unbalanced bracket than a quote
# After 「…。」 these continue the same sentence (quotative と/って, a comma).
_NO_SPLIT_AFTER_CLOSER = frozenset("とっ、，,")
_ABBREVIATIONS = (
    "e.g.",
    "i.e.",
    "etc.",
    "mr.",
    "mrs.",
    "ms.",
    "dr.",
    "vs.",
    "prof.",
    "cf.",
    "approx.",
    "fig.",
    "inc.",
    "ltd.",
    "jr.",
    "sr.",
    "a.m.",
    "p.m.",
    "u.s.",
    "et al.",
)
_LIST_ITEM = re.compile(r"[ \t]*(?:(?:[-*+]|\d{1,9}[.)])[ \t]|[•・])")
_NEXT_NONSPACE = re.compile(r"\S")


def _bracket_depth(block: str) -> list[int]:
    """Nesting depth of matched brackets at each index (len+1 entries) so quoted 。 do not end sentences."""
    diff = [0] * (len(block) + 2)
    stack: list[tuple[str, int]] = []
    for k, ch in enumerate(block):
        if ch in _PAIRS:
            stack.append((_PAIRS[ch], k))
        elif ch in _PAIR_CLOSERS:
            # Look a few levels down only: tolerates a stray opener without going quadratic.
            for idx in range(len(stack) - 1, max(-1, len(stack) - 9), -1):
                if stack[idx][0] == ch:
                    opened = stack[idx][1]
                    del stack[idx:]
                    if k - opened <= _MAX_BRACKET_SPAN:
                        diff[opened + 1] += 1
                        diff[k] -= 1
                    break
    depth = [0] * (len(block) + 1)
    run = 0
    for k in range(len(block)):
        run += diff[k]
        depth[k] = run
    return depth


def _is_abbreviation(block: str, end: int) -> bool:
    tail = block[max(0, end - 8) : end].lower()
    for abbr in _ABBREVIATIONS:
        if tail.endswith(abbr):
            start = end - len(abbr)
            if start == 0 or not block[start - 1].isalpha():
                return True
    return False


def _is_boundary(block: str, i: int, run_end: int, j: int, depth: list[int]) -> bool:
    """Decide whether the terminator run block[i:run_end] (plus closers up to j) ends a sentence."""
    ch = block[i]
    nxt = block[j] if j < len(block) else ""
    if depth[i] > 0 and depth[j] >= depth[i]:
        return False  # still inside 「…」 or (...): the quote continues
    if j > run_end and nxt in _NO_SPLIT_AFTER_CLOSER:
        return False  # 「了解。」と言った
    if ch in _JA_TERMS:
        return True
    if ch == "．":
        return not nxt.isalnum()  # full-width decimal ３．１４
    if ch in "!?":
        return not nxt or nxt.isspace() or _is_ja(nxt)
    # ASCII period: decimals, versions, URLs and file names have no whitespace after the dot.
    if nxt and not nxt.isspace():
        return False
    if _is_abbreviation(block, run_end):
        return False
    following = _NEXT_NONSPACE.search(block, j)
    return not (following and "a" <= following.group() <= "z")


def _block_cuts(text: str, start: int, end: int) -> list[int]:
    block = text[start:end]
    depth = _bracket_depth(block)
    cuts: list[int] = []
    i, n = 0, len(block)
    while i < n:
        if block[i] not in _TERM_START:
            i += 1
            continue
        j = i + 1
        while j < n and block[j] in _TERM_RUN:
            j += 1
        run_end = j
        while j < n and block[j] in _CLOSERS:
            j += 1
        if _is_boundary(block, i, run_end, j, depth):
            cuts.append(start + j)
        i = j
    return cuts


def _sentence_spans(text: str) -> list[tuple[int, int]]:
    """Stripped (start, end) spans of the sentences of already-normalised text."""
    forced = [0, len(text)]  # blank lines and list items always start a new sentence
    pos = 0
    for line in text.split("\n"):
        if not line.strip() or _LIST_ITEM.match(line):
            forced.append(pos)
        pos += len(line) + 1
    forced = sorted(set(forced))
    cuts = set(forced)
    for a, z in pairwise(forced):
        cuts.update(_block_cuts(text, a, z))
    spans: list[tuple[int, int]] = []
    for a, z in pairwise(sorted(cuts)):
        seg = text[a:z]
        left = len(seg) - len(seg.lstrip())
        right = len(seg.rstrip())
        if right > left:
            spans.append((a + left, a + right))
    return spans


def _sep(whitespace: str) -> str:
    """Collapse the whitespace between two pieces to the separator used when re-joining them."""
    if "\n\n" in whitespace:
        return "\n\n"
    if "\n" in whitespace:
        return "\n"
    return " " if whitespace else ""


def _split_with_seps(text: str) -> list[tuple[str, str]]:
    """Sentences with the separator that preceded each, so chunks keep paragraphs and ja/en spacing."""
    out: list[tuple[str, str]] = []
    prev_end: int | None = None
    for a, z in _sentence_spans(text):
        out.append((text[a:z], "" if prev_end is None else _sep(text[prev_end:a])))
        prev_end = z
    return out


def split_sentences(text: str) -> list[str]:
    """Split ja/en text into stripped sentences without losing any non-whitespace character.

    Japanese ends at 。！？ (closing 」』） kept with the sentence, but not inside 「…」 quotes); English at
    . ! ? before whitespace, except abbreviations (e.g., Dr., vs.) and a following lowercase word. Blank
    lines end a sentence and list items start one, because specs are full of bullet points without 。.
    """
    text = _normalize(text)
    return [text[a:z] for a, z in _sentence_spans(text)]


# --------------------------------------------------------------------------------------------------
# Packing


@dataclass(frozen=True, slots=True)
class _Unit:
    """An indivisible piece of a section (sentence, code block, table slice) and the separator before it."""

    text: str
    sep: str
    overlappable: bool = True


_SOFT_BREAKS = "、，,;；"


def _is_joiner(ch: str) -> bool:
    cp = ord(ch)
    return (
        bool(unicodedata.combining(ch)) or 0xFE00 <= cp <= 0xFE0F or cp == 0x200D or 0xE0100 <= cp <= 0xE01EF
    )


def _find_cut(rest: str, max_chars: int) -> int:
    """Cut index in [1, max_chars]: after 、，, or at whitespace (latter half first), else a hard cut."""
    half = max(1, max_chars // 2)
    for lo in (half, 1):
        k = max(rest.rfind(p, lo - 1, max_chars) for p in _SOFT_BREAKS)
        if k >= 0:
            return k + 1
        for k in range(min(max_chars, len(rest) - 1), lo - 1, -1):
            if rest[k].isspace():
                return k
    cut = max_chars
    while cut > 1 and _is_joiner(rest[cut]):
        cut -= 1  # never separate a base character from its combining mark / variation selector
    return cut


def _hard_split(sentence: str, max_chars: int) -> list[tuple[str, str]]:
    """Split one over-long stripped sentence into (piece, sep_before) pieces of at most max_chars."""
    out: list[tuple[str, str]] = []
    sep = ""
    rest = sentence
    while len(rest) > max_chars:
        cut = _find_cut(rest, max_chars)
        piece = rest[:cut].rstrip()
        tail = rest[cut:]
        stripped = tail.lstrip()
        out.append((piece, sep))
        sep = _sep(rest[len(piece) : cut] + tail[: len(tail) - len(stripped)])
        rest = stripped
    if rest:
        out.append((rest, sep))
    return out


def _prose_units(text: str, max_chars: int) -> list[_Unit]:
    units: list[_Unit] = []
    for sentence, sep in _split_with_seps(text):
        if len(sentence) <= max_chars:
            units.append(_Unit(sentence, sep))
            continue
        for k, (piece, piece_sep) in enumerate(_hard_split(sentence, max_chars)):
            units.append(_Unit(piece, sep if k == 0 else piece_sep))
    return units


def _joined_len(units: list[_Unit]) -> int:
    return sum(len(u.text) for u in units) + sum(len(u.sep) for u in units[1:])


def _join(units: list[_Unit]) -> str:
    return (units[0].text + "".join(u.sep + u.text for u in units[1:])).strip()


def _overlap(units: list[_Unit], n: int, max_chars: int) -> list[_Unit]:
    """Longest tail of at most n sentences that fits in under half of max_chars (none if code/table)."""
    for k in range(min(n, len(units)), 0, -1):
        tail = units[-k:]
        if all(u.overlappable for u in tail) and 2 * _joined_len(tail) < max_chars:
            return tail
    return []


def _pack(units: list[_Unit], max_chars: int, overlap: int) -> list[str]:
    """Greedy packing of units (each already <= max_chars) into chunk texts of at most max_chars."""
    chunks: list[str] = []
    cur: list[_Unit] = []
    cur_len = 0
    for unit in units:
        if cur and cur_len + len(unit.sep) + len(unit.text) <= max_chars:
            cur.append(unit)
            cur_len += len(unit.sep) + len(unit.text)
            continue
        if cur:
            chunks.append(_join(cur))
            carry = _overlap(cur, overlap, max_chars)
            while carry and _joined_len([*carry, unit]) > max_chars:
                carry = carry[1:]
            cur = [*carry, unit]
        else:
            cur = [unit]
        cur_len = _joined_len(cur)
    if cur:
        chunks.append(_join(cur))
    return chunks


def _check_params(max_chars: int, overlap_sentences: int) -> None:
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    if overlap_sentences < 0:
        raise ValueError(f"overlap_sentences must be >= 0, got {overlap_sentences}")


def chunk_text(
    text: str, *, max_chars: int = 700, overlap_sentences: int = 1, title_path: tuple[str, ...] = ()
) -> list[Chunk]:
    """Pack the sentences of plain text greedily into chunks of at most max_chars characters.

    Chunks end at sentence boundaries so each one reads on its own; a sentence longer than max_chars is
    cut (after 、，, or at whitespace when possible). The last overlap_sentences sentences are repeated at
    the start of the next chunk (when they take under half of max_chars) so a fact spanning a boundary
    is still found in one piece.
    """
    _check_params(max_chars, overlap_sentences)
    text = _normalize(text)
    if not text.strip():
        return []
    bodies = _pack(_prose_units(text, max_chars), max_chars, overlap_sentences)
    return [Chunk(k, body, tuple(title_path), detect_lang(body)) for k, body in enumerate(bodies)]


# --------------------------------------------------------------------------------------------------
# Markdown

_FENCE_OPEN = re.compile(r"^[ \t]*(`{3,}|~{3,})(.*)$")
_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t]*$")
_ATX_CLOSING = re.compile(r"(?:^|[ \t]+)#+$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_THEMATIC_BREAK = re.compile(r"^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_TABLE_DELIM = re.compile(r"^[ \t]*\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$")
_FRONT_MATTER_END = frozenset(("---", "..."))


@dataclass(slots=True)
class _Block:
    kind: str  # "text" | "code" | "table"
    text: str


@dataclass(slots=True)
class _Section:
    trail: tuple[str, ...]
    blocks: list[_Block] = field(default_factory=list)


def _strip_front_matter(text: str) -> str:
    """Drop a YAML front-matter block: metadata, not content to embed."""
    lines = text.split("\n")
    if not lines or lines[0] != "---":
        return text
    for k in range(1, len(lines)):
        if lines[k] in _FRONT_MATTER_END:
            return "\n".join(lines[k + 1 :])
    return text  # no closing line: a thematic break, not front matter


def _is_setext_text(line: str) -> bool:
    stripped = line.lstrip()
    return (
        len(line) - len(stripped) <= 3
        and not _LIST_ITEM.match(line)
        and not stripped.startswith((">", "|", "#"))
    )


class _MarkdownParser:
    """Line-based parser that knows just enough Markdown to find sections, fences and tables."""

    def __init__(self, text: str) -> None:
        self.lines = text.split("\n")
        self.sections: list[_Section] = [_Section(())]
        self.stack: list[tuple[int, str]] = []
        self.para: list[str] = []
        self.para_run = 0  # consecutive non-blank plain lines at the end of para (setext detection)

    def _flush(self) -> None:
        if any(line.strip() for line in self.para):
            self.sections[-1].blocks.append(_Block("text", "\n".join(self.para)))
        self.para = []
        self.para_run = 0

    def _heading(self, level: int, title: str) -> None:
        self._flush()
        while self.stack and self.stack[-1][0] >= level:
            self.stack.pop()
        self.stack.append((level, title))
        self.sections.append(_Section(tuple(t for _, t in self.stack if t)))

    def _fence(self, i: int, marker: str) -> int:
        closing = re.compile(rf"^[ \t]*{re.escape(marker[0])}{{{len(marker)},}}[ \t]*$")
        k = i + 1
        while k < len(self.lines) and not closing.match(self.lines[k]):
            k += 1
        end = min(k + 1, len(self.lines))  # an unclosed fence runs to the end of the document
        self._flush()
        self.sections[-1].blocks.append(_Block("code", "\n".join(self.lines[i:end])))
        return end

    def _table(self, i: int) -> int:
        k = i + 2
        while k < len(self.lines) and self.lines[k].strip() and "|" in self.lines[k]:
            k += 1
        self._flush()
        self.sections[-1].blocks.append(_Block("table", "\n".join(self.lines[i:k])))
        return k

    def parse(self) -> list[_Section]:
        lines = self.lines
        i = 0
        while i < len(lines):
            line = lines[i]
            fence = _FENCE_OPEN.match(line)
            if fence and not (fence.group(1)[0] == "`" and "`" in fence.group(2)):
                i = self._fence(i, fence.group(1))
                continue
            atx = _ATX.match(line)
            if atx:
                self._heading(len(atx.group(1)), _ATX_CLOSING.sub("", atx.group(2) or "").strip())
                i += 1
                continue
            if self.para_run == 1 and _SETEXT.match(line) and _is_setext_text(self.para[-1]):
                title = self.para.pop().strip()
                self._heading(1 if "=" in line else 2, title)
                i += 1
                continue
            if _THEMATIC_BREAK.match(line):
                self.para.append("")  # a rule separates paragraphs; the dashes carry no content
                self.para_run = 0
                i += 1
                continue
            if (
                "|" in line
                and i + 1 < len(lines)
                and "|" in lines[i + 1]
                and _TABLE_DELIM.match(lines[i + 1])
            ):
                i = self._table(i)
                continue
            self.para.append(line)
            self.para_run = self.para_run + 1 if line.strip() else 0
            i += 1
        self._flush()
        return self.sections


def _code_units(code: str, max_chars: int) -> list[_Unit]:
    """A code block is one unit when it fits; otherwise it is split between lines (long lines cut)."""
    if len(code) <= max_chars:
        return [_Unit(code, "", overlappable=False)]
    lines: list[str] = []
    for line in code.split("\n"):
        lines.extend([line[k : k + max_chars] for k in range(0, len(line), max_chars)] or [""])
    return _line_pieces(lines, max_chars, header=None)


def _table_units(table: str, max_chars: int) -> list[_Unit]:
    """A table is one unit when it fits; otherwise it is split between rows, repeating a short header."""
    if len(table) <= max_chars:
        return [_Unit(table, "", overlappable=False)]
    rows = table.split("\n")
    head = "\n".join(rows[:2])
    lines: list[str] = []
    for row in rows:
        lines.extend(piece for piece, _ in _hard_split(row.strip(), max_chars))
    return _line_pieces(lines, max_chars, header=head if 2 * len(head) < max_chars else None)


def _line_pieces(lines: list[str], max_chars: int, header: str | None) -> list[_Unit]:
    pieces: list[str] = []
    cur: list[str] = []
    cur_len = -1
    for line in lines:
        if cur and cur_len + 1 + len(line) > max_chars:
            pieces.append("\n".join(cur))
            if header is not None and len(header) + 1 + len(line) <= max_chars:
                cur, cur_len = [header], len(header)
            else:
                cur, cur_len = [], -1
        cur.append(line)
        cur_len += 1 + len(line)
    if cur:
        pieces.append("\n".join(cur))
    texts = [p.strip("\n") for p in pieces]
    return [_Unit(t, "\n", overlappable=False) for t in texts if t.strip()]


def _section_units(blocks: list[_Block], max_chars: int) -> list[_Unit]:
    units: list[_Unit] = []
    for block in blocks:
        if block.kind == "code":
            new = _code_units(block.text, max_chars)
        elif block.kind == "table":
            new = _table_units(block.text, max_chars)
        else:
            new = _prose_units(block.text, max_chars)
        if new:
            new[0] = replace(new[0], sep="\n\n" if units else "")
        units.extend(new)
    return units


def chunk_markdown(
    text: str, *, max_chars: int = 700, overlap_sentences: int = 1, doc_title: str | None = None
) -> list[Chunk]:
    """Chunk Markdown section by section, carrying the heading trail in Chunk.title_path.

    Sections come from ATX and setext headings ('#' lines inside fenced code are not headings); code
    blocks that fit are never split and tables are split only between rows, because half a code sample or
    row is useless as an answer. YAML front matter is dropped. Sections are packed like chunk_text and
    overlap never crosses a section boundary. doc_title leads every trail unless the trail already starts
    with it (typically the document's own h1).
    """
    _check_params(max_chars, overlap_sentences)
    text = _normalize(text)
    if not text.strip():
        return []
    title = doc_title.strip() if doc_title else ""
    chunks: list[Chunk] = []
    for section in _MarkdownParser(_strip_front_matter(text)).parse():
        trail = section.trail
        if title and trail[:1] != (title,):
            trail = (title, *trail)
        for body in _pack(_section_units(section.blocks, max_chars), max_chars, overlap_sentences):
            chunks.append(Chunk(len(chunks), body, trail, detect_lang(body)))
    return chunks


def chunk_document(
    text: str, *, fmt: str, max_chars: int = 700, overlap_sentences: int = 1, doc_title: str | None = None
) -> list[Chunk]:
    """Dispatch on fmt ("markdown" or "text"); for plain text doc_title becomes the one-element trail."""
    if fmt == "markdown":
        return chunk_markdown(
            text, max_chars=max_chars, overlap_sentences=overlap_sentences, doc_title=doc_title
        )
    if fmt == "text":
        trail = (doc_title.strip(),) if doc_title and doc_title.strip() else ()
        return chunk_text(text, max_chars=max_chars, overlap_sentences=overlap_sentences, title_path=trail)
    raise ValueError(f"unknown document format {fmt!r}; expected 'markdown' or 'text'")
