"""Ingestion: read documents (a folder or git checkout, a BEIR corpus), chunk, embed, write.

Formats
    Markdown and text are read here (front matter sets doc_id, title, kind, tags, lang, source);
    Office files, PDF, HTML and OpenAPI specs go through ``core.formats``. A file that cannot be
    read becomes a document with an ``error``: it is reported as failed and its stored version
    stays live; the run goes on.

Versions
    A document whose chunks are unchanged is skipped (nothing embedded). A changed one gets the
    next version: chunks whose content hash the stored version already has reuse its vectors, the
    rest are embedded; the new version is inserted, then the older ones are deleted. Readers never
    see a half state: the retriever keeps only each document's newest stored version (see
    ``Retriever``), and every version is complete before it is inserted.

Resilience
    Embedding calls are retried with exponential backoff (tenacity), then split in halves to find
    the chunks that fail. A document with a failed chunk is not written (its stored version stays
    live) and is recorded in the meta store with the errors, so ``--retry-only`` can redo just it.

Blue/green
    Each write batch pins the physical collection behind the alias and checks the alias again
    afterwards; if a re-embed job switched it meanwhile, the batch is written again into the new
    collection (vectors reused), so an upsert made during a re-embed is never lost.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from serve_app.core.batching import run_isolating_failures
from serve_app.core.chunking import Chunk, chunk_document, detect_lang
from serve_app.core.formats import Section, UnreadableDocument, convert, handles
from serve_app.core.gitrepo import GitError, GitRepo
from serve_app.core.meta import MetaStore
from serve_app.core.retrieval import passage_text
from serve_app.core.store import (
    MAX_WINDOW,
    ChunkRecord,
    Filter,
    MilvusStore,
    StoreUnavailable,
    chunk_ids_filter,
    doc_ids_filter,
    doc_version_filter,
)
from serve_app.settings import ChunkSettings, DataScope, IngestSettings

log = logging.getLogger(__name__)

EmbedFn = Callable[[list[str]], tuple[np.ndarray, list[dict[int, float]]]]
TEXT_SUFFIXES = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".rst": "text"}
KINDS = {"spec", "glossary", "api", "design", "faq", "other"}


@dataclass(slots=True)
class SourceDocument:
    doc_id: str
    text: str
    fmt: str = "markdown"  # markdown | text
    title: str = ""
    lang: str | None = None
    kind: str = "other"
    source: str = ""
    tags: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)  # fmt "sections": pre-cut chunks (OpenAPI)
    error: str | None = None  # the file could not be read: reported, never written

    @classmethod
    def unreadable(cls, path: str, reason: str, doc_id: str | None = None) -> SourceDocument:
        """The stand-in for a file that could not be read: failed alone, with ``reason``."""
        return cls(doc_id=doc_id or path, text="", title=Path(path).stem, source=path, error=reason)


def _front_matter(text: str) -> tuple[dict, str]:
    if not text.startswith("---"):
        return {}, text
    end = text.find("\n---", 3)
    if end < 0:
        return {}, text
    try:
        meta = yaml.safe_load(text[3:end]) or {}
    except yaml.YAMLError:
        return {}, text
    rest = text[end + 4 :]
    return (meta if isinstance(meta, dict) else {}), rest.lstrip("\n")


def _tags(value: object) -> list[str]:
    if value is None:
        return []
    return [str(t) for t in value] if isinstance(value, list) else [str(value)]


def _kind(value: object) -> str:
    kind = str(value or "other").lower()
    return kind if kind in KINDS else "other"


def is_document_name(name: str) -> bool:
    """Whether a file of this name is read as a document (by its suffix; hidden paths are not)."""
    parts = name.split("/")
    if any(part.startswith(".") for part in parts):
        return False
    return Path(name).suffix.lower() in TEXT_SUFFIXES or handles(name)


def document_from_bytes(rel: str, data: bytes) -> SourceDocument | None:
    """One file given by its path relative to the source root and its bytes (a working tree or a
    git blob); ``None`` for a file that is not a document (a config YAML). Markdown/text front
    matter (doc_id, title, kind, tags, lang, source) wins; a converter's title and kind come next.
    """
    path = Path(rel)
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        meta, body = _front_matter(data.decode("utf-8", errors="replace"))
        lang = meta.get("lang")
        return SourceDocument(
            doc_id=str(meta.get("doc_id") or rel),
            text=body,
            fmt=TEXT_SUFFIXES[suffix],
            title=str(meta.get("title") or path.stem),
            lang=str(lang) if lang in ("ja", "en") else None,
            kind=_kind(meta.get("kind")),
            source=str(meta.get("source") or rel),
            tags=_tags(meta.get("tags")),
        )
    try:
        converted = convert(rel, data)
    except UnreadableDocument as exc:
        return SourceDocument.unreadable(rel, str(exc))
    if converted is None:
        return None
    return SourceDocument(
        doc_id=rel,
        text=converted.text,
        fmt=converted.fmt,
        title=converted.title or path.stem,
        kind=_kind(converted.kind),
        source=rel,
        tags=list(converted.tags),
        sections=list(converted.sections),
    )


def read_file(path: Path, root: Path) -> SourceDocument | None:
    """One file below ``root`` (see ``document_from_bytes``); an unreadable one carries its error."""
    rel = path.relative_to(root).as_posix()
    try:
        data = path.read_bytes()
    except OSError as exc:
        return SourceDocument.unreadable(rel, f"cannot read: {exc}")
    return document_from_bytes(rel, data)


def _git_files(root: Path) -> list[Path] | None:
    """Tracked files of a git checkout (untracked and ignored files are not documents); None if not one."""
    if not (root / ".git").exists():
        return None
    try:
        return [root / name for name in GitRepo(root).tracked_files()]
    except GitError as exc:
        log.warning("%s looks like a git checkout but %s; reading every file", root, exc)
        return None


def git_revision(root: Path) -> str | None:
    """HEAD of a git checkout (recorded with the ingest run), or None."""
    if not (Path(root) / ".git").exists():
        return None
    try:
        return GitRepo(root).resolve("HEAD")
    except GitError:
        return None


def read_folder(root: Path) -> Iterator[SourceDocument]:
    """Document files below ``root`` in path order (a git checkout: its tracked files only).

    Hidden files and folders (``.git``, ``.github``, editor state) are skipped.
    """
    candidates = _git_files(root)
    if candidates is None:
        candidates = [p for p in root.rglob("*")]
    for path in sorted(candidates):
        if is_document_name(path.relative_to(root).as_posix()) and path.is_file():
            doc = read_file(path, root)
            if doc is not None:
                yield doc


def read_beir_corpus(path: Path) -> Iterator[SourceDocument]:
    """BEIR ``corpus.jsonl``: one passage per line with ``_id``, ``title``, ``text`` (+ lang, source)."""
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                doc_id = str(row["_id"])
            except (json.JSONDecodeError, KeyError) as exc:
                raise ValueError(f"{path}:{line_no}: not a BEIR corpus line ({exc})") from exc
            yield SourceDocument(
                doc_id=doc_id,
                text=str(row.get("text") or ""),
                fmt="text",
                title=str(row.get("title") or ""),
                lang=row.get("lang") if row.get("lang") in ("ja", "en") else None,
                kind=_kind(row.get("kind")),
                source=str(row.get("source") or path.name),
                tags=_tags(row.get("tags")),
            )


def iter_documents(path: Path) -> Iterator[SourceDocument]:
    path = Path(path)
    if path.is_file() and path.suffix == ".jsonl":
        return read_beir_corpus(path)
    if path.is_dir() and (path / "corpus.jsonl").is_file():
        return read_beir_corpus(path / "corpus.jsonl")
    if path.is_dir():
        return read_folder(path)
    if path.is_file() and is_document_name(path.name):
        doc = read_file(path, path.parent)
        return iter([doc] if doc is not None else [])
    raise ValueError(
        f"{path}: expected a folder of documents, one document (Markdown, text, Office, PDF, HTML,"
        " OpenAPI), a BEIR corpus.jsonl, or a folder holding one"
    )


def chunk_id(doc_id: str, version: int, ordinal: int) -> str:
    return hashlib.blake2b(f"{doc_id}\0{version}\0{ordinal}".encode(), digest_size=16).hexdigest()


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


KEEP_RUNS = 50  # run records kept for --status
CHANGED = ("index", "changed")  # meta record every write updates: Searchers re-read corpus statistics
TOMBSTONE_S = 7 * 86_400  # deletions remembered this long (a re-embed must not resurrect them)


class EmbedderUnavailable(RuntimeError):
    """The embedder fails on everything (down, not bad input): the run stops, nothing is lost."""


class ModelMismatch(RuntimeError):
    """The target collection holds vectors of another model; writing ours would corrupt it."""


class OutOfScope(PermissionError):
    """A write or delete would touch a document outside the caller's write scope (403)."""


