"""An open-loop load generator for the HTTP API: searches (ja, en, mixed), embeddings and document
writes at once, bounded in time and count, loopback only.

Open loop: request *i* is due at ``i / rate`` seconds and its latency is measured from that
instant, so a stalled service shows as latency instead of silently slowing the load down
(coordinated omission). Every acknowledged write goes into a :class:`Ledger`, which reads them
all back at the end: an acknowledged write that is missing or stale is a lost write.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from serve_app.devtools.common import latency_summary

QUERIES: dict[str, list[str]] = {
    "ja": [
        "アクセストークンの有効期限は？",
        "レート制限を超えたときの応答",
        "冪等キーの保持期間",
        "ページネーションのカーソルの使い方",
        "障害時のロールバック手順",
        "用語集：サーキットブレーカーとは",
    ],
    "en": [
        "how long does an access token live",
        "what happens when the rate limit is exceeded",
        "idempotency key retention",
        "cursor based pagination",
        "rollback procedure after a failed deploy",
        "what is a circuit breaker",
    ],
    "mixed": [
        "refresh token の rotation ポリシー",
        "429 Too Many Requests のときの Retry-After",
        "Idempotency-Key ヘッダーの扱い",
        "webhook の retry と backoff",
    ],
}
OPS = ("search", "embed", "ingest")
# Status codes a sample can carry besides HTTP ones; BAD_ANSWER is a 2xx whose body is not JSON.
TIMEOUT, TRANSPORT, BAD_ANSWER = -1, 0, -2


def require_loopback(base_url: str) -> None:
    """The generator only ever loads this machine: refuse any other host."""
    host = urlsplit(base_url).hostname or ""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve {host!r}: {exc}") from None
    if not addresses or not all(ipaddress.ip_address(a).is_loopback for a in addresses):
        raise ValueError(f"the load generator targets loopback only; {host!r} is {sorted(addresses)}")


@dataclass(frozen=True)
class Mix:
    """Relative shares of the operations."""

    search: float = 6.0
    embed: float = 3.0
    ingest: float = 1.0

    @classmethod
    def parse(cls, spec: str) -> Mix:
        """``search=6,embed=3,ingest=1``; unnamed operations get 0."""
        values: dict[str, float] = dict.fromkeys(OPS, 0.0)
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, _, weight = part.partition("=")
            if name not in values:
                raise ValueError(f"unknown operation {name!r}; use {', '.join(OPS)}")
            values[name] = float(weight)
            if values[name] < 0:
                raise ValueError(f"{name}: a share cannot be negative")
        if not any(values.values()):
            raise ValueError("the mix is empty")
        return cls(**values)

    def choose(self, rng: random.Random) -> str:
        return rng.choices(OPS, weights=[self.search, self.embed, self.ingest])[0]


# What an internal looks like in an error body: a traceback, a source file, a colour code, Ray's
# process titles, pids, node IPs and actor ids, or a second line.
LEAK_MARKERS = ("Traceback", 'File "', '.py"', "\x1b[", "ray::", "pid=", "ip=", "actor_id", "\n")


def body_flaws(response: httpx.Response) -> list[str]:
    """What is wrong with a refusal's body: an internal marker in its message (``error``,
    ``detail``, ``error_msg``, OpenAI's ``error.message``), or no ``request_id`` matching the
    ``X-Request-ID`` header. Empty for a clean one, and for a 2xx."""
    if response.is_success:
        return []
    try:
        body = response.json()
    except ValueError:
        return ["not JSON"]
    if not isinstance(body, dict):
        return ["not a JSON object"]
    error = body.get("error")
    texts = [error.get("message") if isinstance(error, dict) else error, body.get("error_msg")]
    detail = body.get("detail")
    texts += detail if isinstance(detail, list) else [detail]
    text = " | ".join(t if isinstance(t, str) else repr(t) for t in texts if t is not None)
    flaws = [f"{m!r} in the message" for m in LEAK_MARKERS if m in text]
    header = response.headers.get("x-request-id")
    if not header or body.get("request_id") != header:
        flaws.append(f"request_id {body.get('request_id')!r} is not the X-Request-ID header {header!r}")
    return flaws


@dataclass
class Sample:
    op: str
    due_s: float  # since the start of the run
    latency_s: float
    status: int  # HTTP status, TIMEOUT or TRANSPORT
    reason: str = ""
    degraded: bool = False  # a 200 that skipped a stage (expander, rerank)
    stages: dict[str, float] | None = None  # a search's timings_ms: where its time went
    flaws: tuple[str, ...] = ()  # what is wrong with a refusal's body (``body_flaws``)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class Ledger:
    """Acknowledged writes, per document: the tag the service last confirmed, plus the tags of later
    writes whose outcome is unknown (a 5xx or a timeout may or may not have been applied)."""

    def __init__(self) -> None:
        self.acked: dict[str, str] = {}
        self.possible: dict[str, set[str]] = {}
        self.busy: set[str] = set()
        self.unsettled: set[str] = set()  # a write with an unknown outcome may still land later
        self.acks = 0

    def begin(self, doc_id: str, tag: str) -> None:
        self.busy.add(doc_id)
        self.possible.setdefault(doc_id, set()).add(tag)

    def end(self, doc_id: str, tag: str, status: int) -> None:
        self.busy.discard(doc_id)
        if 200 <= status < 300:
            self.acked[doc_id], self.possible[doc_id] = tag, {tag}
            self.acks += 1
        elif 400 <= status < 500:  # refused: certainly not applied
            self.possible[doc_id].discard(tag)
        else:
            # 5xx or no answer: the write may still be running on the server. Writing the document
            # again could be overtaken by it, so it is not updated again (its tag stays possible).
            self.unsettled.add(doc_id)

    def idle_docs(self) -> list[str]:
        return [d for d in self.acked if d not in self.busy and d not in self.unsettled]

    async def verify(self, client: httpx.AsyncClient, search_sample: int = 10) -> dict[str, Any]:
        """Read every acknowledged document back (``GET``); search a sample of them by their tag."""
        lost: list[dict[str, Any]] = []
        sem = asyncio.Semaphore(8)

        async def check(doc_id: str) -> None:
            try:
                async with sem:
                    response = await client.get(f"/v1/documents/{doc_id}")
            except httpx.HTTPError as exc:
                lost.append({"doc_id": doc_id, "error": f"{type(exc).__name__}: {exc}"})
                return
            if response.status_code != 200:
                lost.append({"doc_id": doc_id, "status": response.status_code})
                return
            info = response.json()
            tags = set(info.get("tags") or [])
            if info.get("chunks", 0) < 1 or not tags & self.possible[doc_id]:
                lost.append(
                    {"doc_id": doc_id, "expected": sorted(self.possible[doc_id]), "got": sorted(tags)}
                )

        await asyncio.gather(*(check(d) for d in self.acked))
        found = 0
        sample = sorted(self.acked)[:: max(1, len(self.acked) // max(search_sample, 1))][:search_sample]
        for doc_id in sample:
            tag = self.acked[doc_id]
            body = {"query": f"{tag} load test", "top_k": 5, "rerank": False, "expand": False}
            body["filters"] = {"doc_ids": [doc_id]}
            try:
                response = await client.post("/v1/search", json=body)
            except httpx.HTTPError as exc:
                lost.append({"doc_id": doc_id, "search": f"{type(exc).__name__}: {exc}", "expected": tag})
                continue
            texts = (
                [r["text"] for r in response.json().get("results", [])] if response.status_code == 200 else []
            )
            if any(t in text for text in texts for t in self.possible[doc_id]):
                found += 1
            else:
                lost.append({"doc_id": doc_id, "search": response.status_code, "expected": tag})
        return {
            "acknowledged_writes": self.acks,
            "documents_checked": len(self.acked),
            "searched_back": found,
            "lost": lost,
        }


def _document(doc_id: str, tag: str, n: int, rng: random.Random) -> dict[str, Any]:
    minutes, limit = rng.randint(5, 120), rng.randint(10, 900)
    text = (
        f"# 負荷試験の文書 {n}\n\n{tag}: この文書は負荷試験の書き込みです。"
        f"アクセストークンの有効期限は{minutes}分で、レート制限は毎分{limit}件です。\n\n"
        f"## Load test document {n}\n\n{tag}: written by the load generator. "
        f"Access tokens expire after {minutes} minutes; the rate limit is {limit} requests per minute."
    )
    return {"doc_id": doc_id, "text": text, "kind": "spec", "tags": ["loadtest", tag], "title": f"load {n}"}


@dataclass
class LoadRun:
    """One bounded run; ``actions`` are ``(at_s, label, callable)`` faults run in a thread at ``at_s``."""

    base_url: str
    duration_s: float = 30.0
    rate: float = 4.0
    max_requests: int = 10_000
    concurrency: int = 32
    timeout_s: float = 30.0
    mix: Mix = field(default_factory=Mix)
    seed: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    actions: Sequence[tuple[float, str, Callable[[], Any]]] = ()
    ledger: Ledger = field(default_factory=Ledger)
    monitor: Callable[[float], Any] | None = None  # called in a thread every monitor_every_s
    monitor_every_s: float = 10.0
    transport: httpx.AsyncBaseTransport | None = None  # tests: an in-process app instead of the network
    run_id: str = field(default_factory=lambda: f"r{int(time.time()) % 1_000_000}")

    def __post_init__(self) -> None:
        require_loopback(self.base_url)
        if self.rate <= 0 or self.duration_s <= 0:
            raise ValueError("rate and duration must be positive")

    async def run(self) -> LoadResult:
        # Two streams: the sequence of operations depends on the seed alone, not on which request
        # happened to draw its content first.
        ops, rng = random.Random(self.seed), random.Random(self.seed + 1)
        samples: list[Sample] = []
        events: list[dict[str, Any]] = []
        sem = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        total = min(self.max_requests, int(self.duration_s * self.rate))
        async with httpx.AsyncClient(
            base_url=self.base_url,
            headers=self.headers,
            timeout=self.timeout_s,
            limits=limits,
            transport=self.transport,
        ) as client:
            start = time.monotonic()

            async def fire(i: int, op: str, due: float) -> None:
                async with sem:
                    samples.append(await self._one(client, i, op, due, start, rng))

            async def act(at: float, label: str, fn: Callable[[], Any]) -> None:
                await asyncio.sleep(max(0.0, start + at - time.monotonic()))
                t = time.monotonic() - start
                try:
                    detail = await asyncio.to_thread(fn)
                    events.append(
                        {
                            "at_s": round(t, 2),
                            "done_s": round(time.monotonic() - start, 2),
                            "action": label,
                            "detail": detail,
                        }
                    )
                except Exception as exc:  # a fault that could not be injected fails the scenario
                    events.append({"at_s": round(t, 2), "action": label, "error": repr(exc)})

            tasks = [asyncio.create_task(act(at, label, fn)) for at, label, fn in self.actions]
            readings: list[Any] = []
            if self.monitor is not None:
                monitor = self.monitor

                async def watch() -> None:
                    while True:
                        t = time.monotonic() - start
                        try:
                            readings.append(await asyncio.to_thread(monitor, t))
                        except Exception as exc:  # a failed reading shows, and sampling goes on
                            readings.append({"t_s": round(t, 1), "error": repr(exc)})
                        await asyncio.sleep(self.monitor_every_s)

                watcher = asyncio.create_task(watch())
            for i in range(total):
                due = i / self.rate
                await asyncio.sleep(max(0.0, start + due - time.monotonic()))
                tasks.append(asyncio.create_task(fire(i, self.mix.choose(ops), due)))
            await asyncio.gather(*tasks)
            elapsed = time.monotonic() - start
            if self.monitor is not None:
                watcher.cancel()
                readings.append(await asyncio.to_thread(self.monitor, elapsed))
            verify = await self.ledger.verify(client) if self.ledger.acked else None
        return LoadResult(samples, elapsed, events, verify, readings)

    async def _one(
        self, client: httpx.AsyncClient, i: int, op: str, due: float, start: float, rng: random.Random
    ) -> Sample:
        doc_id = tag = None
        if op == "search":
            lang = rng.choice(list(QUERIES))
            body: dict[str, Any] = {"query": rng.choice(QUERIES[lang]), "top_k": 5}
            if rng.random() < 0.2:
                body["filters"] = {"langs": [rng.choice(["ja", "en"])]}
            request = ("/v1/search", body)
        elif op == "embed":
            texts = [rng.choice(QUERIES[rng.choice(list(QUERIES))]) for _ in range(2)]
            if rng.random() < 0.5:  # half unique: cache misses reach the model
                texts = [f"{t} ({self.run_id}-{i})" for t in texts]
            request = ("/v1/embed", {"input": texts})
        else:
            idle = self.ledger.idle_docs()
            doc_id = rng.choice(idle) if idle and rng.random() < 0.3 else f"load/{self.run_id}/{i}"
            tag = f"w{self.run_id}x{i}"
            self.ledger.begin(doc_id, tag)
            request = ("/v1/documents", {"documents": [_document(doc_id, tag, i, rng)]})
        status, reason, degraded, stages, flaws = TRANSPORT, "", False, None, ()
        try:
            # httpx bounds each read; this bounds the whole exchange (a trickling answer is a hang too).
            response = await asyncio.wait_for(client.post(request[0], json=request[1]), self.timeout_s)
            status = response.status_code
            if not response.is_success:
                reason, flaws = response.text[:200], tuple(body_flaws(response))
            elif op == "search":
                try:
                    answer = response.json()
                    degraded, stages = bool(answer.get("degraded")), answer.get("timings_ms")
                except (ValueError, AttributeError):
                    status, reason = BAD_ANSWER, f"{status} with a body that is not a JSON object"
        except (httpx.TimeoutException, TimeoutError):
            status, reason = TIMEOUT, f"no answer in {self.timeout_s} s"
        except httpx.HTTPError as exc:
            reason = f"{type(exc).__name__}: {exc}"[:200]
        finally:
            if doc_id is not None:
                self.ledger.end(doc_id, tag or "", status)
        return Sample(op, due, time.monotonic() - start - due, status, reason, degraded, stages, flaws)


@dataclass
class LoadResult:
    samples: list[Sample]
    elapsed_s: float
    events: list[dict[str, Any]]
    verify: dict[str, Any] | None
    readings: list[Any] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Per operation and overall: requests, successes, errors by status, throughput, latency."""

        def one(samples: list[Sample]) -> dict[str, Any]:
            ok = [s.latency_s for s in samples if s.ok]
            errors = Counter(str(s.status) for s in samples if not s.ok)
            return {
                "requests": len(samples),
                "ok": len(ok),
                "errors": sum(errors.values()),
                "by_status": dict(sorted(errors.items())),
                "degraded": sum(1 for s in samples if s.degraded),
                "ok_per_s": round(len(ok) / self.elapsed_s, 2) if self.elapsed_s else None,
                **latency_summary(ok),
            }

        ops = {op: one([s for s in self.samples if s.op == op]) for op in OPS}
        out = {
            "elapsed_s": round(self.elapsed_s, 1),
            "total": one(self.samples),
            "ops": {k: v for k, v in ops.items() if v["requests"]},
        }
        # A 503 must say why ({"error": ...}); any other 5xx, or a 2xx that is not JSON, is a bug.
        out["server_errors"] = sum(
            1
            for s in self.samples
            if s.status == BAD_ANSWER or (s.status >= 500 and not (s.status == 503 and '"error"' in s.reason))
        )
        out["hangs"] = sum(1 for s in self.samples if s.status == TIMEOUT)
        # Every refusal names its cause in one line, without internals, under the request's id.
        flawed = [s for s in self.samples if s.flaws]
        out["unclean_errors"] = len(flawed)
        out["unclean_examples"] = sorted({f"{s.status}: {'; '.join(s.flaws)}" for s in flawed})[:3]
        timed = [s.stages for s in self.samples if s.stages]
        names = sorted({k for t in timed for k in t})
        # Median per stage of the searches' own timings: the server-side split of their latency.
        out["search_stages_p50_ms"] = {
            k: round(statistics.median(t[k] for t in timed if k in t), 1) for k in names
        }
        reasons = Counter(s.reason.split("\n")[0][:120] for s in self.samples if not s.ok)
        out["error_reasons"] = dict(reasons.most_common(5))
        return out

    def windows(self, every_s: float) -> list[dict[str, Any]]:
        """Requests, errors and latency per window of ``every_s`` seconds (soak trends)."""
        out = []
        for k in range(int(self.elapsed_s // every_s) + 1):
            part = [s for s in self.samples if k * every_s <= s.due_s < (k + 1) * every_s]
            if part:
                ok = [s.latency_s for s in part if s.ok]
                out.append(
                    {
                        "from_s": k * every_s,
                        "requests": len(part),
                        "errors": len(part) - len(ok),
                        **latency_summary(ok),
                    }
                )
        return out

    def recovery_s(self, fault_end_s: float) -> float | None:
        """Seconds from the end of a fault until the last failed request was answered (0 when none
        failed after it); None when no request succeeded after that, i.e. it did not recover."""
        done = [(s.due_s + s.latency_s, s.ok) for s in self.samples]
        last_error = max((t for t, ok in done if not ok and t >= fault_end_s), default=fault_end_s)
        if not any(ok and t > last_error for t, ok in done):
            return None
        return round(last_error - fault_end_s, 2)
