"""Retrieval evaluation on a BEIR-layout collection: nDCG@10, Recall@10/100, MRR@10.

Every configuration is a ``SearchQuery`` sent through the ``SearchPipeline`` that serves
``/v1/search``, with in-process adapters (the embedding service, the Retriever, the ColBERT
reranker, the expansion engine) in place of the deployment handles. So a figure here is the
ranking a client gets for the same request, without HTTP in between:

- nDCG@10, R@10, MRR@10 and the language figures come from the request a client sends with no
  options but the configuration's own (``top_k`` = ``search.top_k``, the rerank pool and stage-1
  depth that follow from it);
- R@100 is the recall of the same configuration asked for ``top_k=100`` without rerank: the
  depth of the candidate list, which a rerank of the top ``rerank_candidates`` cannot change.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve_app.core.contracts import Expansion, ScoredResult
from serve_app.core.pipeline import (
    Expander,
    LocalEmbedder,
    MemoExpander,
    OriginalOnly,
    SearchPipeline,
    SearchQuery,
)
from serve_app.core.rerank import ColbertReranker
from serve_app.core.retrieval import Retriever
from serve_app.settings import DataScope

log = logging.getLogger(__name__)

# One row of the matrix each: which channels, ColBERT rerank or not, expansion or not. "full" is
# the default /v1/search pipeline (today's SearchSettings defaults). Overrides of search settings
# ride along. The baselines and the ablation rows switch off what they do not measure.
_PLAIN = {
    "language_balance": False,
    "identifier_match": False,
    "rerank_fusion_weight": 0.0,
    "rerank_lexical_weight": 0.0,
    "rerank_variants": [],
}


def _full(drop: tuple[str, ...] = (), **search: Any) -> dict[str, Any]:
    """The default pipeline (hybrid, expansion, rerank) with these search settings overridden and
    the variants of the ``drop`` origins left out of the expansion."""
    cfg: dict[str, Any] = {"channels": ("dense", "sparse", "bm25"), "rerank": True, "expand": True}
    if drop:
        cfg["drop"] = drop
    return {**cfg, "search": search} if search else cfg


CONFIGS: dict[str, dict[str, Any]] = {
    # The reference baselines (BASELINES): BM25 on the same chunks, dense alone, and dense top 100
    # reranked by ColBERT MaxSim over those 100.
    "bm25": {"channels": ("bm25",), "search": _PLAIN},
    "dense": {"channels": ("dense",), "search": _PLAIN},
    "dense100+colbert100": {
        "channels": ("dense",),
        "rerank": True,
        "cross_encoder": False,
        "search": {
            **_PLAIN,
            "rerank_candidates": 100,
            "colbert_weight": 1.0,
            "rerank_dense_weight": 0.0,
            "rerank_sparse_weight": 0.0,
        },
    },
    "sparse": {"channels": ("sparse",), "search": _PLAIN},
    "sparse-no-idf": {"channels": ("sparse",), "idf": False, "search": _PLAIN},
    "dense+sparse": {"channels": ("dense", "sparse"), "search": _PLAIN},
    "dense+sparse+balance": {"channels": ("dense", "sparse"), "search": {**_PLAIN, "language_balance": True}},
    "dense+sparse+expansion": {"channels": ("dense", "sparse"), "expand": True, "search": _PLAIN},
    "dense+sparse+colbert": {"channels": ("dense", "sparse"), "rerank": True, "search": _PLAIN},
    "full": _full(),
    # The default until 2026-12-06 (dense + sparse, glossary expansion, no balance, ColBERT rerank of
    # the fused top 20, the identifier lookup): the previous reports' figures, the latency baseline.
    "full-previous": {
        **_full(drop=("lexicon",), **{**_PLAIN, "identifier_match": True, "rerank_candidates": 20}),
        "channels": ("dense", "sparse"),
    },
    # Candidates for the default, each one change away from it (the leave-one-collection-out choice).
    "full-no-lexicon": _full(drop=("lexicon",)),
    "full-no-rv": _full(rerank_variants=[]),
    "full-no-balance": _full(language_balance=False),
    "full-no-lexical": _full(rerank_lexical_weight=0.0),
    "full-no-bm25": {**_full(), "channels": ("dense", "sparse")},
    "full-prior0.1": _full(rerank_fusion_weight=0.1),
    "full@20": _full(rerank_candidates=20),
    "full@30": _full(rerank_candidates=30),
}
CANDIDATES = (
    "full",
    "full-previous",
    "full-no-lexicon",
    "full-no-rv",
    "full-no-balance",
    "full-no-lexical",
    "full-no-bm25",
    "full-prior0.1",
    "full@20",
    "full@30",
)
BASELINES = ("bm25", "dense", "dense100+colbert100")
DEFAULT = "full"  # the configuration /v1/search runs with no options
DEFAULT_CONFIGS = (*BASELINES, *CANDIDATES)
DEPTH = 100  # the list R@100 is measured on
CONCURRENCY = 8  # queries in flight (the fan-out's Milvus calls overlap in the Retriever's threads)


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


def doc_ranking(results: Sequence[ScoredResult]) -> list[str]:
    """Documents in the order of their best chunk (a BEIR qrel judges documents, not chunks)."""
    seen: dict[str, None] = {}
    for r in results:
        seen.setdefault(r.candidate.fields["doc_id"], None)
    return list(seen)


def _mean(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    if not rows:
        return {}
    return {k: round(sum(r[k] for r in rows) / len(rows), 4) for k in rows[0]}


def _bias(
    ranked: Sequence[ScoredResult], query: Query, relevant: dict[str, int], doc_langs: dict[str, str]
) -> dict[str, float]:
    """Language bias: share of the top 10 in the query's language; recall@10 per answer language."""
    top = ranked[:10]
    out: dict[str, float] = {}
    if top:
        out["same_lang@10"] = sum(r.candidate.fields.get("lang") == query.lang for r in top) / len(top)
    found = set(doc_ranking(top))
    for lang in ("ja", "en"):
        rel = {d for d, g in relevant.items() if g > 0 and doc_langs.get(d) == lang}
        if rel:
            out[f"recall@10_{lang}_answers"] = len(rel & found) / len(rel)
    return out


