"""``specrag ingest`` and ``specrag delete``: documents into and out of the index (``core.ingest``)."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Annotated

import typer

from serve_app.cli.common import CollectionOpt, Progress, ensure_model, milvus_down, open_store, prepare


def ingest(
    path: Annotated[
        Path | None,
        typer.Argument(
            exists=True,
            help="A document (Markdown, text, Office, PDF, HTML, OpenAPI), a folder or git checkout of"
            " them, a BEIR corpus.jsonl, or its folder.",
        ),
    ] = None,
    collection: CollectionOpt = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N documents.")] = None,
    doc_id: Annotated[
        list[str] | None, typer.Option("--doc-id", help="Only these documents (repeatable).")
    ] = None,
    retry_only: Annotated[
        bool, typer.Option("--retry-only", help="Only the documents recorded as failed (from PATH).")
    ] = False,
    status: Annotated[
        bool, typer.Option("--status", help="Show recent runs and failed documents; ingest nothing.")
    ] = False,
    batch_size: Annotated[
        int | None, typer.Option(min=1, max=1024, help="Chunks per embedding call.")
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(
            help="Git checkout: the name its last ingested commit is kept under (default: its path)."
        ),
    ] = None,
    commit: Annotated[
        str | None, typer.Option(help="Git checkout: ingest this commit (default: HEAD).")
    ] = None,
    prefix: Annotated[str, typer.Option(help="Git checkout: put before each path to form doc ids.")] = "",
    full: Annotated[
        bool, typer.Option("--full", help="Git checkout: read every file, not only what changed.")
    ] = False,
    working_tree: Annotated[
        bool,
        typer.Option(
            "--working-tree", help="Git checkout: read the files as they are on disk (uncommitted edits too)."
        ),
    ] = False,
    verbose: bool = False,
) -> None:
    """Chunk, embed (in this process) and write documents; unchanged ones are skipped.

    A git checkout is read at a commit, and only what changed since the commit last ingested
    under ``--source`` (added and modified files written, deleted ones deleted, renamed ones
    moved); ``--working-tree``, ``--doc-id``, ``--limit`` and ``--retry-only`` read the files on
    disk instead and record no commit. A failed chunk is retried with backoff, then isolated; its
    document keeps its stored version and is recorded, so ``--retry-only`` redoes just the
    failures. ``--status`` shows pending / done / failed counts of the running and recent runs.
    """
    import itertools

    from serve_app.core.gitrepo import GitError, GitRepo, UnknownRevision
    from serve_app.core.gitsource import GitSync, SourceConflict
    from serve_app.core.ingest import EmbedderUnavailable, Ingestor, git_revision, iter_documents
    from serve_app.core.meta import MetaStore
    from serve_app.core.store import StoreUnavailable

    settings = prepare(verbose)
    if status:
        try:
            print_status(MetaStore(open_store(settings, 1, collection)))
        except StoreUnavailable as exc:
            raise milvus_down(exc) from None
        return
    registered = settings.ingest.sources.get(source) if source else None
    if path is None and registered is None:
        raise typer.BadParameter(
            "PATH is required unless --status is given or --source names a source in ingest.sources",
            param_hint="PATH",
        )

    from serve_app.core.embedding import EmbeddingService

    ensure_model(settings)
    service = EmbeddingService.from_settings(settings)
    store = open_store(settings, service.dim, collection)
    meta = MetaStore(store)
    if path is None:  # a registered source: its repository, prefix and remote
        assert registered is not None
        repo, prefix, by_commit = GitRepo(registered.repo), prefix or registered.prefix, True
        origin = f"git:{source}"
        if registered.remote:
            try:
                repo.fetch(registered.remote)
            except GitError as exc:
                typer.echo(f"cannot fetch source {source!r}: {exc}", err=True)
                raise typer.Exit(3) from None
    else:
        repo, origin = GitRepo(path), str(path.resolve())
        if registered is not None:  # the registered source's ids: the same prefix as its HTTP syncs
            prefix = prefix or registered.prefix
        by_commit = (
            path.is_dir()
            and not (working_tree or doc_id or limit or retry_only)
            and (path / ".git").exists()
            and repo.is_repo()
        )
    if not by_commit and (commit or full or source or prefix):
        raise typer.BadParameter(
            "--commit, --full, --source and --prefix apply to a git checkout read by commit",
            param_hint="PATH",
        )

    def ingestor_from(origin: str) -> Ingestor:
        return Ingestor(
            functools.partial(service.embed_texts, colbert=_shared_colbert(settings)),
            store,
            settings.chunk,
            settings=settings.ingest,
            batch_size=batch_size,
            model_key=service.encoder.model_key,
            meta=meta,
            origin=origin,
        )

    try:
        if by_commit:
            ingestor = ingestor_from(f"{origin}@{commit or 'HEAD'}")
            name = source or origin
            try:
                synced = GitSync(ingestor, meta, repo, name, prefix=prefix).sync(commit, full=full)
            except UnknownRevision as exc:
                raise typer.BadParameter(str(exc), param_hint="--commit") from None
            except (GitError, SourceConflict) as exc:
                typer.echo(f"cannot sync {name!r}: {exc}", err=True)
                raise typer.Exit(3) from None
            typer.echo(json.dumps(synced.as_dict(), ensure_ascii=False))
            _exit_on_failures(synced.ingest)
            return
        assert path is not None
        docs = iter_documents(path)
        wanted = set(doc_id or ())
        if retry_only:
            failed = set(meta.list("failed"))
            wanted = wanted & failed if wanted else failed
            typer.echo(f"retrying {len(wanted)} failed documents", err=True)
        if wanted or retry_only:
            docs = (d for d in docs if d.doc_id in wanted)
        docs = list(itertools.islice(docs, limit) if limit else docs)
        revision = git_revision(path) if path.is_dir() else None
        ingestor = ingestor_from(f"{path.resolve()}" + (f"@{revision}" if revision else ""))
        bar = Progress(len(docs))
        try:
            report = ingestor.ingest(docs, total=len(docs), progress=bar)
        finally:
            bar.close()
    except StoreUnavailable as exc:
        raise milvus_down(exc) from None
    except EmbedderUnavailable as exc:
        typer.echo(f"stopped: {exc}\nDocuments not yet written keep their stored version.", err=True)
        raise typer.Exit(3) from None
    typer.echo(json.dumps(report.as_dict(), ensure_ascii=False))
    _exit_on_failures(report)


def _shared_colbert(settings) -> bool:
    """ColBERT rows are worth keeping only where the service's Embedders will read them (Redis)."""
    return bool(
        settings.ingest.colbert_rows and settings.redis.url is not None and settings.redis.colbert_in_redis
    )


