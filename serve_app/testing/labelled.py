"""A labelled query set written in the BEIR layout ``specrag eval`` and ``reindex --eval`` read
(``queries.jsonl`` + ``qrels/dev.tsv``), for tests that need one over documents they wrote."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path


def write_labelled_set(folder: Path, queries: Iterable[tuple[str, str, str]], lang: str = "en") -> Path:
    """``queries``: (query id, text, the relevant document's id), one relevant document each."""
    rows = list(queries)
    (folder / "qrels").mkdir(parents=True)
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": t, "lang": lang, "type": "fact"}) + "\n" for q, t, _ in rows)
    )
    (folder / "qrels" / "dev.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, _, d in rows)
    )
    return folder