def _mean_keys(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean per key over the rows that have it (bias keys exist only for some queries)."""
    keys = dict.fromkeys(k for r in rows for k in r)
    return {k: round(sum(r[k] for r in rows if k in r) / sum(k in r for r in rows), 4) for k in keys}


def _spread(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``n`` (a subset that keeps every query type)."""
    if k >= n:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)}) if k > 1 else [0]


def config_query(
    q: Query, cfg: dict[str, Any], *, top_k: int | None = None, rerank: bool | None = None
) -> SearchQuery:
    """The request a client sends for configuration ``cfg``."""
    return SearchQuery(
        query=q.text,
        top_k=top_k,
        channels=tuple(cfg["channels"]),
        rerank=bool(cfg.get("rerank")) if rerank is None else rerank,
        expand=bool(cfg.get("expand")),
    )


def config_pipeline(
    name: str, retriever: Retriever, embedder: LocalEmbedder, expander: Expander, cross_encoder: Any = None
) -> SearchPipeline:
    """The serving pipeline wired to in-process engines, with the configuration's setting overrides."""
    cfg = CONFIGS[name]
    search = retriever.settings.model_copy(update=cfg.get("search", {}))
    if cfg.get("drop"):
        expander = DropOrigins(expander, cfg["drop"])
    r = Retriever(
        retriever.store,
        search,
        idf=retriever.idf if cfg.get("idf", True) else None,
        bm25=retriever.bm25,
        languages=retriever.languages,
    )
    return SearchPipeline(
        search,
        expander=expander,
        embedder=embedder,
        retriever=r,
        reranker=ColbertReranker(embedder, search, cross_encoder if cfg.get("cross_encoder", True) else None),
    )


class DropOrigins:
    """An expander without the variants of some origins (a configuration without the lexicon)."""

    def __init__(self, inner: Expander, origins: Sequence[str]) -> None:
        self.inner, self.origins = inner, set(origins)

    async def expand(self, query: str, enabled: bool = True, scope: DataScope | None = None) -> Expansion:
        out = await self.inner.expand(query, enabled, scope)
        return {**out, "variants": [v for v in out["variants"] if v["origin"] not in self.origins]}


