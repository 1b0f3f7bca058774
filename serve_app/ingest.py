"""Ingestion: read documents (a folder of Markdown/text, or a BEIR corpus.jsonl), chunk, embed, write.

A document whose chunks are unchanged is skipped (nothing embedded); a changed one gets the
next version: its new chunks are written as current first, then the old version is deleted,
so a search never finds the document missing (for a moment it may find both; exact
switching arrives with the index-maintenance work).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from serve_app.chunking import Chunk, chunk_document
from serve_app.retrieval import passage_text
from serve_app.settings import ChunkSettings
from serve_app.store import ChunkRecord, MilvusStore, quote

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


@dataclass(slots=True)
class IngestReport:
    documents: int = 0
    unchanged: int = 0
    chunks_written: int = 0
    chunks_deleted: int = 0
    seconds: float = 0.0
    failed: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "documents": self.documents,
            "unchanged": self.unchanged,
            "chunks_written": self.chunks_written,
            "chunks_deleted": self.chunks_deleted,
            "seconds": round(self.seconds, 2),
            "chunks_per_s": round(self.chunks_written / self.seconds, 2) if self.seconds else 0.0,
            "failed": self.failed,
        }


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


def read_file(path: Path, root: Path) -> SourceDocument:
    """One Markdown/text file; its front matter (doc_id, title, kind, tags, lang, source) wins."""
    meta, body = _front_matter(path.read_text(encoding="utf-8", errors="replace"))
    rel = path.relative_to(root).as_posix()
    lang = meta.get("lang")
    return SourceDocument(
        doc_id=str(meta.get("doc_id") or rel),
        text=body,
        fmt=TEXT_SUFFIXES[path.suffix.lower()],
        title=str(meta.get("title") or path.stem),
        lang=str(lang) if lang in ("ja", "en") else None,
        kind=_kind(meta.get("kind")),
        source=str(meta.get("source") or rel),
        tags=_tags(meta.get("tags")),
    )


def read_folder(root: Path) -> Iterator[SourceDocument]:
    """Markdown/text files below ``root``, in path order."""
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES):
        yield read_file(path, root)


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
    if path.is_file() and path.suffix.lower() in TEXT_SUFFIXES:
        return iter([read_file(path, path.parent)])
    raise ValueError(
        f"{path}: expected a folder of .md/.txt files, a BEIR corpus.jsonl, or a folder holding one"
    )


def chunk_id(doc_id: str, version: int, ordinal: int) -> str:
    return hashlib.blake2b(f"{doc_id}\0{version}\0{ordinal}".encode(), digest_size=16).hexdigest()


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class Ingestor:
    """Chunks, embeds in batches and writes; ``embed`` is any function texts -> (dense, sparse)."""

    def __init__(
        self,
        embed: EmbedFn,
        store: MilvusStore,
        chunking: ChunkSettings,
        *,
        batch_size: int = 32,
        fingerprint: str = "",
    ) -> None:
        self.embed = embed
        # Part of every chunk hash: re-ingesting with another model or its settings re-embeds.
        self.fingerprint = fingerprint
        self.store = store
        self.chunking = chunking
        self.batch_size = batch_size

    def _chunks(self, doc: SourceDocument) -> list[Chunk]:
        return chunk_document(
            doc.text,
            fmt=doc.fmt,
            max_chars=self.chunking.max_chars,
            overlap_sentences=self.chunking.overlap_sentences,
            doc_title=doc.title or None,
        )

    def _current(self, doc_ids: Sequence[str]) -> dict[str, tuple[int, list[str]]]:
        """doc_id -> (current version, its chunk hashes in order)."""
        rows = self.store.query(
            f"is_current == true and doc_id in [{', '.join(quote(d) for d in doc_ids)}]",
            limit=16_384,
            fields=["doc_id", "version", "ordinal", "content_hash"],
        )
        found: dict[str, list[tuple[int, int, str]]] = {}
        for r in rows:
            found.setdefault(r["doc_id"], []).append((r["version"], r["ordinal"], r["content_hash"]))
        return {
            d: (max(v for v, _, _ in items), [h for _, _, h in sorted(items, key=lambda x: x[1])])
            for d, items in found.items()
        }

    def ingest(
        self, docs: Iterable[SourceDocument], *, progress: Callable[[IngestReport], None] | None = None
    ) -> IngestReport:
        report = IngestReport()
        started = time.perf_counter()
        self.store.ensure_collection()
        pending: list[tuple[SourceDocument, list[Chunk]]] = []
        seen: set[str] = set()
        for doc in docs:
            if doc.doc_id in seen:  # a second document under one id would mix their chunks
                report.failed.append({"doc_id": doc.doc_id, "error": "duplicate doc_id in this run; skipped"})
                continue
            seen.add(doc.doc_id)
            report.documents += 1
            pending.append((doc, self._chunks(doc)))
            if sum(len(c) for _, c in pending) >= self.batch_size * 4:
                self._write(pending, report)
                pending = []
                if progress:
                    progress(report)
        if pending:
            self._write(pending, report)
        self.store.flush()
        report.seconds = time.perf_counter() - started
        if progress:
            progress(report)
        return report

    def _write(self, pending: list[tuple[SourceDocument, list[Chunk]]], report: IngestReport) -> None:
        current = self._current([d.doc_id for d, _ in pending])
        now = int(time.time())
        records: list[ChunkRecord] = []
        texts: list[str] = []
        replaced: list[tuple[str, int]] = []
        for doc, chunks in pending:
            fields = [{"title_path": list(c.title_path), "text": c.text} for c in chunks]
            embedded = [passage_text(f) for f in fields]
            # Metadata is in the hash too: a changed tag, kind or title reaches the index.
            meta = f"{self.fingerprint}|{doc.title}|{doc.kind}|{doc.source}|{','.join(doc.tags)}|{doc.lang}"
            hashes = [_hash(f"{meta}\n{t}") for t in embedded]
            old = current.get(doc.doc_id)
            if old is not None and old[1] == hashes:
                report.unchanged += 1
                continue
            version = old[0] + 1 if old else 1
            if old:
                replaced.append((doc.doc_id, version))
            for chunk, text, content_hash in zip(chunks, embedded, hashes, strict=True):
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
                        tags=doc.tags,
                        updated_at=now,
                        content_hash=content_hash,
                        is_current=True,
                        dense=[],
                    )
                )
                texts.append(text)
        for start in range(0, len(records), self.batch_size):
            batch = records[start : start + self.batch_size]
            dense, sparse = self.embed(texts[start : start + self.batch_size])
            for rec, d, s in zip(batch, dense, sparse, strict=True):
                rec.dense, rec.sparse = d, s
            report.chunks_written += self.store.upsert(batch)
        # New versions are written and current; only now does the old one go.
        for doc_id, version in replaced:
            report.chunks_deleted += self.store.delete(
                expr=f"doc_id == {quote(doc_id)} and version < {version}"
            )
