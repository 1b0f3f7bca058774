"""Retrieval evaluation on a BEIR-layout collection: nDCG@10, Recall@10/100, MRR@10.

Runs the same engines the Serve graph wraps (encoder, Retriever, rerank) in-process, so a
figure here is the service's ranking without HTTP in between.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve_app.embedding import EmbeddingService, EmbedItem
from serve_app.fusion import Candidate
from serve_app.retrieval import Retriever, passage_text, rerank

log = logging.getLogger(__name__)

CONFIGS = {
    "dense": {"channels": ("dense",), "rerank": False},
    "sparse": {"channels": ("sparse",), "rerank": False},
    "dense+sparse": {"channels": ("dense", "sparse"), "rerank": False},
    "dense+sparse+colbert": {"channels": ("dense", "sparse"), "rerank": True},
}


@dataclass
class Query:
    qid: str
    text: str
    lang: str
    type: str


def load_queries(root: Path, split: str) -> tuple[list[Query], dict[str, dict[str, int]]]:
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    qrels_path = root / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        raise ValueError(f"{qrels_path} not found: is {root} a BEIR-layout collection?")
    with qrels_path.open(encoding="utf-8") as fh:
        for line in fh:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3 or not parts[2].lstrip("-").isdigit():
                continue  # header or blank
            qrels[parts[0]][parts[1]] = int(parts[2])
    queries = []
    with (root / "queries.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if str(row["_id"]) in qrels:
                queries.append(
                    Query(str(row["_id"]), row["text"], row.get("lang", "?"), row.get("type", "?"))
                )
    return queries, dict(qrels)


def metrics(ranked_docs: Sequence[str], relevant: dict[str, int]) -> dict[str, float]:
    rel = {d for d, g in relevant.items() if g > 0}
    if not rel:
        return {}
    dcg = sum((2 ** relevant.get(d, 0) - 1) / math.log2(i + 2) for i, d in enumerate(ranked_docs[:10]))
    ideal = sorted((g for g in relevant.values() if g > 0), reverse=True)[:10]
    idcg = sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(ideal))
    mrr = next((1.0 / (i + 1) for i, d in enumerate(ranked_docs[:10]) if d in rel), 0.0)
    return {
        "ndcg@10": dcg / idcg if idcg else 0.0,
        "recall@10": len(rel & set(ranked_docs[:10])) / len(rel),
        "recall@100": len(rel & set(ranked_docs[:100])) / len(rel),
        "mrr@10": mrr,
    }


def _doc_ranking(candidates: Sequence[Candidate]) -> list[str]:
    seen: dict[str, None] = {}
    for c in candidates:
        seen.setdefault(c.fields["doc_id"], None)
    return list(seen)


def _mean(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    if not rows:
        return {}
    return {k: round(sum(r[k] for r in rows) / len(rows), 4) for k in rows[0]}


def evaluate(
    service: EmbeddingService,
    retriever: Retriever,
    queries: Sequence[Query],
    qrels: dict[str, dict[str, int]],
    *,
    configs: Sequence[str] = tuple(CONFIGS),
    rerank_queries: int = 100,
) -> dict[str, Any]:
    """Per configuration: overall means plus breakdowns by query lang and type."""
    report: dict[str, Any] = {"configs": {}}
    started = time.perf_counter()
    encoded = []
    for start in range(0, len(queries), 32):
        batch = queries[start : start + 32]
        encoded.extend(service.embed_items([EmbedItem(q.text, "query") for q in batch]))
    report["encode_queries_s"] = round(time.perf_counter() - started, 2)

    async def run_all(channels: Sequence[str], subset: Sequence[int]) -> list[list[Candidate]]:
        sem = asyncio.Semaphore(8)

        async def one(i: int) -> list[Candidate]:
            async with sem:
                cands, _ = await retriever.search([encoded[i]], top_k=100, channels=channels, limit=100)
                return cands

        return await asyncio.gather(*(one(i) for i in subset))

    for name in configs:
        cfg = CONFIGS[name]
        subset = list(range(len(queries)))
        if cfg["rerank"]:
            subset = subset[:rerank_queries]
        t0 = time.perf_counter()
        ranked = asyncio.run(run_all(cfg["channels"], subset))
        if cfg["rerank"]:
            n = retriever.settings.rerank_candidates
            for pos, i in enumerate(subset):
                if pos and pos % 25 == 0:
                    log.info("rerank: %d/%d queries", pos, len(subset))
                head = ranked[pos][:n]
                q_out = service.embed_items([EmbedItem(queries[i].text, "query", colbert=True)])[0]
                p_out = service.embed_items(
                    [EmbedItem(passage_text(c.fields), "passage", colbert=True) for c in head]
                )
                ranked[pos] = rerank(q_out, p_out, head, retriever.settings) + ranked[pos][n:]
        elapsed = time.perf_counter() - t0
        rows, by_lang, by_type = [], defaultdict(list), defaultdict(list)
        for pos, i in enumerate(subset):
            q = queries[i]
            m = metrics(_doc_ranking(ranked[pos]), qrels[q.qid])
            if not m:
                continue
            rows.append(m)
            by_lang[q.lang].append(m)
            by_type[q.type].append(m)
        log.info("%s: %d queries in %.1f s", name, len(subset), elapsed)
        report["configs"][name] = {
            "queries": len(rows),
            **_mean(rows),
            "by_lang": {k: {"queries": len(v), **_mean(v)} for k, v in sorted(by_lang.items())},
            "by_type": {k: {"queries": len(v), **_mean(v)} for k, v in sorted(by_type.items())},
            "seconds": round(elapsed, 2),
        }
        if cfg["rerank"] and len(subset) < len(queries):
            # The same subset without rerank, so the rerank figure has a fair comparison.
            base = [
                metrics(_doc_ranking(r), qrels[queries[i].qid])
                for r, i in zip(asyncio.run(run_all(cfg["channels"], subset)), subset, strict=True)
            ]
            report["configs"][name]["same_queries_without_rerank"] = _mean([b for b in base if b])
    return report


def collection_name(dataset: Path) -> str:
    return "eval_" + re.sub(r"[^A-Za-z0-9_]", "_", dataset.resolve().name)[:60]


def format_table(dataset: str, report: dict[str, Any]) -> str:
    lines = [
        f"{dataset}",
        f"{'config':24} {'n':>5} {'nDCG@10':>8} {'R@10':>7} {'R@100':>7} {'MRR@10':>7}",
    ]
    for name, r in report["configs"].items():
        lines.append(
            f"{name:24} {r['queries']:>5} {r['ndcg@10']:>8.3f} {r['recall@10']:>7.3f} "
            f"{r['recall@100']:>7.3f} {r['mrr@10']:>7.3f}"
        )
    return "\n".join(lines)
