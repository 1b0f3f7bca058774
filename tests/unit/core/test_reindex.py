from __future__ import annotations

from collections import Counter

from serve_app.core.reindex import _differing_docs


def test_differing_docs_names_every_document_whose_rows_or_presence_differ() -> None:
    live_versions = {"same": 1, "fewer": 2, "newer": 3, "only-live": 1}
    live_counts = Counter({("same", 1): 4, ("fewer", 2): 3, ("newer", 3): 2, ("only-live", 1): 1})
    new_versions = {"same": 1, "fewer": 2, "newer": 2, "only-new": 5}
    new_counts = Counter({("same", 1): 4, ("fewer", 2): 2, ("newer", 2): 2, ("only-new", 5): 1})

    differ = _differing_docs(live_versions, live_counts, new_versions, new_counts)

    assert differ == ["fewer", "newer", "only-live", "only-new"]
    assert _differing_docs(live_versions, live_counts, dict(live_versions), Counter(live_counts)) == []
