"""One settings tree for every part of specrag.

Read from the environment with the prefix ``SPECRAG_`` and ``__`` between levels
(``SPECRAG_MILVUS__URI``, ``SPECRAG_SEARCH__RRF_K``); a few flat aliases that operators
expect (``SPECRAG_MILVUS_URI``, ``SPECRAG_REDIS_URL``, ``SPECRAG_MODEL_PATH``) are accepted too.
The same models validate the ``args`` of ``serve_config.yaml``, so a typo fails at start-up
with the field's name instead of somewhere inside a replica.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_HOME = Path(os.environ.get("SPECRAG_HOME", Path.home() / ".specrag"))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSettings(_Section):
    """Which M3-format model to load and how to run it."""

    name_or_path: str = Field(
        default=str(DEFAULT_HOME / "models" / "m3-offline-e5-small"),
        description="BAAI/bge-m3 (downloaded by the user beforehand) or a local M3-format directory.",
    )
    device: str = Field(default="auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    max_length: int = Field(default=512, ge=8, le=8192)
    num_threads: int = Field(default=0, ge=0, description="torch threads on CPU; 0 = all visible cores.")
    pooling: Literal["auto", "cls", "mean"] = "auto"
    query_prefix: str | None = Field(default=None, description="None = take it from the model directory.")
    passage_prefix: str | None = None


class MilvusSettings(_Section):
    uri: str = Field(default="http://127.0.0.1:29530", description="Milvus server URI (Lite server or real).")
    token: SecretStr | None = None
    collection: str = Field(default="specrag", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,200}$")
    hnsw_m: int = Field(default=16, ge=4, le=64)
    hnsw_ef_construction: int = Field(default=200, ge=8, le=1024)
    search_ef: int = Field(default=128, ge=8, le=4096)
    timeout_s: float = Field(default=10.0, gt=0)


class RedisSettings(_Section):
    url: SecretStr | None = Field(
        default=None, description="redis://host:port/db; unset = in-process LRU only."
    )
    ttl_s: int = Field(default=86_400, ge=1, description="lifetime of a cached embedding")
    timeout_s: float = Field(
        default=0.05, gt=0, le=5, description="per Redis call; slower counts as a failure"
    )
    breaker_fail_max: int = Field(default=3, ge=1, description="failures in a row that open the breaker")
    breaker_reset_s: float = Field(default=10.0, gt=0, description="how long an open breaker skips Redis")
    lru_items: int = Field(default=10_000, ge=0, description="in-process tier per replica; 0 = off")
    colbert_lru_mb: int = Field(
        default=256,
        ge=0,
        description="in-process tier per replica for the reranker's ColBERT vectors (MiB); 0 = off",
    )
    colbert_in_redis: bool = Field(
        default=True,
        description="also keep ColBERT vectors in Redis (float16, ~2 bytes x dim per token of a passage)",
    )


class BatchSettings(_Section):
    """Dynamic batching of the Embedder: continuous batching behind ``@serve.batch``."""

    max_batch_size: int = Field(default=32, ge=1, le=1024, description="texts per model step, at most")
    batch_wait_timeout_s: float = Field(
        default=0.0,
        ge=0,
        le=5,
        description="how long an idle model waits for company before a step; 0: a lone text runs at "
        "once (texts that arrive while the model works join its next step either way)",
    )
    encode_batch_size: int = Field(default=32, ge=1, le=1024, description="texts per forward pass, at most")
    max_tokens_per_batch: int = Field(
        default=16_384, ge=64, description="padded tokens per forward pass (texts x longest), at most"
    )


class SearchSettings(_Section):
    """Fan-out, fusion and rerank. Defaults were chosen on the dev sets (docs/BENCHMARKS.md)."""

    top_k: int = Field(default=10, ge=1, le=100)
    channels: list[Literal["dense", "sparse", "bm25"]] = Field(
        default=["dense", "sparse", "bm25"],
        min_length=1,
        description="what a search uses unless it names its own: dense and sparse ANN in Milvus, and "
        "BM25 (Japanese character bigrams) over an index the Searcher rebuilds every idf_refresh_s",
    )
    overfetch: int = Field(default=3, ge=1, le=20, description="stage-1 ANN fetches limit x this")
    rrf_k: int = Field(default=60, ge=1, le=1000)
    dense_weight: float = Field(default=1.0, ge=0, description="RRF weight of every dense list")
    sparse_weight: float = Field(default=0.3, ge=0, description="RRF weight of every sparse list")
    bm25_weight: float = Field(
        default=1.0, ge=0, description="RRF weight of every bm25 list (when a search asks for that channel)"
    )
    variant_weights: dict[str, float] = Field(
        default={"original": 1.0, "llm": 0.7, "glossary": 0.5, "lexicon": 1.0},
        description="RRF weight per variant origin, multiplied with the channel weight",
    )
    identifier_match: bool = Field(
        default=True,
        description="a query holding identifiers (ids, error codes, config keys, paths, versions; see "
        "serve_app/core/identifiers.py) also finds the chunks containing them verbatim, ranked first",
    )
    identifier_weight: float = Field(default=2.0, ge=0, description="RRF weight of the identifier list")
    language_balance: bool = Field(
        default=True,
        description="a query with no variant in some language of the corpus is searched in each "
        "language separately (one list per language, equal weights), so passages in its own language "
        "cannot crowd the others out of the candidate pool (docs/retrieval.md)",
    )
    language_min_share: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="a language is balanced only when it holds at least this share of the current "
        "chunks; with fewer than two such languages a search keeps one list per variant and channel",
    )
    sparse_idf: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="weigh query tokens by the collection's IDF; auto = only when the model's sparse "
        "head is a placeholder (the offline model), never for BGE-M3's trained head",
    )
    model_check_s: float = Field(
        default=5.0,
        gt=0,
        description="how often the Searcher re-reads which model built the collection behind the alias: "
        "after a re-embed with another model switches it, searches answer 503 naming both models",
    )
    changes_check_s: float = Field(
        default=5.0,
        gt=0,
        description="how often the Searcher looks whether the index changed (every write leaves a mark "
        "in the meta store); a change re-reads the corpus statistics below, at most every "
        "corpus_refresh_min_s, so a new document gains its BM25 evidence within about that time",
    )
    corpus_refresh_min_s: float = Field(
        default=30.0, gt=0, description="the least time between two re-reads of the corpus statistics"
    )
    idf_refresh_s: float = Field(
        default=600.0,
        gt=0,
        description="how often the Searcher re-reads the collection: the language mix, the IDF table and "
        "the BM25 index (a document written since is found by dense and sparse, by bm25 only after it)",
    )
    sparse_coverage: tuple[float, float] | None = Field(
        default=(0.1, 0.4),
        description="with IDF: a sparse list's weight ramps from 0 to full as the share of the query's "
        "IDF mass its best hit matches goes from the first value to the second (a Japanese query over "
        "English text shares almost no tokens: its sparse list is noise); None = fixed weight",
    )
    rerank: bool = True
    rerank_candidates: int = Field(default=50, ge=1, le=200, description="fused candidates the rerank scores")
    rerank_variants: list[str] = Field(
        default=["lexicon"],
        description="variants of these origins are read by the rerank too: ColBERT and dense scores "
        "are the mean over the query and them",
    )
    colbert_weight: float = Field(
        default=1.0, ge=0, description="weight of ColBERT MaxSim in the rerank score"
    )
    rerank_dense_weight: float = Field(
        default=0.0,
        ge=0,
        description="weight of the dense score in the rerank; 0 measured best with the offline model "
        "(BGE-M3's paper combines dense 1 : sparse 0.3 : ColBERT 1)",
    )
    rerank_sparse_weight: float = Field(default=0.0, ge=0)
    rerank_fusion_weight: float = Field(
        default=0.0,
        ge=0,
        description="weight of the candidate's place in the fused list, (rrf_k + 1) / (rrf_k + 1 + "
        "position), in the rerank score: the language-balanced fusion keeps answers in the other "
        "language near the top where ColBERT alone prefers the query's language (docs/retrieval.md)",
    )
    rerank_lexical_weight: float = Field(
        default=0.2,
        ge=0,
        description="weight of the candidate's lexical evidence in the rerank score: the share of the "
        "query's IDF mass it matches, times the query's lexical confidence (sparse_coverage), so it "
        "counts for a question that copies the passage's words and not across languages (needs the "
        "IDF table: the offline model)",
    )
    cross_encoder: str | None = Field(
        default=None,
        description="FlagReranker model (e.g. BAAI/bge-reranker-v2-m3, downloaded beforehand, or a "
        "local path); set = its score joins the rerank",
    )
    cross_encoder_weight: float = Field(default=1.0, ge=0, description="weight of the cross-encoder score")
    cross_encoder_device: str = Field(default="auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'")


class ExpanderSettings(_Section):
    """Query expansion: an OpenAI-compatible LLM when configured, a learned glossary always."""

    llm_url: str | None = Field(
        default=None,
        description="base URL of an OpenAI-compatible API (e.g. http://vllm:8000/v1); unset = no LLM",
    )
    llm_model: str = Field(default="qwen2.5-7b-instruct", description="model name sent to the endpoint")
    llm_api_key: SecretStr | None = None
    response_format: Literal["json_schema", "json_object", "none"] = Field(
        default="json_schema", description="how JSON output is constrained (what the server supports)"
    )
    ja_variants: int = Field(default=1, ge=0, le=5)
    en_variants: int = Field(default=3, ge=0, le=10)
    timeout_s: float = Field(default=3.0, gt=0, le=60, description="whole budget, retries included")
    attempts: int = Field(default=2, ge=1, le=5, description="tries within the budget")
    breaker_fail_max: int = Field(default=3, ge=1, description="failed expansions in a row that open it")
    breaker_reset_s: float = Field(default=30.0, gt=0, description="how long an open breaker skips the LLM")
    glossary: bool = Field(default=True, description="learn term pairs from ingested glossary documents")
    glossary_variants: int = Field(default=1, ge=0, le=5, description="glossary variants per query")
    term_files: list[Path] = Field(
        default_factory=list, description="TSV files: term<TAB>translation-or-synonym[<TAB>...]"
    )
    glossary_refresh_s: float = Field(default=300.0, gt=0, description="how often pairs are re-learned")
    lexicon: Literal["off", "fallback", "always"] = Field(
        default="always",
        description="a dictionary (JMdict) rendering of a Japanese query in English as one more variant "
        "(the rerank reads it too, search.rerank_variants): always, or only as a fallback when the LLM "
        "gave no English variant (none configured, failing or empty), or off",
    )
    lexicon_min_share: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="the dictionary variant only where English chunks make up at least this share "
        "of the collection (a Japanese-only corpus has nothing an English variant could find)",
    )
    lexicon_path: Path = Field(
        default=DEFAULT_HOME / "lexicon" / "ja-en.tsv",
        description="the ja-en lexicon `specrag lexicon build` writes (make setup does)",
    )


class LimitSettings(_Section):
    max_query_chars: int = Field(default=2000, ge=1)
    max_embed_items: int = Field(default=256, ge=1)
    max_item_chars: int = Field(default=50_000, ge=1)
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    max_documents: int = Field(default=100, ge=1, description="documents per POST /v1/documents")
    max_document_chars: int = Field(default=2_000_000, ge=1)
    max_rerank_documents: int = Field(
        default=1000, ge=1, description="documents (texts) per POST /v1/rerank or /rerank; over = 413"
    )
    max_rerank_document_chars: int = Field(
        default=50_000,
        ge=1,
        description="characters per rerank document, over = 413; under it, a document longer than the "
        "model's token window is cut (or refused where the request disables truncation)",
    )


class ChunkSettings(_Section):
    max_chars: int = Field(default=700, ge=50, le=20_000)
    overlap_sentences: int = Field(default=1, ge=0, le=10)


class GitSource(_Section):
    """A git repository an operator registered: ``POST /v1/sources/{name}/sync`` names it, never a path."""

    repo: str = Field(
        description="path of the repository on the Indexer's machine (a checkout or a bare clone); "
        "files are read from its object store at the commit, never from a working tree"
    )
    remote: str | None = Field(
        default=None,
        description="fetched before each sync (a remote name or URL of the repository); "
        "None: the repository is kept current by something else (a mirror job, a shared volume)",
    )
    ref: str = Field(default="HEAD", description="what a sync that names no commit reads")
    prefix: str = Field(
        default="",
        max_length=200,
        description="put before each path to form doc ids (several sources in one index)",
    )


SOURCE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class IngestSettings(_Section):
    """Batch embedding for ingestion and re-embeds (retries, then splitting to isolate bad chunks)."""

    sources: dict[str, GitSource] = Field(
        default_factory=dict,
        description="git sources by name, synced by POST /v1/sources/{name}/sync (docs/data-engineering.md)",
    )

    batch_size: int = Field(default=32, ge=1, le=1024, description="chunks per embedding call")
    colbert_rows: bool = Field(
        default=True,
        description="keep each chunk's ColBERT rows (float16, from the same forward pass) in the "
        "Embedder's ColBERT cache at ingest, so the rerank reads them instead of re-encoding the "
        "candidates; size the cache with redis.colbert_lru_mb / colbert_in_redis (docs/operations.md)",
    )
    attempts: int = Field(default=3, ge=1, le=10, description="tries of a batch before it is split")
    backoff_s: float = Field(default=0.5, ge=0, description="first retry delay; doubles each time")
    backoff_max_s: float = Field(default=8.0, ge=0)
    status_every_s: float = Field(default=5.0, gt=0, description="how often a run records its progress")
    abort_after_failures: int = Field(
        default=8, ge=1, description="texts in a row failing alone (not bad input) that stop the run"
    )

    @field_validator("sources")
    @classmethod
    def _source_names(cls, value: dict[str, GitSource]) -> dict[str, GitSource]:
        bad = [name for name in value if not re.match(SOURCE_NAME, name)]
        if bad:
            raise ValueError(f"source names must match {SOURCE_NAME}: {bad}")
        return value


class ReindexSettings(_Section):
    """Full re-embed jobs: validation thresholds that must hold before the alias switches."""

    actors: int = Field(default=1, ge=1, description="embedding actors in the Ray Data pool")
    num_gpus_per_actor: float = Field(default=0.0, ge=0, description="0 = CPU actors")
    actor_resources: dict[str, float] = Field(
        default_factory=dict,
        description="custom Ray resources each embedding actor needs, to place actors on nodes"
        ' started with them (e.g. {"reembed": 1})',
    )
    sample_queries: int = Field(default=20, ge=0, le=1000, description="same-model check: sampled queries")
    min_top1_agreement: float = Field(default=0.9, ge=0, le=1, description="same model: live vs new top-1")
    min_ndcg_ratio: float = Field(default=1.0, ge=0, description="new model: nDCG@10 new / live, at least")
    keep_previous: int = Field(default=1, ge=0, le=10, description="older collections kept for rollback")
    lease_s: float = Field(default=60.0, gt=0, description="a job silent this long counts as dead")


class DataScope(_Section):
    """The documents a caller may touch: those matching every field set here (unset = any).

    A search of a scoped caller only ever sees these documents (its own filters narrow further),
    its query variants come only from glossary terms learned from them, and it may write or
    delete only documents that match both before and after the change. Hashable (tuples), so a
    memo can key on it."""

    sources: tuple[str, ...] | None = Field(
        default=None, description="source prefixes, e.g. 'team-a/' (a document's source starts with one)"
    )
    kinds: tuple[str, ...] | None = Field(default=None, description="document kinds (spec, api, ...)")
    tags: tuple[str, ...] | None = Field(default=None, description="documents carrying any of these tags")

    def allows(self, source: str, kind: str, tags: Sequence[str]) -> bool:
        """A document with these fields is in the scope (``store.scope_filter`` says the same to
        Milvus)."""
        return (
            (self.sources is None or any(source.startswith(p) for p in self.sources))
            and (self.kinds is None or kind in self.kinds)
            and (self.tags is None or bool(set(self.tags) & set(tags)))
        )

    @model_validator(mode="after")
    def _no_empty_list(self) -> DataScope:
        for name in ("sources", "kinds", "tags"):
            values = getattr(self, name)
            if values is not None and (not values or any(not v for v in values)):
                raise ValueError(f"{name}: give at least one non-empty value, or leave it unset for any")
        return self


class ApiKey(_Section):
    """One caller's key, stored as its SHA-256 (``specrag keys create NAME`` prints both)."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$", description="hex SHA-256 of the key; never the key")
    scopes: list[Literal["search", "ingest", "admin"]] = Field(default=["search"], min_length=1)
    rate_per_minute: int | None = Field(default=None, ge=1, description="None = auth.rate_per_minute")
    read: DataScope | None = Field(default=None, description="documents it may read; None = all")
    write: DataScope | None = Field(default=None, description="documents it may write or delete; None = all")


