"""Write-to-searchable time under the mixed load, on the real local stack.

Two kinds of writes, while the reliability suite's open-loop mixed load (searches, embeddings,
writes) runs against the same service:

* ``POST /v1/documents`` of one document (a new version of one of a few probe documents): the
  clock starts when the write is acknowledged and stops when a ``POST /v1/search`` answers with
  the new version among its results;
* a 10-file commit to a registered git source, triggered by ``POST /v1/sources/{name}/sync``
  (answered 202 at once, as a git hook gets it): the clock starts at that answer and stops, per
  file, when a search returns the file's new version. The sync's own embedding time (from its
  report) is recorded with it, since the goal is "no more than 2 s beyond the embedding".

Each figure includes the latency of the search that first showed the version (a real, complete
search). The observer keeps its own load small: one search in flight, and for the git increment a
cheap status read until the sync is recorded. Percentiles are over every write of the run.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from serve_app.devtools.common import percentile, replace_section
from serve_app.devtools.reliability.load import LoadRun, Mix

MARK_START = "<!-- bench:freshness:start -->"
MARK_END = "<!-- bench:freshness:end -->"
SOURCE = "freshness"
PROBE_DOCS = 4
GIVE_UP_S = 30.0
GIT_ENV = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost"}
GIT_ENV |= {"GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost"}


@dataclass
class FreshnessOptions:
    duration_s: float = 150.0
    rate: float = 1.5
    mix: Mix = field(default_factory=Mix)
    probes: int = 40
    increments: int = 6
    files_per_commit: int = 10
    out: Path = Path("docs/benchmarks/freshness.json")
    markdown: Path = Path("docs/BENCHMARKS.md")
    command: str = "specrag bench freshness"
    machine: str = ""
    seed: int = 0


class Repo:
    """The git source's repository: one Markdown page per file, each naming a build number."""

    def __init__(self, root: Path, files: int) -> None:
        self.root, self.files = root, files

    def git(self, *args: str) -> str:
        import os

        done = subprocess.run(
            ["git", "-C", str(self.root), *args],
            check=True,
            capture_output=True,
            env={**os.environ, **GIT_ENV},
        )
        return done.stdout.decode().strip()

    @staticmethod
    def page(j: int, build: int) -> str:
        return (
            f"# Runbook page {j}\n\nRunbook page {j} of the freshness source names the current release"
            f" build {build}. Deploy that build to staging before production.\n"
        )

    def commit(self, builds: list[int]) -> str:
        for j, build in enumerate(builds):
            (self.root / "runbook").mkdir(parents=True, exist_ok=True)
            (self.root / "runbook" / f"page-{j:02d}.md").write_text(self.page(j, build), encoding="utf-8")
        self.git("add", "-A")
        self.git("commit", "-qm", f"builds {builds[0]}..")
        return self.git("rev-parse", "HEAD")

    @classmethod
    def create(cls, root: Path, files: int) -> Repo:
        import shutil

        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        repo = cls(root, files)
        repo.git("init", "-q", "-b", "main")
        repo.commit([0] * files)
        return repo


async def visible(
    client: httpx.AsyncClient, query: str, doc_id: str, marker: str, filters: dict[str, Any]
) -> float | None:
    """Seconds (monotonic clock) at which a search first returned ``doc_id`` holding ``marker``."""
    deadline = time.monotonic() + GIVE_UP_S
    while time.monotonic() < deadline:
        response = await client.post("/v1/search", json={"query": query, "top_k": 5, "filters": filters})
        if response.status_code == 200 and any(
            r["doc_id"] == doc_id and marker in r["text"] for r in response.json()["results"]
        ):
            return time.monotonic()
    return None


