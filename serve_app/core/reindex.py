"""Full re-embed: every current chunk into a fresh physical collection, validated, switched in by alias.

Phases (recorded in the meta store under ``reindex:<alias>``, so ``--status`` sees them anywhere)

1. ``building``: the live collection's current chunks are embedded (Ray Data actor pool, or in
   this process) and written to a new physical collection. A killed job leaves the alias alone;
   the next run finds the unfinished target and embeds only the chunks it lacks.
2. ``catching_up``: documents written, updated or deleted in the live collection since the build
   read it are copied over (vectors reused when the model is the same), until nothing is left.
3. ``validating``: every document's newest version and chunk count must match; then either the
   same model's sampled queries must return the same top result (``min_top1_agreement``), or a
   new model must reach ``min_ndcg_ratio`` of the live nDCG@10 on a labelled set.
4. ``switched``: the alias moves atomically; writes that landed in the old collection meanwhile
   are copied after the switch (writers also re-apply a batch themselves when they see the alias
   move), so an upsert made during a re-embed is never lost. The old collection is kept for
   ``specrag rollback``.

Nothing switches on failed validation; the job ends ``not_switched`` with the reason.
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serve_app.core.meta import MetaStore
from serve_app.core.retrieval import passage_text
from serve_app.core.store import (
    SCALAR_FIELDS,
    ChunkRecord,
    FilterArg,
    MilvusStore,
    chunk_ids_filter,
    doc_ids_filter,
    doc_version_filter,
    first_chunks_filter,
    make_store,
)
from serve_app.settings import Settings

log = logging.getLogger(__name__)

ACTIVE = ("building", "catching_up", "validating", "switching")
RESUMABLE = (*ACTIVE, "interrupted", "not_switched", "validated")  # a re-run continues these targets


class ReindexError(RuntimeError):
    """The job cannot go on (e.g. another job is running); the live alias is untouched."""


@dataclass(slots=True)
class ReindexOptions:
    model_path: str | None = None  # another model (upgrade); None = the configured one
    switch: bool = True
    restart: bool = False  # drop an unfinished target instead of resuming it
    use_ray: bool = True
    actors: int | None = None
    num_gpus: float | None = None
    batch_size: int = 64
    eval_dir: Path | None = None
    eval_queries: int = 200
    seed: int = 0


@dataclass(slots=True)
class ReindexResult:
    job_id: str
    phase: str
    target: str
    previous: str | None = None
    chunks: int = 0
    embedded: int = 0
    failed: int = 0
    seconds: float = 0.0
    embed_seconds: float = 0.0
    validation: dict[str, Any] = field(default_factory=dict)
    message: str = ""

    @property
    def chunks_per_s(self) -> float:
        return self.embedded / self.embed_seconds if self.embed_seconds else 0.0


# ------------------------------------------------------------------------------------- embedding


def model_settings(settings: Settings, model_path: str | None) -> Settings:
    """The settings with another model (an upgrade) and without the query cache (useless here)."""
    update: dict[str, Any] = {"redis": settings.redis.model_copy(update={"url": None, "lru_items": 0})}
    if model_path:
        update["model"] = settings.model.model_copy(update={"name_or_path": model_path})
    return settings.model_copy(update=update)


class EmbedWriter:
    """Embeds a batch of chunk rows and writes them into the target collection.

    The Ray Data actor (one model per actor) and the in-process path are this same class, so the
    benchmark compares like with like.
    """

    def __init__(self, settings: Settings, target: str, num_threads: int = 0) -> None:
        from serve_app.core.embedding import EmbeddingService

        if num_threads:
            settings = settings.model_copy(
                update={"model": settings.model.model_copy(update={"num_threads": num_threads})}
            )
        self.service = EmbeddingService.from_settings(settings)
        self.settings = settings
        m = settings.milvus
        self.store = MilvusStore(
            m.uri,
            m.collection,
            self.service.dim,
            token=m.token.get_secret_value() if m.token else None,
            timeout_s=max(m.timeout_s, 30.0),
        )
        self.target = target

    def __call__(self, batch: dict[str, Any] | list[dict[str, Any]]) -> dict[str, Any]:
        from serve_app.core.ingest import embed_resilient

        rows = _rows(batch)
        texts = [passage_text(r) for r in rows]
        vectors = embed_resilient(
            self.service.embed_texts,
            texts,
            batch_size=self.settings.batch.encode_batch_size,
            settings=self.settings.ingest,
        )
        records, failed, errors = [], [], []
        for row, vec in zip(rows, vectors, strict=True):
            if isinstance(vec, str):
                failed.append(row["chunk_id"])
                errors.append(vec)
                continue
            records.append(_record(row, vec[0], vec[1]))
        self.store.upsert(records, into=self.target)
        return {"written": [len(records)], "failed": [failed], "errors": [errors]}


def _rows(batch: dict[str, Any] | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ray Data hands columns (numpy arrays); the in-process path hands a list of row dicts."""
    if isinstance(batch, list):
        return batch
    names = list(batch)
    n = len(batch[names[0]]) if names else 0
    out = []
    for i in range(n):
        row = {}
        for name in names:
            value = batch[name][i]
            if isinstance(value, np.ndarray):
                value = value.tolist()
            elif isinstance(value, np.generic):
                value = value.item()
            row[name] = value
        out.append(row)
    return out


