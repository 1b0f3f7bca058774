"""The search engines in-process, built from settings and a store the way the graph builds them.

The Searcher keeps an IDF table when ``search.sparse_idf`` applies to the model, and the
QueryExpander a glossary learned from the collection; the evaluation, the fan-out benchmark and
the parity test build theirs here so that they search exactly as the service does.
"""

from __future__ import annotations

from serve_app.core.bm25 import Bm25Index
from serve_app.core.expansion import QueryExpansion, learn_glossary
from serve_app.core.lexical import IdfTable, idf_enabled
from serve_app.core.lexicon import load_lexicon
from serve_app.core.retrieval import Retriever
from serve_app.core.store import Store, language_counts
from serve_app.settings import Settings


def local_retriever(settings: Settings, store: Store, *, bm25: bool | None = None) -> Retriever:
    """A ``Retriever`` with the collection's IDF table where the model needs one (built now), and
    the BM25 index when ``bm25`` says so (None: when ``search.channels`` has that channel)."""
    use_idf = idf_enabled(settings.search.sparse_idf, settings.model.name_or_path)
    use_bm25 = bm25 if bm25 is not None else "bm25" in settings.search.channels
    return Retriever(
        store,
        settings.search,
        idf=IdfTable.build(store) if use_idf else None,
        bm25=Bm25Index.build(store) if use_bm25 else None,
        languages=language_counts(store),
    )


def local_expansion(settings: Settings, store: Store) -> QueryExpansion:
    """The expansion engine with the glossary learned from the collection (when enabled)."""
    lexicon = load_lexicon(settings.expander.lexicon_path) if settings.expander.lexicon != "off" else None
    expansion = QueryExpansion(settings.expander, max_chars=settings.limits.max_query_chars, lexicon=lexicon)
    if settings.expander.glossary:
        expansion.glossary = learn_glossary(store, settings.expander)
    expansion.languages = language_counts(store)
    return expansion
