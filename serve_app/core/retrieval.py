"""Retrieval logic shared by the Searcher / Reranker deployments and the evaluation command."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serve_app.core.bm25 import Bm25Index
from serve_app.core.contracts import Fanout, QueryVector
from serve_app.core.encoder import colbert_maxsim, lexical_score
from serve_app.core.fusion import Candidate, RankedList, rrf_fuse
from serve_app.core.identifiers import find_identifiers, pins
from serve_app.core.lexical import IdfTable
from serve_app.core.store import (
    LANGUAGES,
    MAX_WINDOW,
    SCALAR_FIELDS,
    Filter,
    Hit,
    Store,
    and_,
    build_filter,
    doc_version_filter,
    scope_filter,
)
from serve_app.settings import DataScope, SearchSettings

_POOL = ThreadPoolExecutor(max_workers=32, thread_name_prefix="specrag-search")


def _matches(fields: dict[str, Any], filters: dict[str, Any]) -> bool:
    """Stage-2 metadata filter on one hit (the same meaning as ``build_filter``)."""
    for key, name in (("kinds", "kind"), ("langs", "lang"), ("doc_ids", "doc_id"), ("sources", "source")):
        wanted = filters.get(key)
        if wanted and fields.get(name) not in wanted:
            return False
    tags = filters.get("tags")
    return not tags or bool(set(tags) & set(fields.get("tags") or []))


@dataclass(slots=True)
class _Search:
    variant: int
    channel: str
    weight: float
    lang: str | None  # stage 1 restricted to this language (language balance), else None
    hits: list[Hit] = field(default_factory=list)
    fetched: int = 0
    top: float = 0.0  # best raw score of stage 1
    ms: float = 0.0
    refetched: bool = False


class Retriever:
    """Two-stage fan-out over every query variant x channel, concurrently, then weighted RRF.

    Stage 1 is a pure ANN search per variant and channel (no metadata filter: Milvus' fastest
    path), over-fetching ``limit x overfetch``. Stage 2 keeps each document's newest stored
    version, applies the metadata filters and adds the document's current ``updated_at``; a
    list that a selective filter left short is searched again with the filter pushed into
    Milvus, so a rare kind or tag still fills the page.

    Versions: an update inserts the complete new version before deleting the old one, so for a
    moment both are stored and stage 2 makes the switch exact for readers. If the ANN ran just
    before the new version landed and the check just after, the document's stale hits in that
    channel are replaced by its current version's best chunk, so the document is neither
    doubled, missing nor stale.
    """

    def __init__(
        self,
        store: Store,
        settings: SearchSettings,
        *,
        idf: IdfTable | None = None,
        bm25: Bm25Index | None = None,
        languages: dict[str, int] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.idf = idf
        self.bm25 = bm25  # the bm25 channel's index (None: the channel is not served)
        # Current chunks per language (``store.language_counts``); None = not measured yet.
        self.languages = languages

    def corpus_languages(self) -> list[str]:
        """The languages holding at least ``language_min_share`` of the current chunks (both
        while the mix is not measured yet: an empty language costs one empty search)."""
        counts = self.languages
        if counts is None:
            return list(LANGUAGES)
        total = sum(counts.values())
        share = self.settings.language_min_share
        return [lg for lg in LANGUAGES if total and counts.get(lg, 0) / total >= share]

    def _stage1_languages(self, vectors: Sequence[QueryVector], filters: dict[str, Any]) -> list[str | None]:
        """Per variant and channel, one list (``[None]``) or one list per corpus language.

        Language balance applies to a query none of whose variants is in some language of the
        corpus (an English question over ja/en documents, with no Japanese rewrite): the encoder
        prefers its own language, so each language gets its own list and both reach the rerank. A
        query with a variant in every language (a Japanese question and its English translation
        from the LLM or the lexicon) already searches each language in its own words.
        """
        if not self.settings.language_balance or filters.get("langs"):
            return [None]
        present = self.corpus_languages()
        covered = {vec.get("lang") for vec in vectors}
        if len(present) < 2 or set(present) <= covered:
            return [None]
        return list(present)

    async def search(
        self,
        vectors: Sequence[QueryVector],
        *,
        top_k: int,
        channels: Sequence[str] = ("dense", "sparse"),
        filters: dict[str, Any] | None = None,
        limit: int | None = None,
        parallel: bool = True,
        explain: bool = False,
        scope: DataScope | None = None,
    ) -> Fanout:
        """``vectors``: per variant ``dense``, ``sparse`` and optionally ``origin`` / ``lang``.

        ``scope``: the caller's data scope (auth), a filter it cannot widen: applied with the
        request's ``filters`` in stage 2 and in every refetch."""
        s = self.settings
        want = max(top_k, limit or 0)
        fetch = min(want * s.overfetch, MAX_WINDOW)
        filters = {k: v for k, v in (filters or {}).items() if v}
        allowed = scope_filter(scope)
        plan: list[_Search] = []
        queries: list[dict[str, Any]] = []
        langs = self._stage1_languages(vectors, filters)
        for v, vec in enumerate(vectors):
            vw = s.variant_weights.get(vec.get("origin", "original"), 1.0)
            sparse = vec.get("sparse") or {}
            if sparse and self.idf is not None:
                sparse = self.idf.weigh(sparse)
            text = vec.get("text") or ""
            queries.append({"dense": vec["dense"], "sparse": sparse, "bm25": text})
            searchable = {"dense": True, "sparse": bool(sparse), "bm25": bool(text) and self.bm25 is not None}
            weights = (("dense", s.dense_weight), ("sparse", s.sparse_weight), ("bm25", s.bm25_weight))
            for channel, cw in weights:
                if channel in channels and searchable[channel]:
                    plan.extend(_Search(v, channel, cw * vw, lg) for lg in langs)
        # Identifiers of the original query: the chunks holding them verbatim (see core.identifiers).
        idents = find_identifiers(vectors[0].get("text") or "") if vectors and s.identifier_match else []
        if idents:
            plan.append(_Search(0, "exact", s.identifier_weight, None))

        loop = asyncio.get_running_loop()

        def run(job: _Search, expr: Filter | None, pushdown: Filter | None = None) -> None:
            t0 = time.perf_counter()
            if job.channel == "bm25":
                job.hits = self._bm25(queries[job.variant]["bm25"], job.lang, fetch, pushdown)
            elif job.channel == "exact":
                job.hits = self._exact(idents, fetch, pushdown)
            else:
                fn = self.store.search_dense if job.channel == "dense" else self.store.search_sparse
                job.hits = fn(queries[job.variant][job.channel], limit=fetch, expr=expr)
            job.ms += (time.perf_counter() - t0) * 1000
            job.fetched = len(job.hits)
            job.top = max((h.score for h in job.hits), default=0.0)

        def stage1_expr(job: _Search) -> Filter | None:
            return build_filter(current_only=False, langs=job.lang) if job.lang else None

        started = time.perf_counter()
        if parallel:  # pymilvus blocks: threads let the searches overlap on the server
            await asyncio.gather(*(loop.run_in_executor(_POOL, run, j, stage1_expr(j)) for j in plan))
        else:
            for job in plan:
                run(job, stage1_expr(job))
        searched = time.perf_counter()
        gate = self._weigh_sparse(plan, queries)
        current = await self._current_only(plan, queries)
        if filters or allowed is not None:
            pushed = and_(build_filter(current_only=False, **filters), allowed)
            short = []
            for job in plan:
                job.hits = [
                    h
                    for h in job.hits
                    if _matches(h.fields, filters) and (allowed is None or allowed.matches(h.fields))
                ]
                if len(job.hits) < want and job.fetched >= fetch:
                    short.append(job)  # the filter is selective: let Milvus apply it during the ANN
            if short:
                exprs = [and_(stage1_expr(j), pushed) for j in short]
                await asyncio.gather(
                    *(
                        loop.run_in_executor(_POOL, run, j, e, pushed)
                        for j, e in zip(short, exprs, strict=True)
                    )
                )
                current.update(await asyncio.to_thread(self.store.doc_versions, _doc_ids(short)))
                for job in short:
                    job.refetched = True
                    job.hits = [
                        h
                        for h in job.hits
                        if current.get(h.fields["doc_id"], (None,))[0] == h.fields["version"]
                    ]
        checked = time.perf_counter()
        lists = [RankedList(j.variant, j.channel, j.weight, j.hits) for j in plan]
        if len(lists) == 1:  # one list: its own order, whatever its weight
            lists[0].weight = 1.0
        fused = rrf_fuse(lists, k=s.rrf_k)
        if gate is not None and self.corpus_languages() == [vectors[0].get("lang")]:
            # Lexical overlap can only reward passages in the query's own language: where the
            # answer may be in another one (a bilingual corpus), it would push that answer down.
            _lexical_evidence(fused, plan, queries, gate)
        if idents and pins(vectors[0].get("text") or "", idents):
            # A lookup: the chunks holding more of its identifiers go first (RRF order within), and
            # stay first through the rerank (``pinned``).
            for cand in fused:
                if held := cand.channel_scores.get("exact"):
                    cand.channel_scores["pinned"] = held
            fused.sort(key=lambda c: -c.channel_scores.get("pinned", 0.0))
        fused = fused[:want]
        for cand in fused:  # the document's current write time, from the versions stage 2 read
            if newest := current.get(cand.fields["doc_id"]):
                cand.fields["doc_updated_at"] = newest[1]
        timings: dict[str, float] = {
            "search": (searched - started) * 1000,
            "versions": (checked - searched) * 1000,
            "fuse": (time.perf_counter() - checked) * 1000,
        }
        for job in plan:  # the slowest search of each channel (the fan-out waits for it)
            key = f"search_{job.channel}"
            timings[key] = max(timings.get(key, 0.0), job.ms)
        described = None
        if explain:
            described = [
                {
                    "variant": j.variant,
                    "channel": j.channel,
                    "lang": j.lang,
                    "weight": round(j.weight, 4),
                    "top_score": round(j.top, 4),
                    "fetched": j.fetched,
                    "kept": len(j.hits),
                    "refetched": j.refetched,
                    "ms": round(j.ms, 2),
                }
                for j in plan
            ]
        rrf_max = sum(max(rl.weight, 0.0) for rl in lists) / (s.rrf_k + 1)
        return Fanout(fused, timings, len(plan), described, rrf_max or 1.0)

    def _bm25(self, text: str, lang: str | None, limit: int, pushdown: Filter | None) -> list[Hit]:
        """The bm25 channel's hits (a snapshot index: stage 2's version check applies as for ANN).

        A balanced list's language is a mask in the index; a selective filter's refetch
        (``pushdown``, rare) reads the whole ranking and filters it here.
        """
        assert self.bm25 is not None
        if pushdown is None:
            return self.bm25.search(text, limit=limit, lang=lang)
        hits = self.bm25.search(text, limit=len(self.bm25), lang=lang)
        return [h for h in hits if pushdown.matches(h.fields)][:limit]

    def _exact(self, idents: list[str], limit: int, pushdown: Filter | None) -> list[Hit]:
        """Current chunks containing the identifiers verbatim, scored by how many of them they hold.

        One LIKE query per identifier (Milvus' ``_`` wildcard may over-match: each row is checked
        here exactly, title trail included).
        """
        scope = and_(build_filter(current_only=True), pushdown)
        rows: dict[str, dict[str, Any]] = {}
        for ident in idents:
            expr = Filter.contains("text", ident) if scope is None else scope & Filter.contains("text", ident)
            for row in self.store.query(expr, limit=min(limit, MAX_WINDOW), fields=list(SCALAR_FIELDS)):
                rows.setdefault(row["chunk_id"], row)
        hits = []
        for cid, row in rows.items():
            hay = " ".join([*(row.get("title_path") or []), row.get("text") or ""])
            held = sum(ident in hay for ident in idents)
            if held:
                hits.append(Hit(cid, float(held), row))
        hits.sort(key=lambda h: (-h.score, h.chunk_id))
        return hits[:limit]

    def _weigh_sparse(self, plan: list[_Search], queries: list[dict[str, Any]]) -> float | None:
        """Scale each sparse list by how much of the query's IDF mass its best hit matched; return
        that scale for the original query (its lexical confidence); ``None`` without IDF or without a
        sparse list of the original (no lexical evidence then, rather than evidence of 0).

        With IDF and the placeholder head the best score is the summed IDF of the shared tokens, so
        score / query mass is in [0, 1]: ~0.5 for a same-language question, ~0.1 when a Japanese
        question meets English text and only punctuation-like tokens match (measured on the dev sets).
        """
        ramp = self.settings.sparse_coverage
        if self.idf is None or ramp is None:
            return None
        lo, hi = ramp
        gate: float | None = None  # no sparse list of the original: no lexical evidence at all
        best: dict[int, float] = {}
        for job in plan:  # the best hit of the variant's lists measures the whole corpus
            if job.channel == "sparse":
                best[job.variant] = max(best.get(job.variant, 0.0), job.top)
        for job in plan:
            if job.channel != "sparse":
                continue
            mass = sum(queries[job.variant]["sparse"].values())
            coverage = best.get(job.variant, job.top) / mass if mass > 0 else 0.0
            scale = min(1.0, max(0.0, (coverage - lo) / max(hi - lo, 1e-9)))
            job.weight *= scale
            if job.variant == 0:
                gate = scale
        return gate

    async def _current_only(
        self, plan: list[_Search], queries: list[dict[str, Any]]
    ) -> dict[str, tuple[int, int]]:
        """Keep each document's newest version in every list; returns doc_id -> (version, updated_at)."""
        doc_ids = _doc_ids(plan)
        if not doc_ids:
            return {}
        current = await asyncio.to_thread(self.store.doc_versions, doc_ids)
        for job in plan:
            fresh = {
                h.fields["doc_id"]
                for h in job.hits
                if h.fields["doc_id"] in current
                and int(h.fields["version"]) == current[h.fields["doc_id"]][0]
            }
            kept: list[Hit] = []
            replaced: set[str] = set()
            for hit in job.hits:
                doc_id = hit.fields["doc_id"]
                newest = current.get(doc_id)
                if newest is None:  # deleted since the ANN ran
                    continue
                if int(hit.fields["version"]) == newest[0]:
                    kept.append(hit)
                elif doc_id not in fresh and doc_id not in replaced and job.channel in ("dense", "sparse"):
                    # This channel saw only the old version: rank the new one in its place.
                    replaced.add(doc_id)
                    expr = build_filter(current_only=False, langs=job.lang) if job.lang else None
                    kept.extend(
                        await asyncio.to_thread(
                            self._best_chunk, queries[job.variant], job.channel, doc_id, newest[0], expr
                        )
                    )
            unique: dict[str, Hit] = {}
            for hit in kept:
                unique.setdefault(hit.chunk_id, hit)
            job.hits = list(unique.values())
        return current

    def _best_chunk(
        self, vector: dict[str, Any], channel: str, doc_id: str, version: int, expr: Filter | None
    ) -> list[Hit]:
        """The version's best chunk for this channel, scored here from its stored vectors.

        Not an ANN call: a just-inserted version may not be searchable yet on every Milvus, but
        it is readable, and one document has few chunks.
        """
        rows: list[dict[str, Any]] = []
        for attempt in range(5):  # an even newer version may replace this one meanwhile: follow it
            if attempt:
                time.sleep(0.01 * attempt)  # let that write finish
            pinned = doc_version_filter(doc_id, version)
            rows = self.store.query(
                pinned if expr is None else expr & pinned,
                limit=MAX_WINDOW,
                fields=[*SCALAR_FIELDS, channel],
            )
            newest = None if rows else self.store.doc_versions([doc_id]).get(doc_id)
            if rows or newest is None or newest[0] == version:
                break
            version = newest[0]
        if not rows:
            return []
        if channel == "dense":
            q = np.asarray(vector["dense"], dtype=np.float32)
            q = q / (np.linalg.norm(q) or 1.0)
            scores = [float(np.dot(q, np.asarray(r["dense"], dtype=np.float32))) for r in rows]
        else:
            scores = [lexical_score(vector["sparse"], dict(r["sparse"])) for r in rows]
        best = max(range(len(rows)), key=scores.__getitem__)
        fields = {k: v for k, v in rows[best].items() if k != channel}
        return [Hit(chunk_id=fields["chunk_id"], score=scores[best], fields=fields)]


