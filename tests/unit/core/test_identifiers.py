"""Identifier detection (narrow on purpose) and the evaluation's generated set."""

from __future__ import annotations

import pytest

from serve_app.core.identifiers import SHAPES, find_identifiers, generate_set, make_identifier


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("zq3f9a0c1b2d", ["zq3f9a0c1b2d"]),
        ("INSUFFICIENT_STOCK とは", ["INSUFFICIENT_STOCK"]),
        ("X-Timestamp ヘッダーの意味", ["X-Timestamp"]),
        ("what is maxSurge", ["maxSurge"]),
        ("spring.datasource.url の既定値", ["spring.datasource.url"]),
        ("GET /api/v2/orders/{id}", ["api/v2/orders"]),
        ("1990年に何が起きたか", []),
        ("東西の長さは約70km、3.5GB、100ms", []),
        ("X-15 と COVID-19", ["X-15", "COVID-19"]),
        ("Python 3.12 の新機能", []),
        ("kube-proxy と built-in functions, e.g. and/or", []),
    ],
)
def test_find_identifiers(text: str, expected: list[str]) -> None:
    assert find_identifiers(text) == expected


@pytest.mark.parametrize(
    ("text", "lookup"),
    [
        ("zq3f9a0c1b2d", True),
        ("INSUFFICIENT_STOCK とは", True),
        ("PAY-4821 の対応状況は？", True),
        ("what is maxSurge", True),
        ("X-15での最高到達高度は何キロ?", False),
        ("where is E_STOCK_AUTH_443 raised in the code", False),
    ],
)
def test_only_a_lookup_pins_its_identifiers(text: str, lookup: bool) -> None:
    from serve_app.core.identifiers import pins

    assert pins(text, find_identifiers(text)) is lookup
    assert not pins("plain words", [])


def test_at_most_three_identifiers_per_query() -> None:
    assert len(find_identifiers("AB-101 AB-102 AB-103 AB-104")) == 3


def test_every_generated_shape_is_found_as_one_identifier() -> None:
    import random

    rng = random.Random(3)
    for shape in SHAPES:
        ident = make_identifier(shape, rng)
        assert find_identifiers(f"詳細は {ident} を参照") == [ident.lstrip("/")], shape


def test_generated_set_is_reproducible_and_planted() -> None:
    passages = [(f"d{i}", f"t{i}", f"Sentence one of {i}. Sentence two.", "en") for i in range(30)]
    a = generate_set(passages, count=16, seed=7)
    assert a == generate_set(passages, count=16, seed=7)
    assert {p.shape for p in a} == set(SHAPES)
    assert all(p.identifier in p.text for p in a)
    assert sum(p.late for p in a) == 8
