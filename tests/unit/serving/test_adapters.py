"""The Ingress's embedding and expansion memories in front of the handles (honest fakes behind them)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from serve_app.core.contracts import EmbedOutput
from serve_app.serving.adapters import CachingEmbedder, CachingExpander
from serve_app.settings import DataScope


class FakeHandleEmbedder:
    def __init__(self) -> None:
        self.calls: list[tuple[list[str], str, bool, str]] = []

    async def embed(
        self, texts: list[str], input_type: str, colbert: bool = False, truncate: str = "end"
    ) -> Any:
        self.calls.append((list(texts), input_type, colbert, truncate))
        out: list[EmbedOutput] = []
        for t in texts:
            error = "model failed" if t == "bad" else None
            out.append(
                {
                    "dense": np.full(4, float(len(t)), np.float32),
                    "sparse": {len(t): 1.0},
                    "colbert": np.ones((2, 4), np.float16) if colbert else None,
                    "tokens": 3,
                    "truncated": t == "long",
                    "cached": None,
                    "error": error,
                }
            )
        return out

    async def info(self) -> dict[str, Any]:
        return {"model": "m"}


def _embed(port: CachingEmbedder, texts: list[str], **kw: Any) -> list[EmbedOutput]:
    return asyncio.run(port.embed(texts, kw.pop("input_type", "query"), **kw))


def test_a_repeated_text_skips_the_hop_and_gets_the_same_vectors() -> None:
    inner = FakeHandleEmbedder()
    port = CachingEmbedder(inner, 2**20)  # type: ignore[arg-type]
    first = _embed(port, ["ab", "c"])
    again = _embed(port, ["c", "new", "ab"])
    assert [c[0] for c in inner.calls] == [["ab", "c"], ["new"]], "only the new text reaches the Embedder"
    assert [o["cached"] for o in again] == ["lru", None, "lru"] and again[2]["tokens"] == 0
    assert np.array_equal(again[2]["dense"], first[0]["dense"]) and again[0]["sparse"] == first[1]["sparse"]
    assert asyncio.run(port.info()) == {"model": "m"}


def test_entries_are_kept_apart_by_input_type_truncation_and_colbert() -> None:
    inner = FakeHandleEmbedder()
    port = CachingEmbedder(inner, 2**20)  # type: ignore[arg-type]
    _embed(port, ["x"])
    _embed(port, ["x"], input_type="passage")
    _embed(port, ["x"], truncate="start")
    rows = _embed(port, ["x"], colbert=True)
    assert len(inner.calls) == 4 and rows[0]["colbert"] is not None
    assert _embed(port, ["x"], colbert=True)[0]["cached"] == "lru" and len(inner.calls) == 4


def test_failures_truncations_and_window_checks_always_go_to_the_embedder() -> None:
    inner = FakeHandleEmbedder()
    port = CachingEmbedder(inner, 2**20)  # type: ignore[arg-type]
    _embed(port, ["bad", "long", "fits"])
    again = _embed(port, ["bad", "long", "fits"])
    assert inner.calls[-1][0] == ["bad", "long"], "a failed or truncated result is never remembered"
    assert again[0]["error"] == "model failed" and again[1]["truncated"] is True
    _embed(port, ["fits"], truncate="none")
    assert inner.calls[-1] == (["fits"], "query", False, "none"), "the Embedder checks the window"


class FakeHandleExpander:
    """Answers with the given ``llm`` state; counts its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool, Any]] = []
        self.llm = "ok"

    async def expand(self, query: str, enabled: bool = True, scope: Any = None) -> Any:
        self.calls.append((query, enabled, scope))
        variants = [{"text": query, "lang": "en", "origin": "original"}]
        if self.llm == "ok":
            variants.append({"text": f"{query} (rewritten)", "lang": "en", "origin": "llm"})
        return {"variants": variants, "llm": self.llm}


def test_a_repeated_query_is_expanded_once_until_its_ttl_and_per_scope() -> None:
    inner = FakeHandleExpander()
    port = CachingExpander(inner, ttl_s=0.3)
    first = asyncio.run(port.expand("q"))
    again = asyncio.run(port.expand("q"))
    assert len(inner.calls) == 1 and again == first and len(again["variants"]) == 2
    again["variants"].pop()
    assert len(asyncio.run(port.expand("q"))["variants"]) == 2, "a caller's change stays in its copy"
    asyncio.run(port.expand("q", enabled=False))
    asyncio.run(port.expand("q", scope=DataScope(sources=("team-a/",))))
    assert len(inner.calls) == 3, "enabled and the data scope are part of the key"
    time.sleep(0.35)
    asyncio.run(port.expand("q"))
    assert len(inner.calls) == 4, "asked again after the TTL"


def test_fallback_answers_are_not_remembered() -> None:
    inner = FakeHandleExpander()
    port = CachingExpander(inner, ttl_s=60)
    inner.llm = "fallback"  # the LLM failed: glossary variants only
    asyncio.run(port.expand("q"))
    inner.llm = "ok"
    assert asyncio.run(port.expand("q"))["llm"] == "ok", "the recovered LLM is asked at once"
    asyncio.run(port.expand("q"))
    assert len(inner.calls) == 2
