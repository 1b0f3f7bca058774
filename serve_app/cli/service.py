"""``specrag up``, ``specrag settings`` and ``specrag keys ...``: run the service, show its settings,
make API keys."""

from __future__ import annotations

import json
import signal
import threading
from typing import Annotated

import typer

from serve_app.cli.common import SAMPLE_DOCS, ensure_model, host_port, load_settings, open_store, prepare
from serve_app.settings import Settings

keys_app = typer.Typer(no_args_is_help=True, help="API keys for external systems.")


def settings() -> None:
    """Print the effective settings (secrets masked)."""
    typer.echo(json.dumps(load_settings().redacted(), indent=2, ensure_ascii=False))


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
    from serve_app.devtools.local_stack import deploy_app, local_ray, milvus_lite_server, serve_http

    settings = prepare(verbose)
    if port is not None:  # validated like the setting (Ray's worker ports are refused)
        try:
            settings = Settings.model_validate(
                {**settings.model_dump(), "serve": {**settings.serve.model_dump(), "port": port}}
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--port") from None
    ensure_model(settings)
    stop = threading.Event()

    milvus_port = milvus_port or host_port(settings.milvus.uri)[1]
    with milvus_lite_server(settings.home / "milvus", port=milvus_port) as uri:
        settings = settings.model_copy(update={"milvus": settings.milvus.model_copy(update={"uri": uri})})
        with local_ray(dashboard=dashboard, ingress=settings.serve.ingress):
            # After ray.init: Ray's core worker installs its own SIGTERM handler, which would
            # kill this process before Serve and Milvus are stopped.
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
            with serve_http(settings.serve.host, settings.serve.port) as base:
                deploy_app(
                    settings,
                    settings.serve.app_name,
                    route_prefix=settings.serve.route_prefix,
                    logging_config={"encoding": settings.serve.log_encoding},
                )
                if sample:
                    report = ingest_samples(settings)
                    typer.echo(f"sample documents: {json.dumps(report.as_dict())}")
                base += settings.serve.route_prefix.rstrip("/")
                typer.echo(
                    f"\nspecrag is up at {base}  (API docs: {base}/docs)\n"
                    f"  curl -s {base}/v1/search -H 'content-type: application/json' "
                    '-d \'{"query": "アクセストークンの有効期限は？"}\'\n'
                    "Ctrl-C or SIGTERM stops everything.",
                )
                while not stop.wait(1.0):
                    pass
                typer.echo("shutting down ...")
    typer.echo("stopped")


def ingest_samples(settings: Settings):
    """The bundled sample documents, embedded by the running app's Embedder, into the store."""
    from ray import serve

    from serve_app.core.ingest import Ingestor, iter_documents

    embedder = serve.get_deployment_handle("Embedder", app_name=settings.serve.app_name)

    def embed(texts: list[str]):
        import numpy as np

        out = embedder.embed.remote(texts, "passage").result()
        if failed := [o["error"] for o in out if o["error"]]:
            raise RuntimeError(f"{len(failed)} sample chunks failed to embed: {failed[0]}")
        return np.stack([o["dense"] for o in out]), [o["sparse"] for o in out]

    info = embedder.info.remote().result()
    store = open_store(settings, int(info["dim"]))
    ingestor = Ingestor(embed, store, settings.chunk, model_key=info["model_key"])
    return ingestor.ingest(iter_documents(SAMPLE_DOCS))


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="Who uses the key (e.g. crm-search); letters, digits, . _ -")],
    scope: Annotated[
        list[str] | None, typer.Option("--scope", help="search, ingest or admin (repeatable).")
    ] = None,
    rate_per_minute: Annotated[int | None, typer.Option(min=1, help="Default: auth.rate_per_minute.")] = None,
    read_source: Annotated[
        list[str] | None, typer.Option(help="Readable only: documents whose source starts so (repeatable).")
    ] = None,
    read_kind: Annotated[
        list[str] | None, typer.Option(help="Readable only: these kinds (repeatable).")
    ] = None,
    read_tag: Annotated[
        list[str] | None, typer.Option(help="Readable only: carrying a tag (repeatable).")
    ] = None,
    write_source: Annotated[
        list[str] | None, typer.Option(help="Writable only: documents whose source starts so (repeatable).")
    ] = None,
    write_kind: Annotated[
        list[str] | None, typer.Option(help="Writable only: these kinds (repeatable).")
    ] = None,
    write_tag: Annotated[
        list[str] | None, typer.Option(help="Writable only: carrying a tag (repeatable).")
    ] = None,
) -> None:
    """Print a new random key once, and the settings entry (its SHA-256; the key is stored nowhere).

    ``--read-*`` / ``--write-*`` give it a data scope: the documents it may read, and write or
    delete (fields combine with "and"; repeated values of one field with "or")."""
    from pydantic import ValidationError

    from serve_app.http.security import hash_key, new_key
    from serve_app.settings import ApiKey

    def data_scope(sources: list[str] | None, kinds: list[str] | None, tags: list[str] | None) -> dict | None:
        fields = {"sources": sources, "kinds": kinds, "tags": tags}
        return {k: v for k, v in fields.items() if v} or None

    key = new_key()
    try:
        entry = ApiKey(
            name=name,
            sha256=hash_key(key),
            scopes=scope or ["search"],
            rate_per_minute=rate_per_minute,
            read=data_scope(read_source, read_kind, read_tag),
            write=data_scope(write_source, write_kind, write_tag),
        )
    except ValidationError as exc:
        raise typer.BadParameter(str(exc)) from None
    line = json.dumps(entry.model_dump(mode="json", exclude_none=True))
    typer.echo(f"key (shown once, give it to {name}): {key}")
    typer.echo(f"settings entry for auth.keys: {line}")
    typer.echo(f"add it under keys: in the auth.file (re-read on change), or SPECRAG_AUTH__KEYS='[{line}]'")