def _record(row: dict[str, Any], dense: Any, sparse: dict[int, float]) -> ChunkRecord:
    return ChunkRecord(
        **{name: row[name] for name in SCALAR_FIELDS if name in row},
        dense=dense,
        sparse=sparse,
    )


def embed_local(
    settings: Settings, rows: list[dict[str, Any]], target: str, *, batch_size: int
) -> Iterator[dict[str, Any]]:
    """Embed and write ``rows`` in this process, one ``EmbedWriter`` call per batch."""
    if not rows:
        return
    writer = EmbedWriter(settings, target)
    for start in range(0, len(rows), batch_size):
        yield writer(rows[start : start + batch_size])


def embed_ray(
    settings: Settings,
    rows: list[dict[str, Any]],
    target: str,
    *,
    batch_size: int,
    actors: int,
    num_gpus: float,
    resources: dict[str, float] | None = None,
) -> Iterator[dict[str, Any]]:
    """Embed and write ``rows`` with a Ray Data actor pool (one model per actor), streaming results.

    On GPU nodes each actor takes ``num_gpus``; on CPU each takes an equal share of the cores
    (torch threads set to match, since Ray starts workers with one thread). ``resources`` (custom
    ones) place the actors on the nodes started with them. Ray Data restarts an actor whose node
    died and retries its batches (writes are upserts by chunk id, so a retried batch is harmless).
    """
    import ray
    from ray.data import ActorPoolStrategy

    if not rows:
        return
    ray.data.DataContext.get_current().enable_progress_bars = os.isatty(2)
    if num_gpus:
        cpus, threads = 1.0, 0
    elif len([n for n in ray.nodes() if n.get("Alive")]) == 1:  # one machine: share its cores
        total = float(ray.cluster_resources().get("CPU", 1))
        cpus = max(1.0, (total - 1) // actors)  # one CPU left for reading and the driver
        threads = settings.model.num_threads or max(1, int(os.cpu_count() or 1) // actors)
    else:  # a CPU cluster: one logical CPU per actor, torch threads as configured
        cpus, threads = 1.0, settings.model.num_threads
    remote_args: dict[str, Any] = {"resources": dict(resources)} if resources else {}
    ds = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / batch_size)))
    out = ds.map_batches(
        EmbedWriter,
        fn_constructor_kwargs={"settings": settings, "target": target, "num_threads": threads},
        batch_size=batch_size,
        compute=ActorPoolStrategy(size=actors),
        num_gpus=num_gpus,
        num_cpus=cpus,
        batch_format="numpy",
        **remote_args,
    )
    for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
        yield {
            "written": [int(x) for x in batch["written"]],
            "failed": [list(x) for x in batch["failed"]],
            "errors": [list(x) for x in batch["errors"]],
        }


# ---------------------------------------------------------------------------------------- syncing


