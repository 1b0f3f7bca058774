"""Documents in the formats teams keep them: one file's bytes -> text the heading-aware chunker reads.

Every converter takes the file's bytes and its name (not a path: git increments read blobs at a
commit from git's object store, never from a working tree) and returns Markdown whose headings carry the
trail a chunk should keep — sheet and table names for spreadsheets, slide titles for decks, page
numbers for PDFs — or, for OpenAPI, pre-cut sections (one per operation) the chunker leaves whole.

A file that cannot be read (a legacy binary format, an encrypted or corrupt file) raises
``UnreadableDocument`` naming the reason: that one document fails, the run goes on. A file of a
recognised suffix that is not a document (a ``.yaml`` that is no OpenAPI spec) converts to ``None``
and is skipped. Converters import their libraries lazily, so reading Markdown never loads them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import PurePosixPath

from serve_app.core.formats.base import Converted, Section, UnreadableDocument

__all__ = [
    "CONVERTED_SUFFIXES",
    "Converted",
    "Section",
    "UnreadableDocument",
    "convert",
    "handles",
]


Converter = Callable[[bytes, str], "Converted | None"]


def _office(data: bytes, name: str) -> Converted | None:
    from serve_app.core.formats import office

    return office.convert(data, name)


def _pdf(data: bytes, name: str) -> Converted | None:
    from serve_app.core.formats import pdf

    return pdf.convert(data, name)


def _html(data: bytes, name: str) -> Converted | None:
    from serve_app.core.formats import html

    return html.convert(data, name)


def _openapi(data: bytes, name: str) -> Converted | None:
    from serve_app.core.formats import openapi

    return openapi.convert(data, name)


def _legacy(data: bytes, name: str) -> Converted | None:
    suffix = PurePosixPath(name).suffix.lower()
    modern = {".xls": ".xlsx", ".doc": ".docx", ".ppt": ".pptx"}[suffix]
    raise UnreadableDocument(
        f"{suffix} is the legacy binary Office format, which is not read; save it as {modern}"
    )


_CONVERTERS: dict[str, Converter] = {
    ".docx": _office,
    ".xlsx": _office,
    ".xlsm": _office,
    ".pptx": _office,
    ".pdf": _pdf,
    ".html": _html,
    ".htm": _html,
    ".yaml": _openapi,
    ".yml": _openapi,
    ".json": _openapi,
    ".xls": _legacy,
    ".doc": _legacy,
    ".ppt": _legacy,
}
CONVERTED_SUFFIXES = frozenset(_CONVERTERS)


def handles(name: str) -> bool:
    """Whether ``name``'s suffix has a converter (Markdown and text are read by the caller)."""
    return PurePosixPath(name).suffix.lower() in _CONVERTERS


def convert(name: str, data: bytes) -> Converted | None:
    """Convert one file; ``None`` when it is not a document (a YAML file that is no API spec).

    Raises ``UnreadableDocument`` for a file that cannot be read; any other converter error is
    reported the same way (a corrupt file must not stop a run), naming the library's reason.
    """
    converter = _CONVERTERS.get(PurePosixPath(name).suffix.lower())
    if converter is None:
        raise UnreadableDocument(f"no converter for {name!r}")
    try:
        return converter(data, name)
    except UnreadableDocument:
        raise
    except Exception as exc:  # a converter library choking on a corrupt file
        reason = f"{type(exc).__name__}: {exc}"
        raise UnreadableDocument(f"cannot read {PurePosixPath(name).name}: {reason}") from exc
