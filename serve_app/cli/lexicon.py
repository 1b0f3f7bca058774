"""``specrag lexicon ...``: the ja→en lexicon of the query expansion (``devtools.lexicon_build``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from serve_app.cli.common import load_settings, setup_logging

lexicon_app = typer.Typer(no_args_is_help=True, help="The ja-en lexicon (JMdict) of the query expansion.")


@lexicon_app.command("build")
def build(
    out: Annotated[Path | None, typer.Option(help="Target file (default: expander.lexicon_path).")] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even if the file exists.")] = False,
) -> None:
    """Write the ja-en lexicon from the installed jamdict-data (JMdict); offline, about 2 s."""
    from serve_app.devtools.lexicon_build import build_lexicon

    setup_logging(False)
    target = out or load_settings().expander.lexicon_path
    if target.is_file() and not force:
        typer.echo(f"{target} exists (--force rebuilds it)")
        return
    try:
        forms = build_lexicon(target)
    except RuntimeError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"lexicon written to {target}: {forms} Japanese forms")
