from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from serve_app.core.fusion import RankedList, rrf_fuse


@dataclass
class H:
    chunk_id: str
    score: float
    fields: dict = field(default_factory=dict)


def test_rrf_merges_duplicates_and_keeps_best_channel_scores() -> None:
    dense = RankedList(0, "dense", 1.0, [H("a", 0.9), H("b", 0.8)])
    sparse = RankedList(0, "sparse", 1.0, [H("b", 7.0), H("c", 3.0)])
    variant = RankedList(1, "dense", 1.0, [H("b", 0.95)])
    fused = rrf_fuse([dense, sparse, variant], k=60)
    assert [c.chunk_id for c in fused] == ["b", "a", "c"]
    b = fused[0]
    assert b.rrf == pytest.approx(1 / 62 + 1 / 61 + 1 / 61)
    assert b.channel_scores == {"dense": 0.95, "sparse": 7.0}
    assert {(f["variant"], f["channel"]) for f in b.found_by} == {(0, "dense"), (0, "sparse"), (1, "dense")}


def test_weights_change_the_order_and_zero_weight_drops_a_list() -> None:
    dense = RankedList(0, "dense", 1.0, [H("a", 0.9)])
    sparse = RankedList(0, "sparse", 3.0, [H("s", 5.0)])
    assert rrf_fuse([dense, sparse])[0].chunk_id == "s"
    sparse.weight = 0.0
    assert [c.chunk_id for c in rrf_fuse([dense, sparse])] == ["a"]


def test_ties_are_deterministic_and_limit_applies() -> None:
    lists = [RankedList(0, "dense", 1.0, [H("z", 1.0)]), RankedList(1, "dense", 1.0, [H("y", 1.0)])]
    assert [c.chunk_id for c in rrf_fuse(lists)] == ["y", "z"]
    assert len(rrf_fuse(lists, limit=1)) == 1