class JwtSettings(_Section):
    """Bearer JWTs from an identity provider, verified against its JWKS (PyJWT).

    Claims map to a principal: ``name_claim`` names it (rate limits), ``scopes_claim`` (a
    space-separated string or a list) gives the route scopes — ``search``, ``ingest``, ``admin``,
    optionally prefixed by ``scope_prefix`` — and ``read_claim`` / ``write_claim`` (objects with
    ``sources``, ``kinds``, ``tags``) the data scopes; a missing data claim means unrestricted."""

    jwks_file: Path | None = Field(
        default=None, description="a JWKS document on disk (re-read with auth.file)"
    )
    jwks_url: str | None = Field(default=None, description="the provider's JWKS endpoint (keys cached 5 min)")
    issuer: str | None = Field(default=None, description="required 'iss'; None = not checked")
    audience: list[str] = Field(min_length=1, description="accepted 'aud' values (one must match)")
    algorithms: list[str] = Field(default=["RS256", "ES256"], min_length=1)
    leeway_s: float = Field(default=30.0, ge=0, le=600, description="clock skew allowed on exp/nbf/iat")
    name_claim: str = "sub"
    scopes_claim: str = "scope"
    scope_prefix: str = Field(default="", description="e.g. 'specrag:' when scopes read 'specrag:search'")
    read_claim: str = "specrag_read"
    write_claim: str = "specrag_write"

    @model_validator(mode="after")
    def _one_key_source(self) -> JwtSettings:
        if (self.jwks_file is None) == (self.jwks_url is None):
            raise ValueError("set exactly one of jwks_file and jwks_url")
        if any(a.upper().startswith("HS") or a.lower() == "none" for a in self.algorithms):
            raise ValueError("only asymmetric algorithms (RS*, PS*, ES*, EdDSA) verify against a JWKS")
        return self