async def probe_document(client: httpx.AsyncClient, i: int, build: int) -> dict[str, Any]:
    """One acknowledged single-document write and the time until a search shows it."""
    n = i % PROBE_DOCS
    doc_id = f"freshness-probe-{n}"
    text = f"# Freshness probe {n}\n\nFreshness probe {n} reports that the nightly build number is {build}.\n"
    doc = {"doc_id": doc_id, "text": text, "title": f"Freshness probe {n}", "tags": ["freshness-probe"]}
    response = await client.post("/v1/documents", json={"documents": [doc]}, timeout=120)
    acked = time.monotonic()
    if response.status_code != 200 or response.json().get("failed"):
        return {"i": i, "error": f"write answered {response.status_code}: {response.text[:200]}"}
    seen = await visible(
        client, f"freshness probe {n} nightly build number", doc_id, str(build), {"tags": ["freshness-probe"]}
    )
    if seen is None:
        return {"i": i, "error": f"not searchable after {GIVE_UP_S} s"}
    return {"i": i, "ms": (seen - acked) * 1000}


async def git_increment(client: httpx.AsyncClient, repo: Repo, k: int, builds: list[int]) -> dict[str, Any]:
    """A commit changing every file, its trigger, and per file the time until a search shows it.

    The observer must not be the load: the source's status is polled (a cheap read) until the sync
    is recorded, then one search over the source's files (``top_k`` = the file count, filtered to
    them) is repeated until every file shows its new version."""
    head = await asyncio.to_thread(repo.commit, builds)
    response = await client.post(f"/v1/sources/{SOURCE}/sync", json={"commit": head})
    acked = time.monotonic()
    if response.status_code != 202:
        return {"k": k, "error": f"trigger answered {response.status_code}: {response.text[:200]}"}
    status: dict[str, Any] = {}
    while time.monotonic() < acked + GIVE_UP_S:
        status = (await client.get(f"/v1/sources/{SOURCE}")).json()
        if status.get("commit") == head or status.get("state") == "failed":
            break
        await asyncio.sleep(0.05)
    synced = time.monotonic()
    paths = [f"{SOURCE}/runbook/page-{j:02d}.md" for j in range(len(builds))]
    wanted = {p: str(b) for p, b in zip(paths, builds, strict=True)}
    seen: dict[str, float] = {}
    body = {"query": "runbook page current release build", "top_k": len(paths), "filters": {"sources": paths}}
    while len(seen) < len(paths) and time.monotonic() < acked + GIVE_UP_S:
        answer = await client.post("/v1/search", json=body)
        now = time.monotonic()
        if answer.status_code == 200:
            for r in answer.json()["results"]:
                if r["doc_id"] in wanted and wanted[r["doc_id"]] in r["text"]:
                    seen.setdefault(r["doc_id"], now)
    ingest = (status.get("last") or {}).get("ingest") or {}
    times = [(seen[p] - acked) * 1000 for p in paths if p in seen]
    return {
        "k": k,
        "ms": times,
        "missing": len(paths) - len(times),
        "all_ms": max(times) if len(times) == len(paths) else None,
        "recorded_ms": round((synced - acked) * 1000, 1),
        "embed_ms": round(float(ingest.get("embed_seconds", 0.0)) * 1000, 1),
        "sync_ms": round(float(ingest.get("seconds", 0.0)) * 1000, 1),
        "chunks_embedded": ingest.get("chunks_embedded"),
    }


