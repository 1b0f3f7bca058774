"""``specrag deploy ...``: manifests generated from ``serve_config.yaml`` (``devtools.kuberay``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

deploy_app = typer.Typer(no_args_is_help=True, help="Deployment manifests generated from serve_config.yaml.")


@deploy_app.command("kuberay")
def kuberay(
    serve_config: Annotated[Path, typer.Option(help="The Serve config to embed as serveConfigV2.")] = Path(
        "serve_config.yaml"
    ),
    template: Annotated[Path, typer.Option(help="The RayService without serveConfigV2 (edited by hand).")] = (
        Path("deploy/kuberay/rayservice.template.yaml")
    ),
    out: Annotated[Path, typer.Option(help="The manifest to write.")] = Path(
        "deploy/kuberay/rayservice.yaml"
    ),
    check: Annotated[
        bool, typer.Option("--check", help="Write nothing; exit 1 when OUT is not what would be written.")
    ] = False,
) -> None:
    """Write the KubeRay RayService: the template, serveConfigV2 = SERVE_CONFIG verbatim, and the Ray
    jobs' runtime env (SERVE_CONFIG's args as SPECRAG_* variables) as a ConfigMap.

    Endpoints and credentials in the args are refused: they come from a Secret (the environment).
    """
    from serve_app.devtools.kuberay import ManifestError, generate

    try:
        text, changed = generate(serve_config, template, out)
    except (ManifestError, OSError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    if check:
        typer.echo(f"{out} is {'stale: run specrag deploy kuberay' if changed else 'up to date'}")
        raise typer.Exit(1 if changed else 0)
    if changed:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    typer.echo(f"{out} {'written' if changed else 'unchanged'}")