class AuthSettings(_Section):
    """API keys and JWTs; none configured = an open API (the embedded default on loopback)."""

    keys: list[ApiKey] = Field(default_factory=list)
    jwt: JwtSettings | None = None
    rate_per_minute: int = Field(default=600, ge=1, description="per key (or JWT subject), all replicas")
    shared_rate_limits: bool = Field(
        default=True,
        description="count limits in Redis (redis.url) so they hold across Ingress replicas; when Redis "
        "fails they fall back to per-replica counting (fail open, flagged by a header and a metric)",
    )
    file: Path | None = Field(
        default=None,
        description="a YAML/JSON file with this section's fields (a mounted Secret); re-read when it "
        "changes, so keys, JWT settings and limits rotate without restarting any replica",
    )
    reload_s: float = Field(default=5.0, gt=0, le=3600, description="how often auth.file is checked")

    @model_validator(mode="after")
    def _unique_names(self) -> AuthSettings:
        names = [k.name for k in self.keys]
        if len(set(names)) != len(names):
            raise ValueError("API key names must be unique")
        return self


class DifyProfile(_Section):
    """One knowledge base Dify can name (its External Knowledge ID): the filters every search of
    it applies, whatever the request's ``metadata_condition`` adds, and a cap on ``top_k``."""

    description: str = ""
    kinds: list[str] | None = Field(default=None, description="only these document kinds; None = any")
    langs: list[Literal["ja", "en"]] | None = None
    tags: list[str] | None = Field(default=None, description="chunks carrying any of these tags")
    sources: list[str] | None = None
    doc_ids: list[str] | None = None
    max_top_k: int = Field(default=10, ge=1, le=100, description="records per request, at most")
    expand: bool = Field(default=True, description="use the expander's query variants")
    rerank: bool = Field(
        default=True,
        description="Dify compares score_threshold with the score: the rerank's is a 0-1 similarity, "
        "without it the score is the fusion's (scaled to 0-1, rank-based)",
    )

    @model_validator(mode="after")
    def _no_empty_filter(self) -> DifyProfile:
        for name in ("kinds", "langs", "tags", "sources", "doc_ids"):
            if getattr(self, name) == []:
                raise ValueError(f"{name}: an empty list would match nothing; leave it unset for any")
        return self