def _pcts(values: list[float]) -> dict[str, Any]:
    def pct(q: float) -> float | None:
        value = percentile(values, q)
        return round(value, 1) if value is not None else None

    return {"n": len(values), "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99), "max_ms": pct(100)}


async def measure(base_url: str, repo: Repo, options: FreshnessOptions, echo: Callable[[str], None]) -> dict:
    rng = random.Random(options.seed)
    load = LoadRun(
        base_url, duration_s=options.duration_s, rate=options.rate, mix=options.mix, timeout_s=60.0
    )
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        first = await client.post(f"/v1/sources/{SOURCE}/sync", json={"wait": True}, timeout=600)
        first.raise_for_status()
        load_task = asyncio.create_task(load.run())
        started = time.monotonic()
        probes: list[dict[str, Any]] = []
        increments: list[dict[str, Any]] = []
        # Spread the writes over the load: a git increment every duration/increments seconds,
        # single-document probes back to back in between.
        every = options.duration_s / max(options.increments, 1)
        for k in range(options.increments):
            builds = [rng.randrange(10_000, 99_999) for _ in range(options.files_per_commit)]
            increments.append(await git_increment(client, repo, k, builds))
            echo(f"git increment {k}: {increments[-1]}")
            slot_end = started + (k + 1) * every
            while (
                len(probes) < options.probes * (k + 1) // options.increments and time.monotonic() < slot_end
            ):
                probes.append(await probe_document(client, len(probes), rng.randrange(10_000, 99_999)))
            await asyncio.sleep(max(0.0, slot_end - time.monotonic()))
        result = await load_task
    single = [p["ms"] for p in probes if "ms" in p]
    per_file = [ms for inc in increments for ms in inc.get("ms", [])]
    whole = [inc["all_ms"] for inc in increments if inc.get("all_ms") is not None]
    beyond = [inc["all_ms"] - inc["embed_ms"] for inc in increments if inc.get("all_ms") is not None]
    summary = result.summary()
    return {
        "post_documents": {**_pcts(single), "failed": [p for p in probes if "error" in p]},
        "git_increment": {
            "files_per_commit": options.files_per_commit,
            "all_files": _pcts(whole),
            "per_file": _pcts(per_file),
            "beyond_embedding": _pcts(beyond),
            "sync_recorded": _pcts([inc["recorded_ms"] for inc in increments if "recorded_ms" in inc]),
            "embed_ms": [inc.get("embed_ms") for inc in increments],
            "runs": increments,
        },
        "load": {
            "rate": options.rate,
            "duration_s": options.duration_s,
            "mix": asdict(options.mix),
            "requests": summary["total"]["requests"],
            "errors": summary["total"]["errors"],
            "summary": summary,
            "verify": result.verify,
        },
    }


def section(report: dict[str, Any], json_path: str) -> str:
    one, inc = report["post_documents"], report["git_increment"]
    load = report["load"]
    link = json_path.split("docs/")[-1]

    def row(name: str, s: dict[str, Any]) -> str:
        return f"| {name} | {s['n']} | {s['p50_ms']} | {s['p95_ms']} | {s['p99_ms']} | {s['max_ms']} |"

    return "\n".join(
        [
            MARK_START,
            "### Write to searchable (freshness)",
            "",
            f"`{report['command']}` on {report['machine']} — figures in [`{json_path}`]({link}).",
            f"Under the mixed load ({load['rate']} req/s for {load['duration_s']} s, "
            f"{load['requests']} requests, {load['errors']} errors); ms from the acknowledgement to the "
            "first search answering with the new version (that search's own latency included).",
            "",
            "| write | n | p50 | p95 | p99 | max |",
            "|---|---|---|---|---|---|",
            row("`POST /v1/documents`, one document", one),
            row(f"git increment, {inc['files_per_commit']} files: all of them", inc["all_files"]),
            row("git increment: each file", inc["per_file"]),
            row("git increment: all files minus the sync's embedding time", inc["beyond_embedding"]),
            row("git increment: until the sync recorded its commit", inc["sync_recorded"]),
            "",
            MARK_END,
        ]
    )


def write(report: dict[str, Any], options: FreshnessOptions) -> None:
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    text = options.markdown.read_text(encoding="utf-8") if options.markdown.exists() else ""
    options.markdown.write_text(replace_section(text, section(report, str(options.out))), encoding="utf-8")


def run_freshness_bench(
    base_url: str, repo: Repo, options: FreshnessOptions, echo: Callable[[str], None]
) -> dict[str, Any]:
    report = asyncio.run(measure(base_url, repo, options, echo))
    report |= {"command": options.command, "machine": options.machine}
    write(report, options)
    return report
