"""BM25 over a collection's current chunks, with a tokeniser that handles Japanese (bm25s).

Why here and not in Milvus: Milvus Lite's analyzers are ``standard`` (and ``jieba``) only, so its
BM25 function cannot split Japanese; Milvus >= 2.5 servers have the ``lindera`` analyzer, but the
index must also work on the embedded default. The scoring is bm25s (Lucene's BM25 variant,
k1 = 1.5, b = 0.75), a well-kept library; only the tokeniser is ours:

- Japanese (kana and kanji runs): overlapping character bigrams, the unit the collections' READMEs
  use for their BM25 figures (no dictionary to install or keep in step with the corpus);
- everything else: NFKC-folded, lower-cased words; an identifier such as ``X-Timestamp``,
  ``v1.2.3`` or ``api/v2/orders`` is also kept whole, so an exact identifier scores as one rare term.

The index is a snapshot of the store, built like the IDF table and rebuilt as often; it serves the
``bm25`` channel of the evaluation's baselines and of any configuration that asks for it.
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serve_app.core.store import SCALAR_FIELDS, Hit, build_filter

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3005\u3006\u30fc"
_RUNS = re.compile(rf"([{_CJK}]+)|([^\W{_CJK}]+(?:[.\-/:][^\W{_CJK}]+)*)")
_WORD = re.compile(rf"[^\W{_CJK}]+")


def tokenize(text: str) -> list[str]:
    """Character bigrams for Japanese runs, lower-cased words (identifiers also whole) otherwise."""
    tokens: list[str] = []
    for m in _RUNS.finditer(unicodedata.normalize("NFKC", text).lower()):
        cjk, word = m.group(1), m.group(2)
        if cjk:
            tokens.extend([cjk] if len(cjk) == 1 else [cjk[i : i + 2] for i in range(len(cjk) - 1)])
            continue
        parts = _WORD.findall(word)
        tokens.extend(parts)
        if len(parts) > 1:
            tokens.append(word)  # the whole identifier, next to its parts
    return tokens


@dataclass
class Bm25Index:
    """bm25s over the tokens of every current chunk (title trail + text)."""

    chunk_ids: list[str] = field(default_factory=list)
    fields: list[dict[str, Any]] = field(default_factory=list)
    model: Any = None
    built_at: float = 0.0
    langs: np.ndarray = field(init=False, repr=False)  # each chunk's lang, for per-language lists

    def __post_init__(self) -> None:
        self.langs = np.array([f.get("lang") or "" for f in self.fields], dtype=object)

    @classmethod
    def build(cls, store: Any, *, k1: float = 1.5, b: float = 0.75) -> Bm25Index:
        import bm25s

        chunk_ids, rows, corpus = [], [], []
        for page in store.iter_rows(build_filter(), fields=list(SCALAR_FIELDS), batch_size=2000):
            for row in page:
                trail = " ".join(p for p in row.get("title_path") or [] if p)
                chunk_ids.append(row["chunk_id"])
                rows.append(row)
                corpus.append(tokenize(f"{trail}\n{row['text']}"))
        model = None
        if corpus:
            model = bm25s.BM25(k1=k1, b=b)
            model.index(corpus, show_progress=False)
        return cls(chunk_ids, rows, model, time.time())

    def __len__(self) -> int:
        return len(self.chunk_ids)

    def search(self, query: str, *, limit: int, lang: str | None = None) -> list[Hit]:
        """The ``limit`` best chunks for ``query`` (of ``lang`` only, when given); chunks sharing no
        term are left out. The language is a mask on the scores, so a per-language list costs
        what an unrestricted one does (no sort of the whole ranking)."""
        if self.model is None or limit <= 0:
            return []
        terms = [t for t in tokenize(query) if t in self.model.vocab_dict]
        if not terms:
            return []
        scores = self.model.get_scores(terms)
        if lang:
            scores = np.where(self.langs == lang, scores, 0.0)
        k = min(limit, len(self.chunk_ids))
        top = scores.argpartition(-k)[-k:] if k < len(scores) else range(len(scores))
        ranked = sorted(
            (i for i in top if scores[i] > 0), key=lambda i: (-float(scores[i]), self.chunk_ids[i])
        )
        return [Hit(self.chunk_ids[i], float(scores[i]), dict(self.fields[i])) for i in ranked]


def search_many(index: Bm25Index, queries: Sequence[str], *, limit: int) -> list[list[Hit]]:
    return [index.search(q, limit=limit) for q in queries]
