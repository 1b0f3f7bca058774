"""``specrag reindex`` and ``specrag rollback``: re-embed into a new collection behind the alias, and
switch it back (``core.reindex``)."""

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

from serve_app.cli.common import (
    CollectionOpt,
    ensure_model,
    milvus_down,
    open_store,
    prepare,
    with_collection,
)


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


class JobStopped(KeyboardInterrupt):
    """SIGTERM (``ray job stop``, a pod's shutdown) ends the job like Ctrl-C: the Reindexer records
    it as interrupted, so a re-run resumes at once instead of waiting out the dead job's lease."""


@contextlib.contextmanager
def _stopped_by_sigterm():
    """Within: SIGTERM raises :class:`JobStopped` in the main thread. Installed after ``ray.init``,
    which sets its own handler (``sys.exit``) for drivers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise JobStopped(f"stopped by signal {signum}")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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

    settings = with_collection(prepare(verbose), collection)
    try:
        if status or failed:
            meta = MetaStore(open_store(settings, 1))
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
            ensure_model(settings)
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
        with _ray_for_job() if ray else contextlib.nullcontext(), _stopped_by_sigterm():
            result = Reindexer(settings, options, echo=lambda m: typer.echo(m, err=True)).run()
    except JobStopped as exc:
        typer.echo(f"{exc}; the job is recorded as interrupted and a re-run resumes it", err=True)
        raise typer.Exit(128 + signal.SIGTERM) from None
    except StoreUnavailable as exc:
        raise milvus_down(exc) from None
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


def rollback(collection: CollectionOpt = None, verbose: bool = False) -> None:
    """Switch the alias back to the collection the last re-embed replaced (writes since are copied)."""
    from serve_app.core.reindex import ReindexError
    from serve_app.core.reindex import rollback as do_rollback
    from serve_app.core.store import StoreUnavailable

    settings = with_collection(prepare(verbose), collection)
    try:
        do_rollback(settings, echo=typer.echo)
    except StoreUnavailable as exc:
        raise milvus_down(exc) from None
    except ReindexError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