async def run_queries(
    pipeline: SearchPipeline, requests: Sequence[SearchQuery], concurrency: int = CONCURRENCY
) -> list[list[ScoredResult]]:
    sem = asyncio.Semaphore(concurrency)

    async def one(req: SearchQuery) -> list[ScoredResult]:
        async with sem:
            return (await pipeline.search(req)).results

    return await asyncio.gather(*(one(r) for r in requests))


def evaluate(
    service: Any,
    retriever: Retriever,
    queries: Sequence[Query],
    qrels: dict[str, dict[str, int]],
    *,
    configs: Sequence[str] = DEFAULT_CONFIGS,
    rerank_queries: int | None = None,
    expansion: Expander | None = None,
    doc_langs: dict[str, str] | None = None,
    cross_encoder: Any = None,
) -> dict[str, Any]:
    """Per configuration: overall means, breakdowns by query lang and type, language bias, and the
    per-query document rankings (``rankings``: top 10 as served; ``rankings@100``: the depth list)."""
    doc_langs = doc_langs or {}
    report: dict[str, Any] = {"configs": {}, "rankings": {}, "rankings@100": {}, "ndcg@10": {}}
    embedder = LocalEmbedder(service)
    expander = MemoExpander(expansion or OriginalOnly())
    started = time.perf_counter()
    # With ColBERT rows: the rerank reads them, and the plain configurations reuse the same outputs.
    embedder.prime([q.text for q in queries], "query", colbert=True)
    report["encode_queries_s"] = round(time.perf_counter() - started, 2)
    if any(CONFIGS[c].get("expand") for c in configs):
        report["expansion"] = asyncio.run(_expansion_summary(expander, embedder, queries, expansion))

    rerank_subset = _spread(len(queries), rerank_queries or len(queries))
    # The depth list is asked for without rerank, so configurations that differ only in the rerank
    # share it (dense+sparse and +colbert, +expansion and full): each is searched once.
    depth_lists: dict[tuple[Any, ...], dict[str, list[ScoredResult]]] = {}
    for name in configs:
        cfg = CONFIGS[name]
        pipeline = config_pipeline(name, retriever, embedder, expander, cross_encoder)
        subset = [queries[i] for i in (rerank_subset if cfg.get("rerank") else range(len(queries)))]
        t0 = time.perf_counter()
        ranked = asyncio.run(run_queries(pipeline, [config_query(q, cfg) for q in subset]))
        elapsed = time.perf_counter() - t0
        known = depth_lists.setdefault(_depth_key(cfg), {})
        todo = [q for q in subset if q.qid not in known]
        found = asyncio.run(
            run_queries(pipeline, [config_query(q, cfg, top_k=DEPTH, rerank=False) for q in todo])
        )
        known.update({q.qid: r for q, r in zip(todo, found, strict=True)})
        deep = [known[q.qid] for q in subset]
        report["rankings"][name] = {q.qid: doc_ranking(r) for q, r in zip(subset, ranked, strict=True)}
        report["rankings@100"][name] = {q.qid: doc_ranking(r) for q, r in zip(subset, deep, strict=True)}
        rows, by_lang, by_type = [], defaultdict(list), defaultdict(list)
        per_query = report["ndcg@10"][name] = {}
        for q, served, depth in zip(subset, ranked, deep, strict=True):
            m = _scored(served, depth, qrels[q.qid])
            if not m:
                continue
            per_query[q.qid] = m["ndcg@10"]
            m.update(_bias(served, q, qrels[q.qid], doc_langs))
            rows.append(m)
            by_lang[q.lang].append(m)
            by_type[q.type].append(m)
        log.info("%s: %d queries in %.1f s", name, len(subset), elapsed)
        report["configs"][name] = {
            "queries": len(rows),
            **_mean_keys(rows),
            "by_lang": {k: {"queries": len(v), **_mean_keys(v)} for k, v in sorted(by_lang.items())},
            "by_type": {k: {"queries": len(v), **_mean_keys(v)} for k, v in sorted(by_type.items())},
            "seconds": round(elapsed, 2),
        }
        if len(rerank_subset) < len(queries):  # the rerank rows ran on a subset: compare like with like
            on_subset = _on_rerank_subset(
                cfg, configs, pipeline, subset, ranked, deep, qrels, rerank_subset, queries
            )
            report["configs"][name].update(on_subset)
    report["significance"] = significance(report["ndcg@10"])
    return report


