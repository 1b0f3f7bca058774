"""What every ``specrag`` command shares: settings, logging, the model on first use, the store and
collection options, the ingest progress bar. The commands themselves stay thin over the engines
(``serve_app.core``) and the dev tools (``serve_app.devtools``)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated

import typer

from serve_app.devtools.local_stack import SAMPLE_DOCS as SAMPLE_DOCS  # re-exported for the commands
from serve_app.settings import ModelSettings, Settings

log = logging.getLogger("specrag")

CollectionOpt = Annotated[str | None, typer.Option(help="Collection (alias); default from settings.")]


def load_settings() -> Settings:
    """The settings from the environment and files; invalid ones exit 2 naming the field."""
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as exc:  # name the field, skip the traceback
        typer.echo(f"invalid settings:\n{exc}", err=True)
        raise typer.Exit(2) from None


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs a line per request at INFO: the load generator and benchmarks send thousands.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def prepare(verbose: bool) -> Settings:
    """Logging, the local environment defaults (``apply_local_env``) and the settings, in that order."""
    from serve_app.devtools.local_stack import apply_local_env

    setup_logging(verbose)
    apply_local_env()
    return load_settings()


def ensure_model(settings: Settings) -> None:
    """The embedded default builds itself on first use (the model, and the ja-en lexicon the
    expander reads); a production path must already exist."""
    from serve_app.devtools.model_build import SIDECAR, build_offline_model

    path = Path(settings.model.name_or_path)
    if path == Path(ModelSettings().name_or_path) and not (path / SIDECAR).exists():
        typer.echo(f"building the offline model into {path} (once, ~20 s)")
        build_offline_model(path)
    ensure_lexicon(settings)


def ensure_lexicon(settings: Settings) -> None:
    """The default ja-en lexicon builds itself on first use (2 s) where jamdict-data is installed;
    without it the expansion goes on without a lexicon variant (and says so)."""
    from serve_app.settings import ExpanderSettings

    path = settings.expander.lexicon_path
    if settings.expander.lexicon == "off" or path.exists() or path != ExpanderSettings().lexicon_path:
        return
    from serve_app.devtools.lexicon_build import build_lexicon

    try:
        typer.echo(f"building the ja-en lexicon into {path} (once, ~2 s)")
        build_lexicon(path)
    except RuntimeError as exc:
        typer.echo(f"no lexicon: {exc}", err=True)


def host_port(uri: str, default_port: int = 19530) -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(uri if "://" in uri else f"http://{uri}")
    return parts.hostname or "127.0.0.1", parts.port or default_port


def with_collection(settings: Settings, collection: str | None) -> Settings:
    """The settings with another collection (alias) when ``--collection`` names one."""
    if not collection:
        return settings
    return settings.model_copy(
        update={"milvus": settings.milvus.model_copy(update={"collection": collection})}
    )


def open_store(settings: Settings, dim: int, collection: str | None = None):
    from serve_app.core.store import make_store

    return make_store(with_collection(settings, collection), dim)


def milvus_down(exc: Exception) -> typer.Exit:
    typer.echo(
        f"{exc}\nStart the local stack (specrag up) or point SPECRAG_MILVUS_URI at your Milvus.", err=True
    )
    return typer.Exit(3)


class Progress:
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
