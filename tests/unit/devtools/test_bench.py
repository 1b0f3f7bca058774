"""The benchmark's pure parts: workload, figures, report shaping and rendering (no Ray, no model)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from serve_app.devtools import common
from serve_app.devtools.bench import embed as bench
from serve_app.devtools.common import replace_section
from serve_app.devtools.local_stack import SAMPLE_DOCS
from serve_app.settings import Settings


@pytest.fixture(scope="module")
def sample_docs() -> list[str]:
    docs, _ = bench.read_source(SAMPLE_DOCS)
    return docs


# --------------------------------------------------------------------------------------------------
# Workload


def test_workload_is_deterministic_unique_and_mixed(sample_docs) -> None:
    w = bench.build_workload(sample_docs, 384, seed=3)
    assert w == bench.build_workload(sample_docs, 384, seed=3)
    assert w.texts != bench.build_workload(sample_docs, 384, seed=4).texts
    assert len(w.texts) == 384 and len(set(w.texts)) == 384
    assert (w.kinds.count("long"), w.kinds.count("short")) == (128, 256)
    assert w.langs.count("ja") == w.langs.count("en") == 192
    # short and long interleave instead of arriving as two blocks
    assert "long" in w.kinds[:40] and "short" in w.kinds[-40:]


def test_workload_lengths_hold_with_the_phase_tag(sample_docs) -> None:
    w = bench.build_workload(sample_docs, 300)
    for text, kind in zip(bench.tag(w.texts, 42), w.kinds, strict=True):
        low, high = bench.SHORT_CHARS if kind == "short" else bench.LONG_CHARS
        assert low <= len(text) <= high, (kind, len(text), text)
    described = w.describe()
    assert described["texts"] == 300 and described["short"] + described["long"] == 300
    assert described["mean_chars_short"] < 60 < 400 < described["mean_chars_long"]


def test_tiny_corpus_still_gives_unique_texts_of_the_right_size() -> None:
    w = bench.build_workload(["One short sentence about idempotency keys."], 20, seed=1)
    assert len(set(w.texts)) == 20
    assert set(w.langs) == {"en"}
    assert all(len(t) >= 400 for t, k in zip(w.texts, w.kinds, strict=True) if k == "long")


def test_workload_without_usable_text_is_an_error() -> None:
    with pytest.raises(ValueError, match="no usable sentences"):
        bench.build_workload(["# a", "|---|---|"], 5)
    with pytest.raises(ValueError):
        bench.build_workload(["Some text that is long enough."], 0)


def test_phase_tags_make_every_phase_its_own_texts() -> None:
    texts = ["alpha beta gamma", "delta epsilon"]
    assert bench.tag(texts, 1) == ["alpha beta gamma #01", "delta epsilon #01"]
    assert not set(bench.tag(texts, 1)) & set(bench.tag(texts, 10))
    with pytest.raises(ValueError):
        bench.tag(texts, 100)


def test_clean_sentence_and_clip() -> None:
    assert bench.clean_sentence("## 2. Heading  with\tspace") == "Heading with space"
    assert bench.clean_sentence("- item | cell |") == "item cell"
    assert bench.clip("the quick brown fox jumps", 12, 5) == "the quick"
    assert bench.clip("受注を登録すること。", 5, 3) == "受注を登録"
    assert bench.clip("short", 10, 3) == "short"


def test_read_source_beir_corpus_and_folder(tmp_path: Path) -> None:
    rows = [
        {"_id": "1", "title": "t", "text": "最初の文書。"},
        {"_id": "2", "text": ""},
        {"_id": "3", "text": "B."},
    ]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n")
    texts, source = bench.read_source(corpus)
    assert texts == ["最初の文書。", "B."] and "BEIR" in source
    assert bench.read_source(tmp_path)[0] == texts  # the folder holding it
    docs, source = bench.read_source(SAMPLE_DOCS)
    assert len(docs) == 6 and "6 documents" in source
    with pytest.raises(ValueError):
        bench.read_source(tmp_path / "corpus.jsonl.missing")


@pytest.mark.parametrize(
    ("spec", "levels"), [("1,8,32,64", [1, 8, 32, 64]), (" 4 ", [4]), ("2,16,", [2, 16])]
)
def test_parse_levels(spec: str, levels: list[int]) -> None:
    assert bench.parse_levels(spec) == levels


@pytest.mark.parametrize("spec", ["", "0", "1,1", "a,2", "2000"])
def test_parse_levels_rejects(spec: str) -> None:
    with pytest.raises(ValueError):
        bench.parse_levels(spec)


# --------------------------------------------------------------------------------------------------
# Figures


def test_numeric_delta_through_histograms_and_nested_counters() -> None:
    before = {"batch_sizes": {1: 4, 8: 2}, "forward_batches": 10, "cache": {"hits": 1}, "model": "m"}
    after = {"batch_sizes": {1: 4, 8: 5, 32: 3}, "forward_batches": 19, "cache": {"hits": 4}, "model": "m"}
    delta = bench.numeric_delta(before, after)
    assert delta == {
        "batch_sizes": {"8": 3, "32": 3},  # the unchanged size-1 bucket is dropped
        "forward_batches": 9,
        "cache": {"hits": 3},
        "model": "m",
    }
    assert bench.numeric_delta({}, {"n": 2}) == {"n": 2}
    assert bench.histogram_mean(delta["batch_sizes"]) == pytest.approx(20.0)
    assert bench.histogram_mean({}) is None and bench.histogram_mean({"4": 0}) is None


def _level(concurrency: int, rate: float | None, errors: int = 0) -> dict:
    return {
        "concurrency": concurrency,
        "texts_per_s": rate,
        "tokens_per_s": None if rate is None else rate * 100,
        "errors": errors,
        "latency_ms": {"p50": 12.0, "p95": 30.5, "p99": 41.25},
        "batch": {"source": "stats", "mean": 7.5, "other_stats": {"busy_s": 4.8}},
        "texts": 96,
    }


def _report() -> dict:
    return bench.build_report(**_report_args())


def _report_args() -> dict:
    return dict(
        command="specrag bench embed --texts 96",
        machine={"device": "cpu", "dtype": "float32", "cpu_count": 2, "torch": "2.13.0", "ray": "2.60.0"},
        model={"id": "m3-test"},
        settings={"max_batch_size": 32, "batch_wait_timeout_s": 0.01, "torch_threads": 2},
        workload={
            "texts": 96,
            "short": 64,
            "long": 32,
            "langs": {"en": 48, "ja": 48},
            "mean_chars": 300.0,
            "mean_tokens": 90.0,
            "source": "samples",
        },
        in_process={
            "texts_per_s": 40.0,
            "tokens_per_s": 3600.0,
            "mean_batch": 32.0,
            "seconds": 2.4,
            "texts": 96,
        },
        levels=[_level(1, 10.0), _level(16, 34.0, errors=1), _level(64, None)],
        cache_hit={
            "serve": {"hit_ms": None, "reason": "no redis"},
            "engine": {"latency_ms": 0.05, "repeats": 50},
        },
        timestamp="2026-01-01T00:00:00+00:00",
    )


def test_build_report_ratios_and_best_level() -> None:
    report = _report()
    ratios = [lv["ratio"] for lv in report["serve"]["levels"]]
    assert ratios == [0.25, 0.85, None]
    assert report["serve"]["best"] == {"concurrency": 16, "texts_per_s": 34.0, "ratio": 0.85}
    assert report["serve"]["batch_sizes"]["16"]["mean"] == 7.5
    json.dumps(report)  # JSON-able as it is
    assert "0.85 × in-process" in bench.summary_line(report)


def test_tables_have_a_row_per_level_and_the_baseline() -> None:
    report = _report()
    table = bench.format_table(report).splitlines()
    assert len(table) == 2 + 1 + 3
    assert table[0].split()[0] == "path" and "in-process" in table[2]
    md = bench.markdown_table(report).splitlines()
    assert md[0].startswith("| path | concurrency | texts/s")
    assert md[4] == "| Serve HTTP | 16 | 34.0 | 3,400 | 0.85 | 12.0 | 30.5 | 41.2 | 1 | 7.5 | 50.0 |"
    assert md[5].startswith("| Serve HTTP | 64 | – |")
    assert md[2].endswith("| 32.0 | 25.0 |"), "in-process: its seconds per text"


def test_reference_runs_get_rows_and_ratios_between_the_baseline_and_the_levels() -> None:
    report = _report()
    assert report["references"] == {}
    refs = {
        "one_per_call": {
            "texts_per_s": 36.0,
            "tokens_per_s": 3240.0,
            "mean_batch": 1.0,
            "seconds": 2.667,
            "texts": 96,
        },
        "beside_idle_stack": {
            "texts_per_s": 34.0,
            "tokens_per_s": 3060.0,
            "mean_batch": 32.0,
            "seconds": 2.8,
            "texts": 96,
        },
    }
    report = bench.build_report(**{**_report_args(), "references": refs})
    assert report["references"]["one_per_call"]["ratio"] == 0.9
    assert report["references"]["beside_idle_stack"]["ratio"] == 0.85
    md = bench.markdown_table(report).splitlines()
    assert md[3] == "| in-process, 1 text per call | – | 36.0 | 3,240 | 0.90 | – | – | – | 0 | 1.0 | 27.8 |"
    assert md[4].startswith("| in-process beside idle Ray + Serve | – | 34.0 |")
    assert md[5].startswith("| Serve HTTP | 1 |")
    assert "Reference rows" in bench.markdown_section(report, "e.json")
    assert "Reference rows" not in bench.markdown_section(_report(), "e.json")


def test_markdown_section_carries_command_table_and_markers() -> None:
    section = bench.markdown_section(_report(), "docs/benchmarks/embed.json")
    assert section.startswith(bench.MARK_START) and section.endswith(bench.MARK_END)
    assert "```bash\nspecrag bench embed --texts 96\n```" in section
    assert "| in-process | – | 40.0 |" in section
    assert "not measured (no redis)" in section and "median 0.05 ms" in section


def test_sections_per_texts_per_request_coexist() -> None:
    one = "\n".join([*bench.markers(1)[:1], "one", bench.markers(1)[1]])
    four = "\n".join([bench.markers(4)[0], "four", bench.markers(4)[1]])
    doc = replace_section(replace_section("", one), four)
    doc = replace_section(doc, one.replace("one", "ONE"))
    assert "ONE" in doc and "four" in doc and "one\n" not in doc


def test_a_model_shape_keeps_a_section_of_its_own() -> None:
    assert bench.markers(1, "bge-m3") == (
        "<!-- bench:embed-bge-m3-shape:start -->",
        "<!-- bench:embed-bge-m3-shape:end -->",
    )
    assert bench.markers(4, "bge-m3")[0] == "<!-- bench:embed-x4-bge-m3-shape:start -->"
    assert bench.markers(1) == (bench.MARK_START, bench.MARK_END)
    args = _report_args()
    args["settings"] = args["settings"] | {"model_shape": "bge-m3"}
    section = bench.markdown_section(bench.build_report(**args), "e.json")
    assert section.startswith(bench.markers(1, "bge-m3")[0])
    assert "## Embedding throughput — Serve HTTP vs in-process, BGE-M3's shape (random weights)" in section


def test_a_model_shape_needs_a_local_tokenizer_before_anything_runs(tmp_path: Path) -> None:
    settings = Settings(model={"name_or_path": "BAAI/bge-m3"})
    options = bench.EmbedBenchOptions(source=SAMPLE_DOCS, model_shape="bge-m3", out=tmp_path / "e.json")
    with pytest.raises(bench.ShapeWithoutTokenizer, match="local model directory"):
        bench.run_embed_bench(settings, options)
    assert not (tmp_path / "e.json").exists()


def test_reconstructed_command_hides_the_redis_url() -> None:
    options = bench.EmbedBenchOptions(
        source=SAMPLE_DOCS,
        texts=96,
        concurrency=[1, 16],
        redis_url="redis://:pw@h:1/0",
        out=Path("/tmp/e.json"),
    )
    command = bench.reconstruct_command(options)
    assert command.startswith("specrag bench embed --texts 96 --concurrency 1,16")
    assert "pw" not in command and "--out /tmp/e.json" in command


# --------------------------------------------------------------------------------------------------
# Load generator against a fake endpoint


def _fake_embedder(delay_s: float = 0.0, fail_every: int = 0):
    state = {"active": 0, "peak": 0, "calls": 0}

    async def handler(request: httpx.Request) -> httpx.Response:
        state["calls"] += 1
        call = state["calls"]
        state["active"] += 1
        state["peak"] = max(state["peak"], state["active"])
        try:
            await asyncio.sleep(delay_s)
            body = json.loads(request.content)
            assert body["input_type"] == "passage" and len(body["input"]) == 1
            if fail_every and call % fail_every == 0:
                return httpx.Response(503, json={"error": "embedder unavailable"})
            return httpx.Response(200, json={"usage": {"prompt_tokens": 7}})
        finally:
            state["active"] -= 1

    return httpx.MockTransport(handler), state


def test_drive_bounds_concurrency_and_counts_errors() -> None:
    transport, state = _fake_embedder(delay_s=0.005, fail_every=5)
    result = asyncio.run(
        bench.drive(
            "http://x/v1/embed",
            [f"t{i}" for i in range(20)],
            4,
            timeout_s=5,
            max_seconds=30,
            transport=transport,
        )
    )
    figures = result.as_dict()
    assert state["peak"] == 4 and figures["requests"] == 20
    assert figures["errors"] == 4 and figures["error_kinds"] == {"HTTP 503": 4}
    assert figures["ok"] == 16 and result.tokens == 16 * 7 and figures["tokens_per_s"] > 0
    assert figures["latency_ms"]["p50"] >= 5.0 and not figures["stopped_early"]


def test_drive_stops_after_max_seconds() -> None:
    transport, _ = _fake_embedder(delay_s=0.05)
    result = asyncio.run(
        bench.drive(
            "http://x/v1/embed",
            [f"t{i}" for i in range(200)],
            2,
            timeout_s=5,
            max_seconds=0.2,
            transport=transport,
        )
    )
    figures = result.as_dict()
    assert figures["stopped_early"] and 2 <= figures["requests"] < 200 and figures["planned"] == 200


# --------------------------------------------------------------------------------------------------
# Batch figures and CPU contention


def test_batch_from_stats_separates_histograms_from_other_counters() -> None:
    before = {"batch_sizes": {1: 2}, "forward_batches": {1: 2}, "cache": {"misses": 2, "redis": "disabled"}}
    after = {
        "batch_sizes": {1: 3, 4: 2},
        "forward_batches": {1: 3, 4: 2},
        "cache": {"misses": 11, "redis": "disabled"},
    }
    figures = bench.batch_from_stats(before, after)
    assert figures["source"] == "stats" and figures["batches"] == 3 and figures["mean"] == 3.0
    assert figures["batch_sizes"] == {"1": 1, "4": 2} and figures["forward_batches"] == {"1": 1, "4": 2}
    assert figures["other_stats"] == {"cache": {"misses": 9, "redis": "disabled"}}
    assert bench.batch_from_stats(None, {"forward_batches": 5})["mean"] is None


def test_proc_parsers() -> None:
    stat = "cpu  100 5 50 1000 20 3 2 7 0 0\ncpu0 50 2 25 500 10 1 1 3 0 0\n"
    assert bench.parse_cpu_line(stat) == (160, 7, 1187)
    pid_stat = "123 (ray::Serve Replica) S 45 123 123 0 -1 4194560 1 0 0 0 700 300 11 22 20 0 3 0"
    assert bench.parse_pid_stat(pid_stat) == (45, 1000, 33)


def test_contention_notes_name_the_skewed_phases() -> None:
    quiet = {"busy": 0.99, "other": 0.01, "steal": 0.0}
    noisy = {"busy": 1.0, "other": 0.4, "steal": 0.0}
    notes = bench.contention_notes({"cpu": quiet}, [{"concurrency": 8, "cpu": noisy}, {"concurrency": 1}])
    assert notes == [
        "concurrency 8: 40% of the CPUs busy outside this benchmark, 0% stolen; its figures are skewed"
    ]
    assert bench.contention_notes({"cpu": None}, []) == []


def test_cpu_meter_sees_this_process_working() -> None:
    meter = bench.CpuMeter()
    deadline = time.perf_counter() + 0.3
    while time.perf_counter() < deadline:
        pass
    figures = meter.stop()
    if figures is None:  # not Linux
        pytest.skip("no /proc")
    assert 0 < figures["busy"] <= 1 and 0 <= figures["other"] <= figures["busy"]


# --------------------------------------------------------------------------------------------------
# Fan-out benchmark (bench search) against a fake retriever


class _FakeStore:
    def __init__(self) -> None:
        self.calls = 0

    def hybrid_search(self, dense, sparse, *, limit, rrf_k, weights_dense_sparse):
        self.calls += 1
        return [{"id": "d"}] * 3


class _FakeRetriever:
    """``search`` reports the call count as its ANN time (gather) or a constant (sequential); its
    answer has only the ``timings_ms`` the benchmark reads (``core.contracts.Fanout``)."""

    def __init__(self) -> None:
        self.settings = SimpleNamespace(overfetch=2, rrf_k=60, sparse_weight=0.5)
        self.store = _FakeStore()
        self.calls = {"gather": 0, "sequential": 0}

    async def search(self, batch, *, top_k, limit, parallel):
        mode = "gather" if parallel else "sequential"
        self.calls[mode] += 1
        ann = float(self.calls[mode]) if parallel else 9.0
        return SimpleNamespace(timings_ms={"search": ann, "versions": 0.5, "fuse": 0.25})


def test_search_bench_reports_linear_interpolation_percentiles() -> None:
    from serve_app.devtools.bench import search

    retriever = _FakeRetriever()
    vectors = [{"dense": [0.0], "sparse": {}} for _ in range(8)]
    report = search.run_search_bench(retriever, vectors, requests=4, variants=2, echo=lambda _: None)
    assert report["requests"] == 4 and report["searches_per_request"] == 4
    assert retriever.calls == {"gather": 6, "sequential": 6}  # two warm-up rounds, then 4 timed
    assert retriever.store.calls == 6 * 2  # one hybrid_search per variant
    # gather's ANN times of the timed rounds are 3, 4, 5, 6: the median is 4.5 (nearest rank said 5)
    assert report["gather"]["stage1_p50_ms"] == 4.5
    assert report["sequential"]["stage1_p50_ms"] == 9.0
    assert report["sequential_over_gather"] == 2.0
    assert report["gather_stage2_p50_ms"] == 0.75
    assert report["machine"] == common.machine_description()
    assert "p95_ms" in report["hybrid_search"] and report["hybrid_search"]["p50_ms"] >= 0


def test_search_bench_percentile_is_the_shared_one() -> None:
    from serve_app.devtools.bench import search

    assert search._pct([1.0, 2.0, 3.0, 4.0], 50) == 2.5 == common.percentile([1.0, 2.0, 3.0, 4.0], 50)
    assert search._pct([10.0, 20.0], 95) == pytest.approx(19.5)
    with pytest.raises(ValueError):
        search._pct([], 50)


def test_embed_and_load_figures_use_the_shared_percentiles() -> None:
    from serve_app.devtools.reliability import load

    assert bench.percentile is common.percentile
    assert bench.latency_summary is load.latency_summary is common.latency_summary


def test_embed_report_machine_starts_with_the_shared_facts() -> None:
    machine = bench._machine({"device": "cpu", "dtype": "float32", "torch_threads": 2}, 0.1, [0.5, 0.4, 0.3])
    assert {k: machine[k] for k in common.machine_facts()} == common.machine_facts()
    assert machine["device"] == "cpu" and machine["cpu_busy_before_run"] == 0.1
    assert {"torch", "ray", "loadavg_before_run"} <= set(machine)
