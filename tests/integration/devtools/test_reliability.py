"""The reliability scenarios on the real stack (Ray Serve, Milvus Lite server, redis-server, the
offline model, a real HTTP LLM endpoint), with short loads; ``specrag reliability run`` runs the
same functions longer for docs/RELIABILITY.md.

Each scenario checks what can fail: no 5xx but a reasoned 503 whose body names the cause in one
line (no traceback, pid, node IP, colours) under the request's id, no hang, errors only while the
fault lasts, recovery, and every acknowledged write read back by GET and by search.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from serve_app.devtools.local_stack import free_port
from serve_app.devtools.reliability import scenarios
from serve_app.devtools.reliability.fuzz import bad_inputs, schemathesis_run
from serve_app.devtools.reliability.stack import Stack, deploy, ingest_samples, stack_settings
from serve_app.settings import Settings
from serve_app.testing.fakellm import FakeLLM

pytestmark = pytest.mark.integration

DURATION_S, RATE = 12.0, 1.0


@pytest.fixture(scope="module")
def stack(ray_local, model_dir: Path, milvus: dict, redis_server: dict) -> Iterator[Stack]:
    from ray import serve

    with FakeLLM(mode="ok") as llm:
        settings = stack_settings(
            Settings(model={"name_or_path": str(model_dir)}),
            milvus_uri=milvus["uri"],
            redis_url=redis_server["url"],
            llm_url=llm.url,
            port=free_port(),
        )
        running = Stack(
            deploy(settings, "reliability"),
            settings,
            milvus["process"],
            redis_server["process"],
            llm,
            "reliability",
        )
        try:
            with running.client() as client:
                assert ingest_samples(client) > 3
            yield running
        finally:
            # The next module starts Serve's proxy on its own port: this one must go.
            serve.shutdown()


def _passed(result: dict) -> None:
    failed = [name for name, ok in result["checks"].items() if not ok]
    assert result["passed"], f"{result['scenario']}: {failed}; {result['summary']['error_reasons']}"


def test_mixed_load_without_faults(stack: Stack) -> None:
    result = scenarios.baseline(stack, DURATION_S, RATE)
    _passed(result)
    assert result["acknowledged_writes"] > 0 and result["searched_back"] > 0


def test_redis_killed_and_restarted_under_load(stack: Stack) -> None:
    _passed(scenarios.redis_outage(stack, DURATION_S, RATE))


def test_milvus_killed_is_503_with_reason_then_recovers_and_loses_nothing(stack: Stack) -> None:
    result = scenarios.milvus_outage(stack, 18.0, RATE)
    _passed(result)
    assert "\n" not in result["detail_while_down"] and "Milvus" in result["detail_while_down"]


def test_expander_down_slow_and_garbage(stack: Stack) -> None:
    result = scenarios.expander_faults(stack, 20.0, RATE)
    _passed(result)


def test_embedder_replica_killed_under_load(stack: Stack) -> None:
    _passed(scenarios.embedder_replica_killed(stack, DURATION_S, RATE))


def test_the_ingress_replica_killed_under_load_fails_only_the_requests_it_held(stack: Stack) -> None:
    _passed(scenarios.ingress_replica_killed(stack, DURATION_S, RATE))


def test_ingest_killed_mid_way_serves_no_half_written_version(stack: Stack) -> None:
    result = scenarios.ingest_interrupted(stack, 8.0, RATE, docs=24)
    _passed(result)
    assert result["whole_documents"] == 24


def test_hostile_inputs_get_4xx_with_reasons_never_5xx(stack: Stack) -> None:
    report = bad_inputs(stack.base_url, stack.model_name, body_limit=stack.settings.limits.max_body_bytes)
    cases = report["cases"]
    bad = [c for c in cases if c["status"] != c["expected"] or (c["status"] >= 400 and not c["reason"])]
    assert report["passed"] and not bad, (report["summary"], bad)
    reasons = {c["case"]: c["reason"] for c in report["cases"]}
    assert "UTF-8" in reasons["invalid UTF-8 body"], reasons


def test_schemathesis_finds_no_server_error_and_no_answer_the_document_does_not_declare(
    stack: Stack, tmp_path: Path
) -> None:
    """CI's short run (8 cases per operation and phase); ``specrag reliability fuzz`` runs
    over 2,000 for docs/RELIABILITY.md."""
    report = schemathesis_run(stack.base_url, max_examples=8, workdir=tmp_path)
    assert report["cases"] > 50
    assert report["non_conforming"] == 0 and report["server_errors"] == 0, report["failures"]
    assert report["passed"], (report["failures"], report["errors"], report["output_tail"])
