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
    out: Annotated[Path, typer.Option(help="The RayService manifest to write.")] = Path(
        "deploy/kuberay/rayservice.yaml"
    ),
    rayjob_template: Annotated[
        Path, typer.Option(help="The weekly re-embed's RayJob without runtimeEnvYAML (edited by hand).")
    ] = Path("deploy/kuberay/rayjob-reembed.template.yaml"),
    rayjob_out: Annotated[Path, typer.Option(help="The RayJob manifest to write.")] = Path(
        "deploy/kuberay/rayjob-reembed.yaml"
    ),
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Write nothing; exit 1 when OUT or RAYJOB_OUT is not what would be written."
        ),
    ] = False,
) -> None:
    """Write the KubeRay RayService: the template, serveConfigV2 = SERVE_CONFIG verbatim, the Ray
    jobs' runtime env (SERVE_CONFIG's args as SPECRAG_* variables) as a ConfigMap, and the weekly
    re-embed's RayJob (its own cluster, runtimeEnvYAML = that runtime env) as a ConfigMap for the
    CronJob that creates it; and that RayJob alone in RAYJOB_OUT (`kubectl create -f` runs one).

    Endpoints and credentials in the args are refused: they come from a Secret (the environment).
    """
    from serve_app.devtools.kuberay import ManifestError, generate

    try:
        files = generate(serve_config, template, out, rayjob_template, rayjob_out)
    except (ManifestError, OSError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    if check:
        for path, _, changed in files:
            typer.echo(f"{path} is {'stale: run specrag deploy kuberay' if changed else 'up to date'}")
        raise typer.Exit(1 if any(changed for _, _, changed in files) else 0)
    for path, text, changed in files:
        if changed:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        typer.echo(f"{path} {'written' if changed else 'unchanged'}")
