"""Query expansion: the LLM client against a real local OpenAI-compatible HTTP server, and the glossary."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serve_app.core.expansion import ExpansionError, Glossary, LLMExpander, QueryExpansion
from serve_app.devtools.local_stack import free_port
from serve_app.settings import DataScope, ExpanderSettings
from serve_app.testing.fakellm import FakeLLM


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


def _settings(url: str, **kw: Any) -> ExpanderSettings:
    base = {"llm_url": url, "timeout_s": 1.0, "attempts": 2, "breaker_fail_max": 3, "breaker_reset_s": 60}
    return ExpanderSettings(**{**base, **kw})


def _expand(engine: QueryExpansion, query: str) -> dict[str, Any]:
    return asyncio.run(engine.expand(query))


def test_llm_variants_are_used_and_the_request_is_json_constrained(llm: FakeLLM) -> None:
    llm.mode = "ok"
    llm.requests.clear()
    out = _expand(QueryExpansion(_settings(llm.url)), "認証トークンはいつ切れる？")
    assert out["llm"] == "ok"
    assert [v["origin"] for v in out["variants"]] == ["original", "llm", "llm", "llm", "llm"]
    assert [v["lang"] for v in out["variants"][1:]] == ["ja", "en", "en", "en"]
    body = llm.requests[-1]
    schema = body["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["en"]["maxItems"] == 3 and schema["properties"]["ja"]["maxItems"] == 1
    assert body["messages"][-1]["content"] == "認証トークンはいつ切れる？"


@pytest.mark.parametrize("mode", ["garbage", "error", "html", "slow"])
def test_a_faulty_endpoint_falls_back_without_failing(llm: FakeLLM, mode: str) -> None:
    llm.mode = mode
    llm.requests.clear()
    engine = QueryExpansion(_settings(llm.url, timeout_s=0.5))
    engine.glossary.add("有効期限", "expiry")
    started = time.perf_counter()
    out = _expand(engine, "トークンの有効期限")
    elapsed = time.perf_counter() - started
    assert out["llm"] == "fallback" and out["llm_error"]
    assert elapsed < 1.5, f"the time budget holds ({elapsed:.2f} s)"
    assert [v["origin"] for v in out["variants"]] == ["original", "glossary"]
    assert out["variants"][1]["text"] == "トークンの expiry"
    # a fast failure is retried within the budget (attempts=2); a slow one uses the budget up
    assert len(llm.requests) == (1 if mode == "slow" else 2)


def test_endpoint_down_falls_back_and_the_breaker_opens() -> None:
    down = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    engine = QueryExpansion(_settings(down, breaker_fail_max=2))
    for _ in range(2):
        assert _expand(engine, "query")["llm"] == "fallback"
    assert engine.llm is not None and engine.llm.state == "open"
    started = time.perf_counter()
    out = _expand(engine, "query")
    assert out["llm"] == "fallback" and "circuit open" in out["llm_error"]
    assert time.perf_counter() - started < 0.05, "an open breaker does not call the endpoint"


def test_an_idle_open_breaker_reports_half_open_after_the_reset_timeout() -> None:
    """Readiness must recover without traffic: pybreaker itself stays "open" until the next call."""
    down = f"http://127.0.0.1:{free_port()}/v1"
    engine = QueryExpansion(_settings(down, breaker_fail_max=1, breaker_reset_s=0.3))
    assert _expand(engine, "query")["llm"] == "fallback"
    assert engine.llm is not None and engine.llm.state == "open"
    time.sleep(0.35)
    assert engine.llm.state == "half-open"
    assert _expand(engine, "query")["llm"] == "fallback", "the probe call fails: open again"
    assert engine.llm.state == "open"


def test_invalid_items_are_dropped_and_the_rest_kept(llm: FakeLLM) -> None:
    llm.mode = "ok"
    client = LLMExpander(_settings(llm.url))
    content = json.dumps(
        {
            "ja": ["english only", "在庫引当"],  # the first is not Japanese
            "en": ["在庫", "stock allocation", "Stock Allocation", 42, "  ", "x" * 5000, "reservation"],
        }
    )
    variants = client.parse("在庫の引当", content)
    assert [(v.lang, v.text) for v in variants] == [
        ("ja", "在庫引当"),
        ("en", "stock allocation"),
        ("en", "reservation"),
    ]
    assert client.parse("q", '```json\n{"ja": [], "en": ["fenced"]}\n```')[0].text == "fenced"
    assert client.parse("q", json.dumps({"ja": [], "en": ["Q", " q "]})) == []  # repeats: nothing new
    with pytest.raises(ExpansionError):
        client.parse("q", "[1, 2]")


def test_a_valid_answer_without_variants_is_not_a_fault(llm: FakeLLM) -> None:
    llm.mode = "empty"
    out = _expand(QueryExpansion(_settings(llm.url)), "query")
    assert out["llm"] == "empty" and [v["origin"] for v in out["variants"]] == ["original"]


def test_expand_off_returns_only_the_original(llm: FakeLLM) -> None:
    llm.mode = "ok"
    llm.requests.clear()
    out = asyncio.run(QueryExpansion(_settings(llm.url)).expand("query", enabled=False))
    assert [v["origin"] for v in out["variants"]] == ["original"] and not llm.requests


def test_glossary_learns_pairs_from_ingested_documents() -> None:
    g = Glossary()
    rows = [
        {"doc_id": "glossary", "kind": "glossary", "title": "用語集", "title_path": ["受注 (Order intake)"],
         "text": "JA: 得意先からの注文\n| 与信 | Credit authorization | 説明 |"},
        {"doc_id": "design", "kind": "spec", "title": "設計", "title_path": [],
         "text": "すべての更新は冪等キー（Idempotency Key）で重複を防ぐ。"},
        {"doc_id": "docs/ja/rollout", "kind": "spec", "title": "ロールアウト > 手順", "text": "x"},
        {"doc_id": "docs/en/rollout", "kind": "spec", "title": "Rollout > Steps", "text": "x"},
    ]  # fmt: skip
    assert g.learn(rows) >= 4
    assert g.variants("受注の与信チェック")[0].text == "Order intake の Credit authorization チェック"
    assert g.variants("How long is an idempotency key kept?")[0].text == "How long is an 冪等キー kept?"
    assert g.variants("ロールアウトの手順")[0].text == "Rollout の手順"
    assert g.variants("nothing known here") == []
    # a Latin term matches whole words only
    assert g.matches("rollouts") == []


def test_term_file_adds_translations_and_synonyms(tmp_path: Path) -> None:
    terms = tmp_path / "terms.tsv"
    terms.write_text("# term\ttranslation\n引当\tallocation\treservation\nSLA\tservice level agreement\n")
    g = Glossary()
    assert g.load_tsv(terms) == 3
    assert [v.text for v in g.variants("引当の規則", 2)] == ["allocation の規則", "reservation の規則"]
    assert g.variants("SLA breach")[0].text == "service level agreement breach"


def test_learning_from_a_store_pairs_twins_across_pages() -> None:
    from serve_app.core.expansion import learn_glossary

    class Store:
        def iter_rows(self, expr: str, *, fields: list[str], batch_size: int) -> Any:
            yield [{"doc_id": "docs/ja/rollout", "title": "ロールアウト", "text": "", "kind": "spec"}]
            yield [{"doc_id": "docs/en/rollout", "title": "Rollout", "text": "", "kind": "spec"}]

    glossary = learn_glossary(Store(), ExpanderSettings())
    assert glossary.variants("ロールアウトの手順")[0].text == "Rollout の手順"


def test_glossary_terms_reach_only_callers_who_may_read_where_they_were_learned(tmp_path: Path) -> None:
    g = Glossary()
    g.learn(
        [
            {
                "doc_id": "a-terms",
                "kind": "glossary",
                "text": "冪等キー (idempotency key)",
                "source": "team-a/g.md",
            },
            {
                "doc_id": "b-terms",
                "kind": "glossary",
                "text": "在庫引当 (stock allocation)",
                "source": "team-b/g.md",
            },
            # translated twins in different teams: the pair tells both titles, so both must be readable
            {"doc_id": "docs/ja/rollout", "title": "段階的リリース", "text": "x", "source": "team-a/ja.md"},
            {"doc_id": "docs/en/rollout", "title": "Staged rollout", "text": "x", "source": "team-b/en.md"},
        ]
    )
    path = tmp_path / "terms.tsv"
    path.write_text("障害報告\tincident report\n", encoding="utf-8")
    g.load_tsv(path)
    a, b = DataScope(sources=["team-a/"]), DataScope(sources=["team-b/"])
    both = DataScope(sources=["team-a/", "team-b/"])

    def swapped(query: str, scope: DataScope | None) -> list[str]:
        return [v.text for v in g.variants(query, 1, scope)]

    assert swapped("冪等キーの保持期間", a) == ["idempotency key の保持期間"]
    assert swapped("冪等キーの保持期間", b) == [], "team B never sees team A's term"
    assert swapped("在庫引当の順序", a) == [] and swapped("在庫引当の順序", None) == [
        "stock allocation の順序"
    ]
    assert swapped("段階的リリースの手順", a) == swapped("段階的リリースの手順", b) == []
    assert swapped("段階的リリースの手順", both) == ["Staged rollout の手順"]
    assert swapped("障害報告の書き方", b) == ["incident report の書き方"], (
        "operator term files serve everyone"
    )
    engine = QueryExpansion(ExpanderSettings(lexicon="off"))
    engine.glossary = g
    out = asyncio.run(engine.expand("冪等キーとは", scope=b))
    assert [v["origin"] for v in out["variants"]] == ["original"]