def newest_rows(store: MilvusStore, on: str, doc_ids: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Rows of each document's newest version in ``on`` (an older one may linger mid-update)."""
    versions = store.doc_versions(doc_ids, on=on)
    expr: FilterArg = None if doc_ids is None else doc_ids_filter(doc_ids)
    for page in store.iter_rows(expr, fields=list(SCALAR_FIELDS), batch_size=2000, on=on):
        for row in page:
            if versions.get(row["doc_id"], (None,))[0] == row["version"]:
                yield row


def sync_documents(
    src_store: MilvusStore,
    src: str,
    dst_store: MilvusStore,
    dst: str,
    *,
    same_model: bool,
    embed: Callable[[list[str]], tuple[np.ndarray, list]] | None,
    delete_before: int | None = None,
    tombstones: dict[str, dict[str, Any]] | None = None,
) -> dict[str, int]:
    """Make ``dst`` hold each document as ``src`` has it.

    Before a switch (``delete_before`` None) ``dst`` is written by nobody else: every difference
    is copied and documents only ``dst`` has are deleted. After a switch writers use ``dst`` too,
    so only versions newer than ``dst``'s are copied, documents deleted since (``tombstones``:
    doc_id -> {"at": unix s}) are not copied back, and documents only ``dst`` has are deleted only
    when last written before ``delete_before`` (unix s): those were deleted in the old collection
    after the build read them, while newer ones were written after the switch.
    """
    src_docs = src_store.doc_versions(on=src)
    dst_docs = dst_store.doc_versions(on=dst)
    exact = delete_before is None
    dead = {d: float(t.get("at", 0)) for d, t in (tombstones or {}).items()}
    changed = sorted(
        d
        for d, v in src_docs.items()
        if (d not in dst_docs or (v != dst_docs[d] if exact else v > dst_docs[d]))
        and dead.get(d, -1.0) < v[1]
    )
    removed = sorted(
        d
        for d, v in dst_docs.items()
        if d not in src_docs and (delete_before is None or v[1] < delete_before)  # None: exact
    )
    copied = 0
    for start in range(0, len(changed), 200):
        ids = changed[start : start + 200]
        rows = list(newest_rows(src_store, src, ids))
        if same_model:
            vectors: dict[str, tuple[Any, dict[int, float]]] = {}
            for i in range(0, len(rows), 1000):
                part = rows[i : i + 1000]
                for r in src_store.query(
                    chunk_ids_filter(r["chunk_id"] for r in part),
                    limit=len(part),
                    fields=["chunk_id", "dense", "sparse"],
                    on=src,
                ):
                    vectors[r["chunk_id"]] = (r["dense"], dict(r["sparse"]))
            records = [_record(r, *vectors[r["chunk_id"]]) for r in rows if r["chunk_id"] in vectors]
        else:
            assert embed is not None, "a model change needs an embed function to catch up"
            records = []
            for i in range(0, len(rows), 64):
                part = rows[i : i + 64]
                dense, sparse = embed([passage_text(r) for r in part])
                records += [_record(r, d, s) for r, d, s in zip(part, dense, sparse, strict=True)]
        dst_store.upsert(records, into=dst)
        copied += len(records)
        for doc_id in ids:
            version = src_docs[doc_id][0]
            # Before a switch also a stale newer version goes (a document deleted and re-added).
            dst_store.delete(expr=doc_version_filter(doc_id, version, op="!=" if exact else "<"), on=dst)
    deleted = 0
    for start in range(0, len(removed), 500):
        ids = removed[start : start + 500]
        deleted += dst_store.delete(expr=doc_ids_filter(ids), on=dst)
    if copied or deleted:
        dst_store.flush()
    return {"documents_copied": len(changed), "chunks_copied": copied, "documents_deleted": len(removed)}


def _fingerprint(store: MilvusStore, on: str) -> tuple[dict[str, int], Counter[tuple[str, int]]]:
    """doc_id -> newest version, and rows per (doc_id, version) of the newest versions."""
    versions = store.doc_versions(on=on)
    counts: Counter[tuple[str, int]] = Counter()
    for page in store.iter_rows("", fields=["doc_id", "version"], batch_size=5000, on=on):
        for r in page:
            if versions.get(r["doc_id"], (None,))[0] == r["version"]:
                counts[(r["doc_id"], r["version"])] += 1
    return {d: v for d, (v, _) in versions.items()}, counts


def _differing_docs(
    live_versions: dict[str, int],
    live_counts: Counter[tuple[str, int]],
    new_versions: dict[str, int],
    new_counts: Counter[tuple[str, int]],
) -> list[str]:
    """Documents whose rows per newest version differ, or that only one side has (``_fingerprint``'s)."""
    counts = set(live_counts.items()) ^ set(new_counts.items())  # ((doc_id, version), rows) on one side only
    return sorted({doc_id for (doc_id, _), _n in counts} | set(live_versions) ^ set(new_versions))


# ---------------------------------------------------------------------------------------- the job


class Reindexer:
    """Runs one re-embed of ``settings.milvus.collection``; see the module docstring for phases."""

    def __init__(self, settings: Settings, options: ReindexOptions, *, echo: Callable[[str], None] = print):
        self.settings = settings
        self.options = options
        self.echo = echo
        self.new_settings = model_settings(settings, options.model_path)
        # The live collection's dim is read from its schema, so an upgrade to another dim works.
        self.live = make_store(settings, 1)
        self.meta = MetaStore(self.live)
        self.state: dict[str, Any] = {}
        self._driver_service: Any = None
        self._lock = threading.Lock()
        self._live_service: Any = None

    # ---------------------------------------------------------------------------- bookkeeping

    def _save(self, **changes: Any) -> None:
        with self._lock:
            self.state.update(changes, updated_at=int(time.time()))
            self.meta.put("reindex", self.live.collection, dict(self.state))

    def _heartbeat(self, stop: threading.Event) -> None:
        """Keeps ``updated_at`` fresh through long phases, so a second job sees this one alive."""
        while not stop.wait(self.settings.reindex.lease_s / 3):
            try:
                self._save()
            except Exception:
                log.warning("reindex heartbeat failed", exc_info=True)

    def _new_service(self) -> Any:
        """The new model in this process (validation queries, catch-up embedding)."""
        if self._driver_service is None:
            from serve_app.core.embedding import EmbeddingService

            self._driver_service = EmbeddingService.from_settings(self.new_settings)
        return self._driver_service

    def _live_service_for_eval(self) -> Any:
        if self._live_service is None:
            from serve_app.core.embedding import EmbeddingService

            self._live_service = EmbeddingService.from_settings(model_settings(self.settings, None))
        return self._live_service

    def _dim_of(self, name: str) -> int:
        for f in self.live.describe(name).get("fields", []):
            if f.get("name") == "dense":
                params: dict[str, Any] = f.get("params") or {}
                return int(params["dim"])
        raise ReindexError(f"collection {name!r} has no dense field")

    def _store_for(self, dim: int) -> MilvusStore:
        return make_store(self.settings, dim)

    # ------------------------------------------------------------------------------------ run

    def run(self) -> ReindexResult:
        started = time.perf_counter()
        opts = self.options
        source = self.live.resolve()
        self.live = self._store_for(self._dim_of(source))  # searches on it must know its dim
        service = self._new_service()
        model_key = service.encoder.model_key
        target_store = self._store_for(service.dim)
        live_model = self.live.model_of(source)
        same_model = (
            live_model == model_key or (live_model is None and opts.model_path is None)
        ) and self._dim_of(source) == service.dim
        previous_state = self.meta.get("reindex", self.live.collection) or {}
        quiet_s = time.time() - previous_state.get("updated_at", 0)
        if (
            previous_state.get("phase") in ACTIVE
            and quiet_s < self.settings.reindex.lease_s
            and not opts.restart
        ):
            raise ReindexError(
                f"job {previous_state.get('job_id')} is running ({previous_state.get('phase')}, last"
                f" heartbeat {quiet_s:.0f} s ago); wait for it, or pass --restart if it is dead"
            )
        if previous_state.get("phase") == "switching" and source == previous_state.get("target"):
            # Killed between the switch and its bookkeeping: finish the copy of late writes.
            self.state = previous_state
            return self._after_switch(
                ReindexResult(job_id=previous_state["job_id"], phase="switched", target=source),
                previous_state["source"],
                target_store,
                same_model=previous_state.get("same_model", True),
                switched_at=int(previous_state.get("switched_at", time.time())),
                started=started,
            )
        target = None
        if previous_state.get("phase") in RESUMABLE and previous_state.get("target") != source:
            old_target = previous_state["target"]
            if old_target in self.live.physical_collections():
                if opts.restart or previous_state.get("model_key") != model_key:
                    self.echo(f"dropping unfinished target {old_target}")
                    self.live.drop_physical(old_target)
                else:
                    target = old_target
                    self.echo(f"resuming unfinished job {previous_state.get('job_id')} into {target}")
        if target is None:
            target = target_store.create_physical(model=model_key)
        self.state = {
            "job_id": previous_state.get("job_id")
            if target == previous_state.get("target")
            else uuid.uuid4().hex[:12],
            "collection": self.live.collection,
            "source": source,
            "target": target,
            "model_key": model_key,
            "same_model": same_model,
            "started_at": int(time.time()),
            "phase": "building",
            "done": 0,
            "failed": 0,
            "message": "",
        }
        self._save()
        result = ReindexResult(job_id=self.state["job_id"], phase="building", target=target)
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(stop,), daemon=True, name="reindex-heartbeat")
        beat.start()
        try:
            self._build(source, target, target_store, result)
            if result.failed:
                return self._finish(
                    result,
                    "not_switched",
                    f"{result.failed} chunks failed to embed; re-run to retry them",
                    started,
                )
            self._save(phase="catching_up")
            for _ in range(3):
                synced = self._sync(source, target_store, target, same_model)
                if not synced["documents_copied"] and not synced["documents_deleted"]:
                    break
                self.echo(f"caught up: {synced}")
            self._save(phase="validating")
            ok, validation = self._validate(source, target, target_store, same_model)
            result.validation = validation
            self._save(validation=validation)
            if not ok:
                return self._finish(result, "not_switched", validation["reason"], started)
            if not opts.switch:
                return self._finish(result, "validated", "validated; not switched (--no-switch)", started)
            switched_at = int(time.time())
            self._save(
                phase="switching", switched_at=switched_at
            )  # a kill from here on is finished by a re-run
            result.previous = target_store.switch_alias(target)
            return self._after_switch(result, source, target_store, same_model, switched_at, started)
        except BaseException as exc:
            phase = self.state.get("phase")
            self._save(
                # not running any more (a re-run resumes it); a half-done switch is kept as such
                phase=phase if phase == "switching" else "interrupted",
                message=f"interrupted in {phase}: {type(exc).__name__}: {exc}"[:500],
            )
            raise
        finally:
            stop.set()
            beat.join(timeout=30)  # never exit while it is inside a gRPC call (aborts the process)

    def _after_switch(
        self,
        result: ReindexResult,
        previous: str,
        target_store: MilvusStore,
        same_model: bool,
        switched_at: int,
        started: float,
    ) -> ReindexResult:
        target = result.target
        result.previous = previous
        self._save(phase="switched", previous=previous, switched_at=switched_at)
        # Writes that landed in the old collection between the last catch-up and the switch.
        synced = self._sync(
            previous,
            target_store,
            target,
            same_model,
            delete_before=switched_at,
            tombstones=self.meta.list("deleted"),
        )
        self.echo(f"after the switch: {synced}")
        self.meta.delete("reindex_failed", list(self.meta.list("reindex_failed", prefix=f"{target}/")))
        self._retire(target, previous)
        return self._finish(
            result, "done", f"live: {target} (previous {previous} kept for rollback)", started
        )

    def _sync(
        self, source: str, target_store: MilvusStore, target: str, same_model: bool, **kwargs: Any
    ) -> dict[str, int]:
        """``sync_documents`` from a collection of this alias into the target; the new model embeds
        what cannot be copied (a model change)."""
        embed = None if same_model else self._new_service().embed_texts
        return sync_documents(
            self.live, source, target_store, target, same_model=same_model, embed=embed, **kwargs
        )

    def _finish(self, result: ReindexResult, phase: str, message: str, started: float) -> ReindexResult:
        result.phase, result.message = phase, message
        result.seconds = time.perf_counter() - started
        self._save(phase=phase, message=message, seconds=round(result.seconds, 2))
        self.echo(f"{phase}: {message}")
        return result

    def _build(self, source: str, target: str, target_store: MilvusStore, result: ReindexResult) -> None:
        present: set[str] = set()
        for page in target_store.iter_rows("", fields=["chunk_id"], batch_size=10_000, on=target):
            present.update(r["chunk_id"] for r in page)
        rows = [r for r in newest_rows(self.live, source) if r["chunk_id"] not in present]
        result.chunks = len(rows) + len(present)
        self._save(total=result.chunks, done=len(present), failed=0)
        self.echo(f"building {target}: {len(rows)} chunks to embed, {len(present)} already there")
        t0 = time.perf_counter()
        outputs = self._embed_ray(rows, target) if self.options.use_ray else self._embed_local(rows, target)
        failures: dict[str, dict[str, Any]] = {}
        last = 0.0
        done = len(present)
        for out in outputs:
            done += sum(out["written"])
            for ids, errors in zip(out["failed"], out["errors"], strict=True):
                for chunk_id, error in zip(ids, errors, strict=True):
                    failures[f"{target}/{chunk_id}"] = {
                        "chunk_id": chunk_id,
                        "target": target,
                        "error": error,
                    }
            result.embedded = done - len(present)
            if time.monotonic() - last > self.settings.ingest.status_every_s:
                last = time.monotonic()
                elapsed = time.perf_counter() - t0
                rate = result.embedded / elapsed if elapsed else 0.0
                eta = (result.chunks - done) / rate if rate else None
                self._save(done=done, failed=len(failures), rate=round(rate, 2), eta_s=eta and round(eta))
        result.embed_seconds = time.perf_counter() - t0
        result.failed = len(failures)
        self.meta.put_many("reindex_failed", failures)
        target_store.flush()
        self._save(done=done, failed=len(failures), rate=round(result.chunks_per_s, 2), eta_s=0)

    def _embed_local(self, rows: list[dict[str, Any]], target: str) -> Iterator[dict[str, Any]]:
        return embed_local(self.new_settings, rows, target, batch_size=self.options.batch_size)

    def _embed_ray(self, rows: list[dict[str, Any]], target: str) -> Iterator[dict[str, Any]]:
        rs = self.settings.reindex
        return embed_ray(
            self.new_settings,
            rows,
            target,
            batch_size=self.options.batch_size,
            actors=self.options.actors or rs.actors,
            num_gpus=rs.num_gpus_per_actor if self.options.num_gpus is None else self.options.num_gpus,
            resources=rs.actor_resources,
        )

    # ----------------------------------------------------------------------------- validation

    def _validate(
        self, source: str, target: str, target_store: MilvusStore, same_model: bool
    ) -> tuple[bool, dict[str, Any]]:
        v: dict[str, Any] = {}
        for attempt in range(3):
            live_versions, live_counts = _fingerprint(self.live, source)
            new_versions, new_counts = _fingerprint(target_store, target)
            v.update(
                documents_live=len(live_versions),
                documents_new=len(new_versions),
                chunks_live=sum(live_counts.values()),
                chunks_new=sum(new_counts.values()),
            )
            if live_versions == new_versions and live_counts == new_counts:
                break
            if attempt == 2:
                differ = _differing_docs(live_versions, live_counts, new_versions, new_counts)
                v["reason"] = f"counts differ for {len(differ)} documents (first: {differ[:5]})"
                return False, v
            # Writers are busy: catch up once more and compare again.
            self._sync(source, target_store, target, same_model)
        if same_model:
            return self._sampled_queries(source, target, target_store, v)
        return self._labelled(source, target, target_store, v)

    def _sampled_queries(
        self, source: str, target: str, target_store: MilvusStore, v: dict[str, Any]
    ) -> tuple[bool, dict[str, Any]]:
        n = self.settings.reindex.sample_queries
        rows = [
            r
            for page in target_store.iter_rows(
                first_chunks_filter(), fields=["text"], batch_size=5000, on=target
            )
            for r in page
        ]
        if n == 0 or not rows:
            v.update(sample_queries=0, top1_agreement=None, ok=True)
            return True, v
        sample = random.Random(self.options.seed).sample(rows, min(n, len(rows)))
        service = self._new_service()
        dense, _ = service.embed_texts([r["text"][:300] for r in sample], input_type="query")
        agree, overlap = 0, 0.0
        for vec in dense:
            live = [h.chunk_id for h in self.live.search_dense(vec, limit=10, on=source)]
            new = [h.chunk_id for h in target_store.search_dense(vec, limit=10, on=target)]
            agree += bool(live and new and live[0] == new[0])
            overlap += len(set(live) & set(new)) / max(len(live), 1)
        agreement = agree / len(sample)
        threshold = self.settings.reindex.min_top1_agreement
        v.update(
            sample_queries=len(sample),
            top1_agreement=round(agreement, 4),
            overlap_at_10=round(overlap / len(sample), 4),
            min_top1_agreement=threshold,
        )
        ok = agreement >= threshold
        if not ok:
            v["reason"] = f"top-1 agreement {agreement:.2f} < {threshold} on {len(sample)} sampled queries"
        v["ok"] = ok
        return ok, v

    def _labelled(
        self, source: str, target: str, target_store: MilvusStore, v: dict[str, Any]
    ) -> tuple[bool, dict[str, Any]]:
        """A model change: nDCG@10 on a labelled set, new collection vs live, through the real retriever."""
        from serve_app.core.evaluation import evaluate, load_queries
        from serve_app.core.retrieval import Retriever

        if self.options.eval_dir is None:
            v.update(
                ok=False, reason="the model changed: pass --eval DATASET_DIR (BEIR queries/qrels) to compare"
            )
            return False, v
        queries, qrels = load_queries(self.options.eval_dir, "dev")
        queries = queries[: self.options.eval_queries]
        scores = {}
        token = self.live._token
        for name, physical, service in (
            ("live", source, self._live_service_for_eval()),
            ("new", target, self._new_service()),
        ):
            # A store named after the physical collection reads it directly, alias aside.
            store = MilvusStore(self.live.uri, physical, self._dim_of(physical), token=token)
            report = evaluate(
                service, Retriever(store, self.settings.search), queries, qrels, configs=["dense+sparse"]
            )
            scores[name] = report["configs"]["dense+sparse"]["ndcg@10"]
        if not scores["live"]:
            v.update(
                ok=False, reason=f"nDCG@10 of the live collection is 0 on {self.options.eval_dir}: wrong set?"
            )
            return False, v
        ratio = scores["new"] / scores["live"]
        threshold = self.settings.reindex.min_ndcg_ratio
        v.update(
            eval_dir=str(self.options.eval_dir),
            eval_queries=len(queries),
            ndcg10_live=scores["live"],
            ndcg10_new=scores["new"],
            ndcg_ratio=round(ratio, 4),
            min_ndcg_ratio=threshold,
        )
        ok = ratio >= threshold
        v["ok"] = ok
        if not ok:
            v["reason"] = f"nDCG@10 new/live {ratio:.3f} < {threshold}"
        return ok, v

    def _retire(self, live: str, previous: str | None) -> None:
        keep = self.settings.reindex.keep_previous
        older = [n for n in self.live.physical_collections() if n not in (live, previous)]
        if previous is not None:
            keep -= 1
        for name in older[: max(len(older) - max(keep, 0), 0)]:
            self.echo(f"dropping old collection {name}")
            self.live.drop_physical(name)