@dataclass(slots=True)
class IngestReport:
    run_id: str = ""
    total: int | None = None  # documents planned, when known up front
    documents: int = 0  # documents processed so far
    unchanged: int = 0
    added: int = 0
    updated: int = 0
    deleted: int = 0
    chunks_embedded: int = 0
    chunks_reused: int = 0
    chunks_written: int = 0
    chunks_deleted: int = 0
    rewritten_after_switch: int = 0  # batches written again because a re-embed switched the alias
    seconds: float = 0.0
    embed_seconds: float = 0.0  # of ``seconds``, waiting for the embedder
    failed: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        done = self.documents - len(self.failed)
        return {
            "run_id": self.run_id,
            "documents": self.documents,
            "pending": max((self.total or self.documents) - self.documents, 0),
            "done": done,
            "failed_documents": len(self.failed),
            "success_rate": round(done / self.documents, 4) if self.documents else 1.0,
            "unchanged": self.unchanged,
            "added": self.added,
            "updated": self.updated,
            "deleted": self.deleted,
            "chunks_embedded": self.chunks_embedded,
            "chunks_reused": self.chunks_reused,
            "chunks_written": self.chunks_written,
            "chunks_deleted": self.chunks_deleted,
            "rewritten_after_switch": self.rewritten_after_switch,
            "seconds": round(self.seconds, 2),
            "embed_seconds": round(self.embed_seconds, 3),
            "chunks_per_s": round(self.chunks_embedded / self.seconds, 2) if self.seconds else 0.0,
            "failed": self.failed[:100],
        }


