"""QueryExpander: turns a query into the variants that are searched (pass-through for now).

The LLM rewrite (1 ja + 3 en variants) and glossary expansion arrive with the retrieval-quality
issue; the contract — a list of variants, the original first, each saying where it came from —
is already the one the ingress and searcher use.
"""

from __future__ import annotations

from ray import serve

from serve_app.chunking import detect_lang
from serve_app.settings import Settings


@serve.deployment(name="QueryExpander", max_ongoing_requests=256)
class QueryExpander:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def expand(self, query: str, enabled: bool = True) -> list[dict[str, str]]:
        return [{"text": query, "lang": detect_lang(query), "origin": "original"}]

    async def ready(self) -> dict[str, str]:
        return {"status": "ok", "mode": "pass-through"}

    def check_health(self) -> None:
        """Pure Python with no state to lose: alive is healthy."""
