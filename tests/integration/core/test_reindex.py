"""Full re-embed jobs against a real Milvus Lite server, real Ray Data and the offline model.

The job runs as its own process (``python -m jobs.reembed``), as ``ray job submit`` would run it,
so it can be killed for real.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serve_app.core.embedding import EmbeddingService
from serve_app.core.ingest import Ingestor, SourceDocument
from serve_app.core.meta import MetaStore
from serve_app.core.reindex import sync_documents
from serve_app.core.store import MilvusStore
from serve_app.settings import ChunkSettings, Settings
from serve_app.testing.doubles import HashEncoder
from serve_app.testing.labelled import write_labelled_set

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[3]
TOPICS = ["rate limits", "token lifetime", "inventory holds", "webhook retries", "audit logs"]


def _docs(n: int, prefix: str = "doc") -> list[SourceDocument]:
    out = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        text = (
            f"# {topic.title()} {i}\n\nSection {i} describes {topic} for service {i}. "
            f"The limit for tenant {i} is {i * 10} units per minute.\n\n"
            f"## Details {i}\n\nOperators change {topic} {i} through the admin API; "
            f"changes apply within {i} s."
        )
        out.append(SourceDocument(doc_id=f"{prefix}{i}", text=text, title=f"{topic} {i}", kind="spec"))
    return out


def _env(milvus: dict, model_dir: Path, collection: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPECRAG_")}
    env.update(
        SPECRAG_MILVUS_URI=milvus["uri"],
        SPECRAG_MODEL_PATH=str(model_dir),
        SPECRAG_MILVUS__COLLECTION=collection,
        SPECRAG_INGEST__STATUS_EVERY_S="0.2",
        SPECRAG_REINDEX__LEASE_S="2",  # the killed job's lease runs out quickly
        PYTHONPATH=str(ROOT),
        **extra,
    )
    return env


def _job(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.reembed", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait_state(meta: MetaStore, alias: str, pred, proc: subprocess.Popen, timeout_s: float = 240) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = meta.get("reindex", alias) or {}
        if pred(state):
            return state
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"job ended ({proc.returncode}) before the expected state {state}:\n{err[-3000:]}")
        time.sleep(0.1)
    pytest.fail(f"state not reached in {timeout_s} s: {meta.get('reindex', alias)}")


@pytest.fixture(scope="module")
def model_settings(model_dir: Path, milvus: dict) -> Settings:
    return Settings(model={"name_or_path": str(model_dir)}, milvus={"uri": milvus["uri"]})


def _ingestor(settings: Settings, store: MilvusStore, service: EmbeddingService) -> Ingestor:
    return Ingestor(
        service.embed_texts, store, settings.chunk, model_key=service.encoder.model_key, meta=MetaStore(store)
    )


def test_killed_job_leaves_alias_then_rerun_resumes_and_keeps_concurrent_upserts(
    milvus: dict, model_dir: Path, model_settings: Settings
):
    alias = "reembed_kill"
    service = EmbeddingService.from_settings(model_settings)
    store = MilvusStore(milvus["uri"], alias, service.dim)
    ingestor = _ingestor(model_settings, store, service)
    assert ingestor.ingest(_docs(24)).added == 24
    original = store.resolve()
    meta = MetaStore(store)
    env = _env(milvus, model_dir, alias)

    # 1. kill -9 in the middle of the build: the alias must not move.
    first = _job(env, "--local", "--batch-size", "4")
    state = _wait_state(meta, alias, lambda s: s.get("phase") == "building" and s.get("done", 0) >= 8, first)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(10)
    assert store.resolve() == original, "a killed job never touches the alias"
    target = state["target"]
    partial = store.count(on=target)
    assert 0 < partial < store.count(), "the kill came mid-build"

    # 2. re-run on Ray Data once the dead job's lease ran out; it resumes the same target.
    # Meanwhile: update, add, delete.
    time.sleep(2.5)
    second = _job(env, "--ray", "--batch-size", "4")
    _wait_state(meta, alias, lambda s: s.get("target") == target and s.get("phase") == "building", second)
    updated = _docs(1)[0]
    updated.text += "\n\nNew paragraph: the limit for tenant 0 was raised to 999 units per minute."
    report = ingestor.ingest([updated, *_docs(1, prefix="added")])
    assert report.updated == 1 and report.added == 1
    assert ingestor.delete_documents(["doc1"]).deleted == 1
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["phase"] == "done" and result["target"] == target
    assert result["embedded"] < result["chunks"], "resumed: chunks written before the kill were kept"
    assert result["validation"]["top1_agreement"] >= 0.9

    assert store.resolve() == target, "the alias moved to the validated collection"
    versions = store.doc_versions()
    assert "doc1" not in versions, "a delete made during the re-embed is not undone"
    assert "added0" in versions, "a document added during the re-embed is present"
    assert versions["doc0"][0] == 2
    texts = [r["text"] for r in store.query('doc_id == "doc0"', fields=["text"])]
    assert any("999 units" in t for t in texts), "an update made during the re-embed is present"
    assert len(versions) == 24, "24 - 1 deleted + 1 added"
    assert original in store.physical_collections(), "the previous collection is kept for rollback"


def test_model_change_needs_a_labelled_comparison(
    milvus: dict, model_dir: Path, model_settings: Settings, tmp_path
):
    alias = "reembed_upgrade"
    service = EmbeddingService.from_settings(model_settings)
    store = MilvusStore(milvus["uri"], alias, service.dim)
    _ingestor(model_settings, store, service).ingest(_docs(10))
    original = store.resolve()
    # A different max_length is another vector space as far as collections are concerned.
    env = _env(milvus, model_dir, alias, SPECRAG_MODEL__MAX_LENGTH="256")
    refused = subprocess.run(
        [sys.executable, "-m", "jobs.reembed", "--local"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert refused.returncode == 4, refused.stderr[-2000:]
    assert "--eval" in json.loads(refused.stdout.strip().splitlines()[-1])["validation"]["reason"]
    assert store.resolve() == original, "no switch without the comparison"

    # A labelled set in BEIR layout whose doc ids are in the collection.
    data = write_labelled_set(
        tmp_path / "labelled", [(f"q{i}", f"What is the limit for tenant {i}?", f"doc{i}") for i in range(10)]
    )
    upgraded = subprocess.run(
        [sys.executable, "-m", "jobs.reembed", "--local", "--eval", str(data)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert upgraded.returncode == 0, upgraded.stderr[-3000:]
    result = json.loads(upgraded.stdout.strip().splitlines()[-1])
    assert result["validation"]["ndcg_ratio"] >= 1.0 and result["phase"] == "done"
    assert store.resolve() == result["target"] != original
    assert store.model_of().endswith("|256")


def test_post_switch_sync_keeps_newer_writes_and_applies_late_deletes(milvus: dict):
    """The copy after a switch: the old collection's late writes arrive, newer writes stay."""
    dim = 32
    embed = EmbeddingService(HashEncoder(dim)).embed_texts
    chunks = ChunkSettings()
    old = MilvusStore(milvus["uri"], "sync_old", dim)
    new = MilvusStore(milvus["uri"], "sync_new", dim)
    for store in (old, new):
        Ingestor(embed, store, chunks, model_key="h").ingest(
            [SourceDocument("same", "Unchanged."), SourceDocument("late", "v1"), SourceDocument("gone", "x")]
        )
    time.sleep(1.1)  # updated_at has whole seconds
    switched_at = int(time.time())
    time.sleep(1.1)
    Ingestor(embed, old, chunks, model_key="h").ingest([SourceDocument("late", "v2 written late to old")])
    Ingestor(embed, old, chunks, model_key="h").delete_documents(["gone"])
    Ingestor(embed, new, chunks, model_key="h").ingest([SourceDocument("fresh", "written after the switch")])
    Ingestor(embed, new, chunks, model_key="h").delete_documents(["same"])  # deleted after the switch
    # "gone" still in new, written before the switch: deleted; "fresh" only in new, newer: kept;
    # "same" is in old only because it was deleted from new after the switch: not copied back.
    synced = sync_documents(
        old,
        old.resolve(),
        new,
        new.resolve(),
        same_model=True,
        embed=None,
        delete_before=switched_at,
        tombstones={"same": {"at": time.time()}},
    )
    assert synced == {"documents_copied": 1, "chunks_copied": 1, "documents_deleted": 1}
    versions = new.doc_versions()
    assert set(versions) == {"late", "fresh"} and versions["late"][0] == 2
    assert "late to old" in new.query('doc_id == "late"', fields=["text"])[0]["text"]
