"""QueryExpander: a thin Serve shell around ``QueryExpansion`` (LLM variants, the ja-en lexicon,
the learned glossary).

The glossary and the collection's language mix (which decides whether a Japanese query gets the
lexicon's English variant) are re-read from the live collection every
``expander.glossary_refresh_s`` in a thread, so documents ingested meanwhile teach it new terms
without a redeploy; a Milvus outage only keeps the previous state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ray import serve

from serve_app.core.contracts import Expansion
from serve_app.core.expansion import Glossary, QueryExpansion, learn_glossary
from serve_app.core.lexicon import load_lexicon
from serve_app.core.store import language_counts
from serve_app.serving.observability import metric
from serve_app.settings import DataScope, Settings

log = logging.getLogger("ray.serve.specrag.expander")


@serve.deployment(name="QueryExpander", max_ongoing_requests=256)
class QueryExpander:
    def __init__(self, settings: Settings, dim: int) -> None:
        from serve_app.core.store import make_store

        self.settings = settings
        x = settings.expander
        lexicon = load_lexicon(x.lexicon_path) if x.lexicon != "off" else None
        self.engine = QueryExpansion(x, max_chars=settings.limits.max_query_chars, lexicon=lexicon)
        self.store = make_store(settings, dim)
        self._learning: asyncio.Task[None] | None = None
        self._learn_error: str | None = None

    def _maybe_learn(self) -> None:
        s = self.settings.expander
        due = time.time() - self.engine.glossary.learned_at > s.glossary_refresh_s
        wanted = s.glossary or self.engine.lexicon is not None  # None when the lexicon is off
        if wanted and due and (self._learning is None or self._learning.done()):
            self._learning = asyncio.get_running_loop().create_task(self._learn())

    async def _learn(self) -> None:
        soon = time.time() - self.settings.expander.glossary_refresh_s + 30
        try:
            if self.settings.expander.glossary:
                glossary = await asyncio.to_thread(learn_glossary, self.store, self.settings.expander)
            else:  # the lexicon alone needs only the language mix
                glossary = Glossary(learned_at=time.time())
            self.engine.languages = await asyncio.to_thread(language_counts, self.store)
            self._learn_error = None
            if not sum(self.engine.languages.values()):  # nothing ingested yet: look again soon
                glossary.learned_at = min(glossary.learned_at, soon)
            self.engine.glossary = glossary
            log.info("glossary learned: %d term pairs", len(glossary))
        except Exception as exc:  # keep the previous glossary; try again soon
            self.engine.glossary.learned_at = soon
            self._learn_error = f"{type(exc).__name__}: {str(exc)[:200]}"
            log.warning("glossary refresh failed: %s", self._learn_error)

    async def expand(self, query: str, enabled: bool = True, scope: DataScope | None = None) -> Expansion:
        first = self.engine.glossary.learned_at == 0
        self._maybe_learn()
        if first and enabled and self._learning is not None:
            # The first search waits (briefly) for the first glossary; later refreshes run behind.
            await asyncio.wait({self._learning}, timeout=5)
        out = await self.engine.expand(query, enabled, scope)
        if out.get("llm") == "fallback":
            metric("expander_fallbacks").inc(tags={"reason": "llm"})
        return out

    async def ready(self) -> dict[str, Any]:
        """``ok`` unless an LLM is configured and its breaker is open (then searches use the glossary)."""
        self._maybe_learn()
        llm = self.engine.llm
        out: dict[str, Any] = {
            "status": "ok",
            "llm": "off" if llm is None else llm.state,
            "glossary_pairs": len(self.engine.glossary),
        }
        if self._learn_error:
            out["glossary_error"] = self._learn_error
        if llm is not None and llm.state == "open":
            out["status"] = "down"
            out["detail"] = "LLM endpoint failing: circuit open, searching with glossary variants only"
        return out

    def check_health(self) -> None:
        """A failing LLM is degraded service, not a dead replica: restarting would not fix it."""
