"""``specrag`` command line: up, ingest, eval, model build-offline, lexicon build, settings, cluster."""

from __future__ import annotations

import typer

from serve_app.cli import (
    bench,
    cluster,
    deploy,
    documents,
    evaluate,
    lexicon,
    model,
    openapi,
    reindex,
    reliability,
    service,
)

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

# One module per command group; the order here is the order of ``specrag --help``.
app.command()(documents.ingest)
app.command()(documents.delete)
app.command()(reindex.reindex)
app.command()(reindex.rollback)
app.command("eval")(evaluate.evaluate_cmd)
app.command()(service.settings)
app.command()(service.up)
app.command()(openapi.openapi)
app.add_typer(model.model_app, name="model")
app.add_typer(lexicon.lexicon_app, name="lexicon")
app.add_typer(service.keys_app, name="keys")
app.add_typer(bench.bench_app, name="bench")
app.add_typer(reliability.reliability_app, name="reliability")
app.add_typer(deploy.deploy_app, name="deploy")
app.add_typer(cluster.cluster_app, name="cluster")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