def paired_test(a: Sequence[float], b: Sequence[float], *, resamples: int = 10_000) -> dict[str, float]:
    """Mean of ``a - b`` with two-sided p-values: a paired t-test and a paired randomisation test.

    scipy's ``ttest_rel`` and ``permutation_test`` (``permutation_type="samples"`` swaps the two
    systems' scores within each query), rather than ranx, which pulls numba, seaborn and
    ir-datasets into the service's environment for the same two tests. Fixed seed: reproducible.
    """
    import numpy as np
    from scipy import stats

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    out = {"queries": len(x), "delta": round(float((x - y).mean()), 4) if len(x) else 0.0}
    if len(x) < 2 or not (x - y).any():
        return {**out, "p_ttest": 1.0, "p_randomization": 1.0}
    t = float(stats.ttest_rel(x, y).pvalue)
    perm = stats.permutation_test(
        (x, y),
        lambda u, v, axis=-1: np.mean(u - v, axis=axis),
        permutation_type="samples",
        n_resamples=resamples,
        vectorized=True,
        random_state=0,
    )
    return {**out, "p_ttest": round(t, 5), "p_randomization": round(float(perm.pvalue), 5)}


def significance(per_query: dict[str, dict[str, float]], default: str = DEFAULT) -> dict[str, Any]:
    """The default configuration against every baseline measured with it, on the queries both ran."""
    if default not in per_query:
        return {}
    ours = per_query[default]
    out: dict[str, Any] = {"default": default, "against": {}}
    for base in BASELINES:
        if base not in per_query:
            continue
        qids = sorted(set(ours) & set(per_query[base]))
        out["against"][base] = paired_test([ours[q] for q in qids], [per_query[base][q] for q in qids])
    if out["against"]:
        means = {b: sum(per_query[b].values()) / max(len(per_query[b]), 1) for b in out["against"]}
        out["best_baseline"] = max(means, key=lambda b: means[b])
    return out


_RERANK_ONLY = {"rerank_candidates", "rerank_fusion_weight", "colbert_weight", "rerank_dense_weight"}
_RERANK_ONLY |= {"rerank_sparse_weight", "cross_encoder_weight", "rerank_lexical_weight", "rerank_variants"}


def _depth_key(cfg: dict[str, Any]) -> tuple[Any, ...]:
    """What the depth list of a configuration depends on: all of it but the rerank."""
    search = tuple(
        sorted(
            (k, json.dumps(v, sort_keys=True))
            for k, v in cfg.get("search", {}).items()
            if k not in _RERANK_ONLY
        )
    )
    drop = tuple(cfg.get("drop", ()))
    return tuple(cfg["channels"]), bool(cfg.get("expand")), search, cfg.get("idf", True), drop


def _scored(
    served: list[ScoredResult], depth: list[ScoredResult], relevant: dict[str, int]
) -> dict[str, float]:
    """The @10 metrics of the served list, R@100 of the depth list; {} for a query without answers."""
    m = metrics(doc_ranking(served), relevant)
    if m:
        m["recall@100"] = metrics(doc_ranking(depth), relevant)["recall@100"]
    return m