class DifySettings(_Section):
    """Dify's External Knowledge API (``POST /retrieval``): its ``knowledge_id`` names a profile."""

    profiles: dict[str, DifyProfile] = Field(default_factory=dict)


RAY_WORKER_PORTS = range(10002, 20000)  # Ray's workers bind these: no app, Milvus or Redis port here


# What listens for HTTP on serve.host:port (``ServeSettings.ingress``).
IngressMode = Literal["haproxy", "proxy"]


class ServeSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    app_name: str = "specrag"
    route_prefix: str = Field(
        default="/",
        pattern=r"^/$|^(/[A-Za-z0-9._~-]+)+$",
        description="where Serve mounts the app, e.g. /specrag: routes, auth and /docs are under it",
    )
    ingress: IngressMode = Field(
        default="haproxy",
        description="what listens on host:port when specrag starts Ray itself: Ray's HAProxy "
        "ingress, which forwards each request straight to an Ingress replica's own HTTP server, or "
        "Serve's Python proxy (a Ray call per request, and another for its body). On a cluster "
        "the cluster's environment decides (RAY_SERVE_ENABLE_HA_PROXY, docs/operations.md)",
    )
    embedder_replicas: int = Field(default=1, ge=1)
    embedder_num_gpus: float = Field(default=0.0, ge=0)
    embedder_num_cpus: float = Field(default=1.0, ge=0)
    reranker_replicas: int = Field(default=1, ge=1)
    ingress_replicas: int = Field(
        default=1, ge=1, description="HTTP replicas (rate limits are shared via Redis)"
    )
    ingress_cache_mb: int = Field(
        default=64,
        ge=0,
        description="per Ingress replica: embeddings it received from the Embedder, so a repeated "
        "text (a cached query, a repeated /v1/embed input) skips the hop to it; 0 = off",
    )
    expansion_cache_s: float = Field(
        default=300.0,
        ge=0,
        description="per Ingress replica: how long a query's expansion is reused for the same query "
        "(no hop to the QueryExpander, no second LLM call), at most expander.glossary_refresh_s; "
        "answers that fell back to the glossary are not kept; 0 = off",
    )
    reranker_cache_mb: int = Field(
        default=256,
        ge=0,
        description="per Reranker replica: candidates' ColBERT rows it received from the Embedder, so "
        "a chunk reranked before skips the hop to it (each chunk's rows are ~tokens x dim x 2 bytes); "
        "0 = off",
    )
    log_encoding: Literal["TEXT", "JSON"] = Field(
        default="JSON", description="Serve's log files: JSON lines with request ids and stage timings"
    )
    ready_timeout_s: float = Field(default=5.0, gt=0, le=60, description="/readyz: bound on the model probe")

    @field_validator("port")
    @classmethod
    def _outside_ray_worker_ports(cls, port: int) -> int:
        if port in RAY_WORKER_PORTS:
            raise ValueError("ports 10002-19999 are Ray's worker range; pick another")
        return port