def rollback(settings: Settings, *, echo: Callable[[str], None] = print) -> str:
    """Point the alias back at the collection the last re-embed replaced; copy writes made since."""
    from serve_app.core.embedding import EmbeddingService

    live = make_store(settings, 1)
    meta = MetaStore(live)
    state = meta.get("reindex", live.collection) or {}
    previous, current = state.get("previous"), live.resolve()
    if not previous or state.get("target") != current:
        raise ReindexError("no re-embed to roll back (the alias is not on the last job's target)")
    if previous not in live.physical_collections():
        raise ReindexError(f"the previous collection {previous!r} no longer exists")
    service = EmbeddingService.from_settings(model_settings(settings, None))
    prev_model = live.model_of(previous)
    if prev_model not in (None, service.encoder.model_key):
        raise ReindexError(
            f"{previous!r} was built with model {prev_model!r}; run rollback with that model configured"
        )
    same_model = live.model_of(current) == prev_model
    store = make_store(settings, service.dim)
    switched_at = int(time.time())
    store.switch_alias(previous)
    synced = sync_documents(
        live,
        current,
        store,
        previous,
        same_model=same_model,
        embed=None if same_model else service.embed_texts,
        delete_before=switched_at,
    )
    meta.put(
        "reindex",
        live.collection,
        {**state, "phase": "rolled_back", "previous": current, "target": previous, "updated_at": switched_at},
    )
    echo(f"alias {live.collection} -> {previous} (was {current}); writes since the switch copied: {synced}")
    return previous
