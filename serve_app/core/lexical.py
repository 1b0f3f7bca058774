"""Query-side IDF for the sparse channel when the model's sparse head is a placeholder.

The offline model's sparse head gives every token weight 1.0, so its sparse score is a count of
shared tokens: ``the`` counts as much as ``kubelet``. Rather than fit a head to imitate IDF (a
linear map of contextual states can only approximate it, and every corpus change would need a
re-embed), the query's token weights are multiplied by the live collection's BM25 IDF. The
score becomes sum(idf) over shared tokens: BM25 without term-frequency saturation, which short
chunks barely need. Stored vectors stay as the model made them, so nothing is re-embedded and
the table follows the corpus (rebuilt every ``search.idf_refresh_s``). BGE-M3's trained head
already weighs tokens; ``search.sparse_idf: auto`` leaves it alone.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serve_app.core.store import SPARSE_PLACEHOLDER_TOKEN, build_filter


def placeholder_sparse_head(model_path: str) -> bool:
    """True when the model directory says its sparse head is a placeholder (the offline build)."""
    sidecar = Path(model_path) / "specrag_model.json"
    try:
        return str(json.loads(sidecar.read_text()).get("heads", "")).startswith("placeholder")
    except (OSError, ValueError):
        return False  # a hub id or a model without our sidecar: trust its head


def idf_enabled(mode: str, model_path: str) -> bool:
    """``search.sparse_idf``: ``on``, ``off``, or ``auto`` = only for a placeholder sparse head."""
    return mode == "on" or (mode == "auto" and placeholder_sparse_head(model_path))


@dataclass
class IdfTable:
    """token id -> BM25 IDF over the collection's current chunks."""

    idf: dict[int, float] = field(default_factory=dict)
    chunks: int = 0
    built_at: float = 0.0

    @classmethod
    def build(cls, store: Any) -> IdfTable:
        df: Counter[int] = Counter()
        n = 0
        for page in store.iter_rows(build_filter(), fields=["sparse"], batch_size=2000):
            for row in page:
                n += 1
                df.update(int(t) for t in (row.get("sparse") or {}) if int(t) != SPARSE_PLACEHOLDER_TOKEN)
        idf = {t: math.log(1 + (n - d + 0.5) / (d + 0.5)) for t, d in df.items()}
        return cls(idf, n, time.time())

    def weigh(self, sparse: dict[int, float]) -> dict[int, float]:
        """Query weights times IDF; a token the corpus never saw gets the highest IDF (df 0)."""
        if not self.chunks:
            return sparse
        unseen = math.log(1 + (self.chunks + 0.5) / 0.5)
        return {t: w * self.idf.get(int(t), unseen) for t, w in sparse.items()}