@dataclass(slots=True)
class _Plan:
    """One document's new version: its records, which chunks need the model, which reuse vectors."""

    doc: SourceDocument
    version: int
    records: list[ChunkRecord]
    texts: list[str]
    reuse: dict[int, str]  # record index -> chunk_id of the stored chunk with the same content hash
    errors: dict[int, str] = field(default_factory=dict)


Vectors = tuple[np.ndarray, dict[int, float]]


def embed_resilient(
    embed: EmbedFn, texts: list[str], *, batch_size: int, settings: IngestSettings
) -> list[Vectors | str]:
    """Vectors per text, or the error of a text that fails even alone.

    A batch is tried ``settings.attempts`` times with exponential backoff (transient faults: a
    replica restarting, a GPU out of memory), then split in halves until the failing texts are
    isolated; only those are lost, each with its error.
    """
    retrying = Retrying(
        stop=stop_after_attempt(settings.attempts),
        wait=wait_exponential(multiplier=settings.backoff_s, max=settings.backoff_max_s),
        # Bad input fails the same way every time: split at once instead of waiting.
        retry=retry_if_exception(lambda e: not isinstance(e, ValueError | TypeError)),
        before_sleep=lambda st: log.warning(
            "embedding a batch failed (attempt %d): %s; retrying",
            st.attempt_number,
            st.outcome.exception() if st.outcome else "?",
        ),
        reraise=True,
    )
    out: list[Vectors | str | None] = [None] * len(texts)
    failures_in_a_row = 0

    def run(idx: list[int], *, whole: bool) -> None:
        nonlocal failures_in_a_row
        call = lambda: embed([texts[i] for i in idx])  # noqa: E731
        if whole:  # the batch as planned gets the retries; the halves of a split go straight on
            dense, sparse = retrying(call)
        elif len(idx) == 1:
            try:
                dense, sparse = call()
            except Exception:  # a blip during the split deserves its own retries
                dense, sparse = retrying(call)
        else:
            dense, sparse = call()
        failures_in_a_row = 0
        for i, d, s in zip(idx, dense, sparse, strict=True):
            out[i] = (np.asarray(d, dtype=np.float32), dict(s))

    def failed(i: int, exc: BaseException) -> None:
        nonlocal failures_in_a_row
        out[i] = f"{type(exc).__name__}: {exc}"[:2000]
        if not isinstance(exc, ValueError | TypeError):
            failures_in_a_row += 1
            if failures_in_a_row >= settings.abort_after_failures:
                # Not bad chunks but a dead embedder: stop instead of isolating every text.
                raise EmbedderUnavailable(
                    f"{failures_in_a_row} texts in a row failed even alone after retries; last: {exc}"
                ) from exc

    def planned(batch: list[int]) -> Callable[[list[int]], None]:
        return lambda idx: run(idx, whole=idx is batch)

    for start in range(0, len(texts), batch_size):
        batch = list(range(start, min(start + batch_size, len(texts))))
        # The bisection the encoder uses for out-of-memory and bad inputs, with retries around it.
        run_isolating_failures(batch, planned(batch), failed)
    return [o for o in out if o is not None]  # every index is filled (or it raised)


