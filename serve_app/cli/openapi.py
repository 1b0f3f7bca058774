"""``specrag openapi``: the HTTP API's OpenAPI document, as ``/openapi.json`` serves it.

``docs/openapi.json`` is this command's output, committed; ``tests/unit/http/test_openapi.py``
fails when the app's document differs from it, so a change of the API shows in review.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, cast

import typer

from serve_app.cli.common import load_settings
from serve_app.settings import Settings

DEFAULT_OUT = Path("docs/openapi.json")


def document(settings: Settings) -> str:
    """The document of an app built by ``create_app`` (no backend: the document needs none), as
    JSON with a stable layout: two-space indents, UTF-8 text, a final newline."""
    from serve_app.http.app import Backend, create_app

    app = create_app(settings, cast(Backend, None))
    doc: dict[str, Any] = app.openapi()
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def openapi(
    out: Annotated[
        Path, typer.Option(help="Where to write it; '-' prints it.", show_default=True)
    ] = DEFAULT_OUT,
) -> None:
    """Write the HTTP API's OpenAPI document (default docs/openapi.json, which a test compares)."""
    text = document(load_settings())
    if str(out) == "-":
        sys.stdout.write(text)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    typer.echo(f"written: {out}")