def _exit_on_failures(report) -> None:
    if report.failed:
        typer.echo(
            f"{len(report.failed)} documents failed and kept their stored version; "
            "see `specrag ingest --status`, retry with `specrag ingest PATH --retry-only` "
            "(a git checkout: run it again, the commit was not recorded if an embedding failed)",
            err=True,
        )
        raise typer.Exit(4)


def print_status(meta) -> None:
    """``ingest --status``: the five most recent runs and the documents recorded as failed."""
    runs = sorted(meta.list("run").values(), key=lambda r: r.get("started_at", 0), reverse=True)[:5]
    failed = meta.list("failed")
    for r in runs:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.get("started_at", 0)))
        typer.echo(
            f"run {r['run_id']} {r['state']} (started {started}, {r['seconds']} s): "
            f"{r['done']} done, {r['pending']} pending, {r['failed_documents']} failed, "
            f"success rate {r['success_rate']:.1%}; {r['chunks_embedded']} chunks embedded, "
            f"{r['chunks_reused']} reused, {r['unchanged']} documents unchanged  [{r.get('origin', '')}]"
        )
    if not runs:
        typer.echo("no ingest runs recorded")
    typer.echo(f"{len(failed)} documents recorded as failed")
    for doc, f in list(failed.items())[:20]:
        first = (f.get("errors") or [{}])[0]
        typer.echo(f"  {doc}: chunk {first.get('ordinal')}: {first.get('error')}")


def delete(
    doc_ids: Annotated[list[str], typer.Argument(help="Documents to remove (every version).")],
    collection: CollectionOpt = None,
    verbose: bool = False,
) -> None:
    """Remove documents from the index (idempotent: unknown ids are not an error)."""
    from serve_app.core.ingest import Ingestor
    from serve_app.core.meta import MetaStore
    from serve_app.core.store import StoreUnavailable

    settings = prepare(verbose)
    store = open_store(settings, 1, collection)
    try:
        report = Ingestor(lambda t: ([], []), store, settings.chunk, meta=MetaStore(store)).delete_documents(
            doc_ids
        )
    except StoreUnavailable as exc:
        raise milvus_down(exc) from None
    typer.echo(json.dumps({"deleted": report.deleted, "chunks_deleted": report.chunks_deleted}))