def _lexical_evidence(
    fused: list[Candidate], plan: Sequence[_Search], queries: Sequence[dict[str, Any]], gate: float
) -> None:
    """``lexical`` per candidate: the share of the original query's IDF mass it matches (its best
    score in the query's own sparse lists over the mass), times the query's lexical confidence
    (``gate``): ~0 across languages, where shared tokens are noise. The rerank may weigh it in
    (``rerank_lexical_weight``); a candidate no sparse list found counts 0."""
    mass = sum(queries[0]["sparse"].values()) if queries else 0.0
    if mass <= 0:
        return
    best: dict[str, float] = {}
    for job in plan:
        if job.channel == "sparse" and job.variant == 0:
            for hit in job.hits:
                best[hit.chunk_id] = max(best.get(hit.chunk_id, 0.0), hit.score)
    for cand in fused:
        cand.channel_scores["lexical"] = gate * min(best.get(cand.chunk_id, 0.0) / mass, 1.0)


def _doc_ids(plan: Sequence[_Search]) -> list[str]:
    return sorted({h.fields["doc_id"] for job in plan for h in job.hits})


def rerank(
    queries: Sequence[Mapping[str, Any]],
    passages: Sequence[Mapping[str, Any]],
    candidates: list[Candidate],
    settings: SearchSettings,
    cross_scores: Sequence[float] | None = None,
) -> list[Candidate]:
    """Weighted mean of ColBERT MaxSim, dense and sparse, as BGE-M3's ``compute_score`` combines them,
    plus a cross-encoder's (sigmoid) score when one is configured.

    ``queries`` (the original query first, then any variants the rerank also reads) and
    ``passages`` are Embedder outputs (dense, sparse, colbert) from one pass each, so every
    candidate gets all three scores, also one that only the sparse channel found.
    ``candidates`` come in fused order: their place in it joins the mean as ``fusion``
    (``rerank_fusion_weight``; 1.0 for the first, (k + 1) / (k + 1 + i) for the i-th after it).
    """
    k = settings.rrf_k
    for i, (cand, p) in enumerate(zip(candidates, passages, strict=True)):
        cross = float(cross_scores[i]) if cross_scores is not None else None
        place = (k + 1) / (k + 1 + i)
        lexical = cand.channel_scores.get("lexical")
        cand.channel_scores.update(rerank_scores(queries, p, settings, cross, fusion=place, lexical=lexical))
    # Chunks pinned by an identifier lookup stay first, as in the fused order.
    return sorted(
        candidates,
        key=lambda c: (-c.channel_scores.get("pinned", 0.0), -c.channel_scores["rerank"], c.chunk_id),
    )