_FLAT_ALIASES = {
    "SPECRAG_MODEL_PATH": ("model", "name_or_path"),
    "SPECRAG_MILVUS_URI": ("milvus", "uri"),
    "SPECRAG_REDIS_URL": ("redis", "url"),
}


class Settings(BaseSettings):
    """The whole tree. ``Settings()`` reads the environment; ``Settings(**args)`` validates config."""

    model_config = SettingsConfigDict(
        env_prefix="SPECRAG_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        populate_by_name=True,
    )

    home: Path = DEFAULT_HOME
    model: ModelSettings = Field(default_factory=ModelSettings)
    milvus: MilvusSettings = Field(default_factory=MilvusSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    search: SearchSettings = Field(default_factory=SearchSettings)
    expander: ExpanderSettings = Field(default_factory=ExpanderSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    chunk: ChunkSettings = Field(default_factory=ChunkSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    dify: DifySettings = Field(default_factory=DifySettings)
    reindex: ReindexSettings = Field(default_factory=ReindexSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)

    @model_validator(mode="before")
    @classmethod
    def _fold_flat_aliases(cls, data: Any) -> Any:
        """Accept the flat names operators reach for first; the nested form wins when both are set."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for env, (section, field) in _FLAT_ALIASES.items():
            value = os.environ.get(env)
            if not value:
                continue
            current = data.get(section) or {}
            if isinstance(current, BaseModel):
                current = current.model_dump()
            data[section] = {field: value, **current}
        return data

    def redacted(self) -> dict[str, Any]:
        """The tree as JSON-able data with secrets masked; safe to log at start-up."""
        return self.model_dump(mode="json")


def load_settings(overrides: dict[str, Any] | None = None) -> Settings:
    """Environment first, then ``overrides`` (e.g. ``serve_config.yaml`` args) section by section."""
    base = Settings()
    if not overrides:
        return base
    merged = base.model_dump()
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    # Secrets were dumped as SecretStr objects, which validate again unchanged.
    return Settings.model_validate(merged)