def _on_rerank_subset(
    cfg: dict[str, Any],
    configs: Sequence[str],
    pipeline: SearchPipeline,
    subset: list[Query],
    ranked: list[list[ScoredResult]],
    deep: list[list[ScoredResult]],
    qrels: dict[str, dict[str, int]],
    rerank_subset: list[int],
    queries: Sequence[Query],
) -> dict[str, Any]:
    """A plain row's figures on the rerank rows' queries; a rerank row's figures without its rerank."""
    if cfg.get("rerank"):
        plain = asyncio.run(run_queries(pipeline, [config_query(q, cfg, rerank=False) for q in subset]))
        rows = [_scored(p, d, qrels[q.qid]) for q, p, d in zip(subset, plain, deep, strict=True)]
        return {"same_queries_without_rerank": _mean([m for m in rows if m])}
    if any(CONFIGS[c].get("rerank") for c in configs):
        picked = {queries[i].qid for i in rerank_subset}
        rows = [
            _scored(r, d, qrels[q.qid])
            for q, r, d in zip(subset, ranked, deep, strict=True)
            if q.qid in picked
        ]
        return {"rerank_subset": _mean([m for m in rows if m])}
    return {}


async def _expansion_summary(
    expander: Expander, embedder: LocalEmbedder, queries: Sequence[Query], engine: Any
) -> dict[str, Any]:
    t0 = time.perf_counter()
    variants = {q.qid: (await expander.expand(q.text, True))["variants"] for q in queries}
    embedder.prime([v["text"] for vs in variants.values() for v in vs], "query", colbert=True)
    return {
        "queries_with_variants": sum(len(v) > 1 for v in variants.values()),
        "variants": sum(len(v) - 1 for v in variants.values()),
        "origins": dict(Counter(v["origin"] for vs in variants.values() for v in vs[1:])),
        "glossary_pairs": len(getattr(engine, "glossary", ())),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def collection_name(dataset: Path) -> str:
    return "eval_" + re.sub(r"[^A-Za-z0-9_]", "_", dataset.resolve().name)[:60]


# ----------------------------------------------------------------------------- identifier set


def evaluate_identifiers(
    pipeline: SearchPipeline,
    ingestor: Any,
    passages: Sequence[Any],
    *,
    count: int = 80,
    seed: int = 0,
) -> dict[str, Any]:
    """The generated identifier set (``core.identifiers``): is the chunk holding it first?

    Identifiers of every shape are planted in copies of real passages (``passages``: the
    collection's ``SourceDocument``s) and written through the ingest path: half before the
    searches, half each just before its own search (what a client writing and then searching
    sees). Each is searched alone through ``pipeline`` (the default ``/v1/search``); the planted
    copies are deleted afterwards, so the collection is left as it was.
    """
    from serve_app.core.identifiers import generate_set
    from serve_app.core.ingest import SourceDocument

    pool = [(d.doc_id, d.title, d.text, d.lang or "en") for d in passages if len(d.text) >= 80]
    planted = generate_set(pool, count=count, seed=seed)

    def doc(p: Any) -> SourceDocument:
        return SourceDocument(doc_id=p.doc_id, text=p.text, fmt="text", title=p.title, lang=p.lang)

    rows: list[dict[str, Any]] = []
    try:
        ingestor.ingest([doc(p) for p in planted if not p.late])
        for p in planted:
            if p.late:
                ingestor.ingest([doc(p)])
            results = asyncio.run(pipeline.search(SearchQuery(query=p.identifier))).results
            ranks = [r.rank for r in results if r.candidate.fields["doc_id"] == p.doc_id]
            rows.append(
                {
                    "identifier": p.identifier,
                    "shape": p.shape,
                    "late": p.late,
                    "rank": ranks[0] if ranks else None,
                }
            )
    finally:
        ingestor.delete_documents([p.doc_id for p in planted])

    def summary(part: list[dict[str, Any]]) -> dict[str, Any]:
        n = len(part)
        return {
            "queries": n,
            "rank1": round(sum(r["rank"] == 1 for r in part) / n, 4) if n else 0.0,
            "top10": round(sum(r["rank"] is not None for r in part) / n, 4) if n else 0.0,
        }

    return {
        **summary(rows),
        "seed": seed,
        "by_shape": {
            s: summary([r for r in rows if r["shape"] == s]) for s in dict.fromkeys(r["shape"] for r in rows)
        },
        "written_before_search": summary([r for r in rows if r["late"]]),
        "misses": [r for r in rows if r["rank"] != 1],
    }