def rerank_scores(
    queries: Sequence[Mapping[str, Any]],
    passage: Mapping[str, Any],
    settings: SearchSettings,
    cross: float | None = None,
    *,
    fusion: float | None = None,
    lexical: float | None = None,
) -> dict[str, float]:
    """One passage's rerank scores: ColBERT, dense, sparse (+ cross-encoder, + its place in the
    fused list when it has one) and their weighted mean under ``rerank``; the one formula of
    ``rerank`` and of the text rerank (``/v1/rerank``, where texts have no fused place).

    With several ``queries`` (a query and its translation, ``rerank_variants``) the ColBERT and
    dense scores are their means: a passage that matches either reading scores between the two.
    The sparse score is the original's (a translation's lexical overlap is not the query's)."""
    s = settings
    ce_weight = s.cross_encoder_weight if cross is not None else 0.0
    fusion_weight = s.rerank_fusion_weight if fusion is not None else 0.0
    lexical_weight = s.rerank_lexical_weight if lexical is not None else 0.0
    parts = s.colbert_weight + s.rerank_dense_weight + s.rerank_sparse_weight + fusion_weight + lexical_weight
    total = max(parts + ce_weight, 1e-9)
    scores = {
        "colbert": sum(colbert_maxsim(q["colbert"], passage["colbert"]) for q in queries) / len(queries),
        "m3_dense": sum(float(q["dense"] @ passage["dense"]) for q in queries) / len(queries),
        "m3_sparse": lexical_score(queries[0]["sparse"], passage["sparse"]),
    }
    combined = (
        s.colbert_weight * scores["colbert"]
        + s.rerank_dense_weight * scores["m3_dense"]
        + s.rerank_sparse_weight * scores["m3_sparse"]
    )
    if cross is not None:
        scores["cross_encoder"] = cross
        combined += ce_weight * cross
    if fusion is not None:
        scores["fusion"] = fusion
        combined += fusion_weight * fusion
    if lexical is not None:
        combined += lexical_weight * lexical
    scores["rerank"] = combined / total
    return scores


def relevance(score: float) -> float:
    """A raw rerank score mapped to [0, 1], higher = more relevant (Cohere's ``relevance_score``).

    The raw score is a weighted mean of cosine-type scores: ColBERT MaxSim (the mean over query
    tokens of the best passage token's cosine) and the dense cosine lie in [-1, 1], the
    cross-encoder's sigmoid in [0, 1]. Clipping keeps that scale where it is meaningful (1 = every
    query token has an identical passage token) and reads anything below 0 (less alike than
    unrelated vectors) as 0. Only the sparse score is unbounded: with ``rerank_sparse_weight`` > 0
    a raw score can exceed 1 and reads as 1; the order always follows the raw score. It is a
    similarity, not a calibrated probability: compare scores within one model, not across models.
    """
    return min(max(score, 0.0), 1.0)


def passage_text(fields: dict[str, Any]) -> str:
    """What is embedded for a chunk: the heading trail gives it context (ingest and rerank agree)."""
    trail = " / ".join(p for p in fields.get("title_path") or [] if p)
    return f"{trail}\n{fields['text']}" if trail else fields["text"]