def _chunk_tags(doc: SourceDocument, count: int) -> list[list[str]]:
    """Each chunk's tags: the document's, plus a pre-cut section's own (an operation's tags and id)."""
    if doc.fmt != "sections":
        return [doc.tags] * count
    own = [s.tags for s in doc.sections if s.text.strip()]
    return [doc.tags + [t for t in extra if t not in doc.tags] for extra in own]


class Ingestor:
    """Chunks, embeds in batches and writes; ``embed`` is any function texts -> (dense, sparse).

    ``meta`` (optional) receives failure records and run progress; without it failures are only
    reported. ``model_key`` guards against writing into a collection another model built.
    """

    def __init__(
        self,
        embed: EmbedFn,
        store: MilvusStore,
        chunking: ChunkSettings,
        *,
        settings: IngestSettings | None = None,
        batch_size: int | None = None,
        model_key: str | None = None,
        meta: MetaStore | None = None,
        origin: str = "",
        record_runs: bool = True,
    ) -> None:
        self.embed = embed
        # Part of every chunk hash (re-ingesting with another model re-embeds) and checked against
        # the collection's model; None (tests with hand-made vectors) skips the check.
        self.model_key = model_key
        self.store = store
        self.chunking = chunking
        self.settings = settings or IngestSettings()
        self.batch_size = batch_size or self.settings.batch_size
        self.meta = meta
        self.origin = origin  # where the documents came from (path, git revision, "http")
        self.record_runs = record_runs  # run records for --status (the HTTP API keeps only failures)
        self._vectors: dict[str, Vectors] = {}  # content hash -> vectors computed in this batch
        self._checked_models: set[str] = set()
        self._stale: dict[str, int] = {}  # doc_id -> newest version, for documents with older ones left
        self._moved_from: Mapping[str, str] = {}  # new doc_id -> old doc_id (a renamed file), this run
        self._donated: dict[str, Vectors] = {}  # embedded-text hash -> vectors of a moved document

    # ------------------------------------------------------------------------------ embedding

    def _embed_resilient(self, texts: list[str]) -> list[Vectors | str]:
        return embed_resilient(self.embed, texts, batch_size=self.batch_size, settings=self.settings)

    # ------------------------------------------------------------------------------- planning

    def _chunks(self, doc: SourceDocument) -> list[Chunk]:
        if doc.fmt == "sections":  # pre-cut by its converter (one OpenAPI operation each): kept whole
            return [
                Chunk(i, s.text, s.title_path, detect_lang(s.text))
                for i, s in enumerate(x for x in doc.sections if x.text.strip())
            ]
        return chunk_document(
            doc.text,
            fmt=doc.fmt,
            max_chars=self.chunking.max_chars,
            overlap_sentences=self.chunking.overlap_sentences,
            doc_title=doc.title or None,
        )

    def _stored(self, target: str, doc_ids: Sequence[str]) -> dict[str, tuple[int, list[tuple[str, str]]]]:
        """doc_id -> (newest stored version, its (content_hash, chunk_id) pairs in chunk order)."""
        found: dict[str, dict[int, list[tuple[int, str, str]]]] = {}
        for page in self.store.iter_rows(
            doc_ids_filter(doc_ids),
            fields=["doc_id", "version", "ordinal", "content_hash"],
            batch_size=5000,
            on=target,
        ):
            for r in page:
                found.setdefault(r["doc_id"], {}).setdefault(int(r["version"]), []).append(
                    (int(r["ordinal"]), r["content_hash"], r["chunk_id"])
                )
        out = {}
        for doc_id, versions in found.items():
            newest = max(versions)
            out[doc_id] = (newest, [(h, c) for _, h, c in sorted(versions[newest])])
            if len(versions) > 1:
                self._stale[doc_id] = newest
        return out

    def _plan(
        self,
        doc: SourceDocument,
        chunks: list[Chunk],
        stored: tuple[int, list[tuple[str, str]]] | None,
        now: int,
    ) -> _Plan | None:
        fields = [{"title_path": list(c.title_path), "text": c.text} for c in chunks]
        embedded = [passage_text(f) for f in fields]
        tags = _chunk_tags(doc, len(chunks))
        # Metadata is in the hash too: a changed tag, kind or title reaches the index.
        head = f"{self.model_key or ''}|{doc.title}|{doc.kind}|{doc.source}"
        # Position is not in the hash: inserting a paragraph re-embeds that paragraph, not those after it.
        hashes = [_hash(f"{head}|{','.join(t)}|{doc.lang}\n{e}") for t, e in zip(tags, embedded, strict=True)]
        if stored is not None and [h for h, _ in stored[1]] == hashes:
            return None
        old_hashes = dict(stored[1]) if stored else {}
        version = stored[0] + 1 if stored else 1
        records, reuse = [], {}
        for i, (chunk, content_hash) in enumerate(zip(chunks, hashes, strict=True)):
            records.append(
                ChunkRecord(
                    chunk_id=chunk_id(doc.doc_id, version, chunk.ordinal),
                    doc_id=doc.doc_id,
                    version=version,
                    ordinal=chunk.ordinal,
                    text=chunk.text,
                    title=doc.title,
                    title_path=list(chunk.title_path),
                    lang=doc.lang or chunk.lang,
                    kind=doc.kind,
                    source=doc.source,
                    tags=tags[i],
                    updated_at=now,
                    content_hash=content_hash,
                    is_current=True,
                    dense=[],
                )
            )
            if content_hash in old_hashes:
                reuse[i] = old_hashes[content_hash]
        return _Plan(doc, version, records, embedded, reuse)

    # -------------------------------------------------------------------------------- writing

    def _check_model(self, target: str) -> None:
        if self.model_key is None or target in self._checked_models:
            return
        stored = self.store.model_of(target)
        if stored is None:
            self.store.set_model(self.model_key, target)  # a collection from before models were recorded
        elif stored != self.model_key:
            raise ModelMismatch(
                f"collection {target!r} holds vectors of model {stored!r}, this process embeds with"
                f" {self.model_key!r}; run with that model (or re-embed the index with this one)"
            )
        self._checked_models.add(target)

    def _fill_vectors(self, plans: list[_Plan], target: str, report: IngestReport) -> None:
        reuse_ids = [cid for p in plans for cid in p.reuse.values()]
        stored: dict[str, Vectors] = {}
        for start in range(0, len(reuse_ids), 1000):
            batch = reuse_ids[start : start + 1000]
            for r in self.store.query(
                chunk_ids_filter(batch), limit=len(batch), fields=["chunk_id", "dense", "sparse"], on=target
            ):
                stored[r["chunk_id"]] = (np.asarray(r["dense"], np.float32), dict(r["sparse"]))
        self._load_donors(plans, target)
        todo: list[tuple[_Plan, int]] = []
        for p in plans:
            for i, rec in enumerate(p.records):
                vec = self._vectors.get(rec.content_hash)
                if vec is None and i in p.reuse:
                    vec = stored.get(p.reuse[i])
                if vec is None and self._donated:
                    vec = self._donated.get(self._text_key(p.texts[i]))
                if vec is None:
                    todo.append((p, i))
                else:
                    rec.dense, rec.sparse = vec
                    report.chunks_reused += 1
        started = time.perf_counter()
        results = self._embed_resilient([p.texts[i] for p, i in todo]) if todo else []
        report.embed_seconds += time.perf_counter() - started
        for (p, i), res in zip(todo, results, strict=True):
            if isinstance(res, str):
                p.errors[p.records[i].ordinal] = res
                continue
            rec = p.records[i]
            rec.dense, rec.sparse = res
            self._vectors[rec.content_hash] = res
            report.chunks_embedded += 1

    def _text_key(self, embedded: str) -> str:
        """What a vector depends on: the model and the embedded text (no metadata, no position)."""
        return _hash(f"{self.model_key or ''}\n{embedded}")

    def _load_donors(self, plans: list[_Plan], target: str) -> None:
        """Vectors of the stored documents renamed into these plans, by embedded text: a moved file
        embeds only the chunks whose text (heading trail included) changed with the move."""
        old_ids = [self._moved_from[p.doc.doc_id] for p in plans if p.doc.doc_id in self._moved_from]
        if not old_ids:
            return
        newest: dict[str, int] = {}
        rows: list[dict[str, Any]] = []
        for page in self.store.iter_rows(
            doc_ids_filter(old_ids),
            fields=["doc_id", "version", "title_path", "text", "dense", "sparse"],
            on=target,
        ):
            for r in page:
                newest[r["doc_id"]] = max(newest.get(r["doc_id"], 0), int(r["version"]))
                rows.append(r)
        for r in rows:
            if int(r["version"]) == newest[r["doc_id"]]:
                key = self._text_key(passage_text(r))
                self._donated[key] = (np.asarray(r["dense"], np.float32), dict(r["sparse"]))

    def _changed(self) -> None:
        """Tell the Searchers the index changed (they rebuild BM25, IDF and the language mix)."""
        if self.meta is not None:
            self.meta.put(*CHANGED, {"at": time.time(), "collection": self.store.collection})

    def _write(self, pending: list[tuple[SourceDocument, list[Chunk]]], report: IngestReport) -> None:
        try:
            self._write_batch(pending, report)
        finally:
            if report.chunks_written or report.chunks_deleted:
                self._changed()

    def _write_batch(self, pending: list[tuple[SourceDocument, list[Chunk]]], report: IngestReport) -> None:
        self._vectors.clear()  # kept for this batch only: a re-write after a switch reuses them
        self._stale.clear()
        target = self.store.resolve()
        for attempt in range(5):
            if attempt == 0:
                self._write_into(target, pending, report, redo=False)
            else:  # the documents were counted (and failures recorded) on the first pass
                scratch = IngestReport(run_id=report.run_id)
                self._write_into(target, pending, scratch, redo=True)
                report.chunks_written += scratch.chunks_written
                report.chunks_deleted += scratch.chunks_deleted
            now_live = self.store.resolve()
            if now_live == target:
                return
            # A re-embed switched the alias while this batch was written: write it again there.
            log.warning("alias moved %s -> %s during an ingest batch; writing it again", target, now_live)
            report.rewritten_after_switch += 1
            target = now_live
        raise RuntimeError("the alias kept moving during one ingest batch; giving up on it")

    def _write_into(
        self,
        target: str,
        pending: list[tuple[SourceDocument, list[Chunk]]],
        report: IngestReport,
        *,
        redo: bool,
    ) -> None:
        """Write the batch into ``target``; ``redo``: again, after the alias moved (counted once)."""
        self._check_model(target)
        stored = self._stored(target, [d.doc_id for d, _ in pending])
        now = int(time.time())
        plans: list[_Plan] = []
        for doc, chunks in pending:
            plan = self._plan(doc, chunks, stored.get(doc.doc_id), now)
            if plan is None:
                report.unchanged += not redo
                if doc.doc_id in self._stale:  # an earlier write left an older version: finish it
                    report.chunks_deleted += self.store.delete(
                        expr=doc_version_filter(doc.doc_id, self._stale.pop(doc.doc_id), op="<"),
                        on=target,
                    )
                continue
            plans.append(plan)
        self._fill_vectors(plans, target, report)
        good = [p for p in plans if not p.errors]
        written_docs: list[str] = []
        # Whole documents per upsert call, so a version is never half inserted by us.
        batch: list[ChunkRecord] = []
        for p in good:
            if batch and len(batch) + len(p.records) > 500:
                report.chunks_written += self.store.upsert(batch, into=target)
                batch = []
            batch.extend(p.records)
        if batch:
            report.chunks_written += self.store.upsert(batch, into=target)
        # The new versions are complete and stored; readers take the newest, so the old can go
        # once a search can find the new one (Milvus Lite makes inserts searchable a moment after
        # they are acknowledged; deleting earlier could hide the document from an ANN). New
        # documents are waited for too, so a write is answered when a search can find it. One
        # search and one delete for the whole batch, not one per document: they are round trips.
        visible = self._searchable(target, good)
        old_chunks: list[str] = []
        for p in good:
            if p.version == 1 or p.doc.doc_id not in visible:
                continue
            if p.doc.doc_id in self._stale or p.doc.doc_id not in stored:  # older versions left over
                report.chunks_deleted += self.store.delete(
                    expr=doc_version_filter(p.doc.doc_id, p.version, op="<"), on=target
                )
            else:
                old_chunks += [cid for _, cid in stored[p.doc.doc_id][1]]
        for start in range(0, len(old_chunks), 1000):
            report.chunks_deleted += self.store.delete(
                expr=chunk_ids_filter(old_chunks[start : start + 1000]), on=target
            )
        for p in good:
            written_docs.append(p.doc.doc_id)
            if redo:
                continue
            if p.version == 1:
                report.added += 1
            else:
                report.updated += 1
        failures: dict[str, dict[str, Any]] = {
            p.doc.doc_id: self._failure(
                p.doc, report, sorted(p.errors.items()), version=p.version, chunks=len(p.records)
            )
            for p in plans
            if p.errors
        }
        report.failed.extend({"doc_id": d, "error": f["errors"][0]["error"]} for d, f in failures.items())
        if self.meta is not None:
            self.meta.put_many("failed", failures)
            self.meta.delete("failed", written_docs)
            self.meta.delete("deleted", written_docs)  # written again after a delete: alive

    def _searchable(self, target: str, plans: list[_Plan], timeout_s: float = 5.0) -> set[str]:
        """The doc ids of ``plans`` whose new version an ANN search finds, waiting up to ``timeout_s``:
        one request per round with one query per document (its own first chunk's vector, restricted
        to the new versions' first chunks), repeated for those not found yet."""
        pending = {p.records[0].chunk_id: p for p in plans}
        found: set[str] = set()
        deadline = time.monotonic() + timeout_s
        delay = 0.002
        while pending:
            waiting = list(pending)
            for start in range(0, len(waiting), 256):
                ids = waiting[start : start + 256]
                vectors = [pending[i].records[0].dense for i in ids]
                for hits in self.store.search_dense_each(
                    vectors, limit=1, expr=chunk_ids_filter(ids), on=target
                ):
                    for hit in hits:
                        if (plan := pending.pop(hit.chunk_id, None)) is not None:
                            found.add(plan.doc.doc_id)
            if not pending:
                break
            if time.monotonic() > deadline:
                # Both versions stay stored; readers still take the newest, the next write cleans up.
                log.warning(
                    "new versions of %d documents not searchable after %.0f s (e.g. %s)",
                    len(pending),
                    timeout_s,
                    next(iter(pending.values())).doc.doc_id,
                )
                break
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
        return found

    # ---------------------------------------------------------------------------------- runs

    def ingest(
        self,
        docs: Iterable[SourceDocument],
        *,
        total: int | None = None,
        progress: Callable[[IngestReport], None] | None = None,
        moved_from: Mapping[str, str] | None = None,
    ) -> IngestReport:
        """Write ``docs``; ``moved_from`` (new doc_id -> old doc_id) names renamed documents whose
        stored vectors are reused where the embedded text is unchanged (the old ids stay: the
        caller deletes them once the new ones are written)."""
        report = IngestReport(run_id=uuid.uuid4().hex[:12], total=total)
        self._moved_from = moved_from or {}
        self._donated.clear()
        started = time.perf_counter()
        started_at = int(time.time())
        last_status = 0.0
        self.store.ensure_collection()
        self._record(report, "running", started_at)
        pending: list[tuple[SourceDocument, list[Chunk]]] = []
        seen: set[str] = set()
        try:
            for doc in docs:
                if doc.doc_id in seen:  # a second document under one id would mix their chunks
                    report.failed.append(
                        {
                            "doc_id": doc.doc_id,
                            "error": "duplicate doc_id in this run; skipped",
                            "permanent": True,
                        }
                    )
                    report.documents += 1
                    continue
                seen.add(doc.doc_id)
                report.documents += 1
                if doc.error is not None:  # unreadable: its stored version (if any) stays live
                    self._unreadable(doc, report)
                    continue
                chunks = self._chunks(doc)
                if not chunks:
                    report.failed.append(
                        {
                            "doc_id": doc.doc_id,
                            "error": "document has no text; not written",
                            "permanent": True,
                        }
                    )
                    continue
                pending.append((doc, chunks))
                if sum(len(c) for _, c in pending) >= self.batch_size * 4:
                    self._write(pending, report)
                    pending = []
                    report.seconds = time.perf_counter() - started
                    if progress:
                        progress(report)
                    if time.monotonic() - last_status > self.settings.status_every_s:
                        last_status = time.monotonic()
                        self._record(report, "running", started_at)
            if pending:
                self._write(pending, report)
            self.store.flush()
        except BaseException as exc:
            report.seconds = time.perf_counter() - started
            self._record(report, f"failed: {type(exc).__name__}: {exc}"[:500], started_at, quiet=True)
            raise
        report.seconds = time.perf_counter() - started
        self._record(report, "done", started_at)
        if progress:
            progress(report)
        return report

    def _failure(
        self,
        doc: SourceDocument,
        report: IngestReport,
        errors: Sequence[tuple[int | None, str | None]],
        *,
        version: int | None = None,
        chunks: int = 0,
    ) -> dict[str, Any]:
        """The meta store's record of a document that was not written (``--status``, ``--retry-only``)."""
        return {
            "doc_id": doc.doc_id,
            "source": doc.source,
            "origin": self.origin,
            "version": version,
            "chunks": chunks,
            "errors": [{"ordinal": o, "error": e} for o, e in errors][:20],
            "run_id": report.run_id,
            "at": int(time.time()),
        }

    def _unreadable(self, doc: SourceDocument, report: IngestReport) -> None:
        report.failed.append({"doc_id": doc.doc_id, "error": doc.error, "permanent": True})
        if self.meta is not None:
            self.meta.put("failed", doc.doc_id, self._failure(doc, report, [(None, doc.error)]))

    def check_scope(
        self, scope: DataScope | None, docs: Sequence[SourceDocument] = (), doc_ids: Sequence[str] = ()
    ) -> None:
        """``OutOfScope`` unless every document written (as sent) and every document already stored
        under the ids written or deleted lies in ``scope`` (``None``: no restriction). A caller
        cannot take over another team's document by reusing its id, nor move its own out."""
        if scope is None:
            return
        for doc in docs:
            if not scope.allows(doc.source, doc.kind, doc.tags):
                raise OutOfScope(
                    f"document {doc.doc_id!r} (source {doc.source!r}, kind {doc.kind!r}, tags {doc.tags}) "
                    "is outside this caller's write scope"
                )
        ids = list(dict.fromkeys([*(d.doc_id for d in docs), *doc_ids]))
        for doc_id, (source, kind, tags) in self.stored_metadata(ids).items():
            if not scope.allows(source, kind, tags):
                raise OutOfScope(f"document {doc_id!r} exists outside this caller's write scope")

    def stored_metadata(self, doc_ids: Sequence[str]) -> dict[str, tuple[str, str, list[str]]]:
        """doc_id -> (source, kind, tags) of its newest stored version, for the ids that exist."""
        if not doc_ids:
            return {}
        try:
            rows = self.store.query(
                doc_ids_filter(doc_ids) & Filter.eq("ordinal", 0),
                limit=MAX_WINDOW,
                fields=["doc_id", "version", "source", "kind", "tags"],
            )
        except StoreUnavailable as exc:
            if "does not exist" in str(exc):  # a fresh deployment: no collection, no documents
                return {}
            raise
        newest: dict[str, dict[str, Any]] = {}
        for row in rows:
            if row["doc_id"] not in newest or int(row["version"]) > int(newest[row["doc_id"]]["version"]):
                newest[row["doc_id"]] = row
        return {
            d: (str(r.get("source") or ""), str(r.get("kind") or ""), list(r.get("tags") or []))
            for d, r in newest.items()
        }

    def delete_documents(self, doc_ids: Sequence[str]) -> IngestReport:
        """Remove documents (every version); unknown ids are no error (deleting is idempotent)."""
        report = IngestReport(run_id=uuid.uuid4().hex[:12], total=len(doc_ids))
        started = time.perf_counter()
        ids = list(dict.fromkeys(doc_ids))
        if not ids:
            return report
        expr = doc_ids_filter(ids)
        target = self.store.resolve()
        for _ in range(5):
            present = set(self.store.doc_versions(ids, on=target))
            report.chunks_deleted += self.store.delete(expr=expr, on=target)
            report.deleted = max(report.deleted, len(present))
            now_live = self.store.resolve()
            if now_live == target:
                break
            report.rewritten_after_switch += 1
            target = now_live
        report.documents = len(ids)
        if report.chunks_deleted:
            self._changed()
        if self.meta is not None:
            self.meta.delete("failed", ids)
            # A re-embed running now must not copy these back from the collection it replaces.
            now = time.time()
            tombstones = self.meta.list("deleted")
            expired = [d for d, t in tombstones.items() if now - t.get("at", 0) > TOMBSTONE_S]
            self.meta.delete("deleted", expired)
            self.meta.put_many("deleted", {d: {"at": now} for d in ids})
        report.seconds = time.perf_counter() - started
        return report

    def _record(self, report: IngestReport, state: str, started_at: int, *, quiet: bool = False) -> None:
        if self.meta is None or not self.record_runs:
            return
        try:
            if state == "running" and not report.documents:  # a new run: keep the newest KEEP_RUNS
                runs = self.meta.list("run")
                old = sorted(runs, key=lambda k: runs[k].get("started_at", 0), reverse=True)[KEEP_RUNS:]
                self.meta.delete("run", old)
            self.meta.put(
                "run",
                report.run_id,
                {
                    **report.as_dict(),
                    "failed": report.failed[:20],
                    "state": state,
                    "origin": self.origin,
                    "collection": self.store.collection,
                    "started_at": started_at,
                    "updated_at": int(time.time()),
                },
            )
        except Exception:
            if not quiet:
                raise
            log.warning("could not record the run state", exc_info=True)
