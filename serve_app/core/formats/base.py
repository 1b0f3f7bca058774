"""The converters' contract (apart from the dispatch in ``__init__``, so converters import it
without importing the package that imports them)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Converted", "Section", "UnreadableDocument"]


class UnreadableDocument(ValueError):
    """This file cannot be read (the message says why); its document fails, the run does not."""


@dataclass(frozen=True, slots=True)
class Section:
    """A pre-cut chunk (one OpenAPI operation): kept whole, with its own trail and tags."""

    title_path: tuple[str, ...]
    text: str
    tags: tuple[str, ...] = ()


@dataclass(slots=True)
class Converted:
    """What a converter found: Markdown (``fmt`` "markdown"), plain text, or pre-cut ``sections``."""

    text: str = ""
    fmt: str = "markdown"  # markdown | text | sections
    title: str | None = None  # the file's own title (document properties, <title>, info.title)
    kind: str | None = None  # "api" for OpenAPI; None leaves the caller's kind
    sections: list[Section] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
