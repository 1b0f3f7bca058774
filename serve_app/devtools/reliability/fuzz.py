"""Bad input against the running service: fixed hostile cases, and schemathesis over the OpenAPI
schema. Every answer must come in time and be a 2xx or a 4xx with a reason; never a 5xx; and
every answer must be one the document declares (its status, content type, headers and schema)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from serve_app.devtools.reliability.load import body_flaws, require_loopback

LONG_JA = (
    "仕様書の各章は要件、設計、試験の順に並び、変更履歴は末尾に記録されます。" * 400
)  # 14k chars, 10.8k tokens
LONG_EN = " ".join(str(i % 10) for i in range(9000))  # 18k chars, 9k tokens (under the 50k-char item limit)
HUGE = "a" * 60_000  # over the item limit: refused, not truncated
MIXED = "認証 token の有効期限 — срок действия токена — صلاحية الرمز — 🔑 TTL=3600s\u200b\u00a0한국어"
CONTROL = "トークン\x00\x01\x07\x1b[31m expiry\x7f\u202e\ufeff"


# What each case must get: the status the API documents for it (a 2xx where the input is odd but
# valid). A different status fails the case even when it is not a 5xx.
EXPECTED: dict[str, int] = {
    "invalid UTF-8 body": 400,
    "lone surrogate (\\ud800) in JSON": 422,
    "lone surrogate (\\udfff) in JSON": 422,
    "not JSON": 422,
    "JSON but not an object": 422,
    "deeply nested JSON": 400,
    "empty query": 422,
    "whitespace-only query": 422,
    "control characters in query": 200,
    "mixed scripts and emoji": 200,
    "query of 14k Japanese characters (over the limit)": 413,
    "query of 9k tokens (over the 2000-char query limit)": 413,
    "query at the char limit (1000 tokens)": 200,
    "top_k = 0": 422,
    "top_k = 10^9": 422,
    "unknown field": 422,
    "filter with 10k tags": 200,
    "filter value with quotes": 200,
    "empty embed list": 422,
    "embed: empty and whitespace items": 200,
    "embed: 14k Japanese characters (10.8k tokens)": 200,
    "embed: 9k tokens": 200,
    "embed: 60k characters (over the item limit)": 413,
    "embed: control chars, mixed scripts": 200,
    "embed: non-string items": 200,
    "OpenAI: 9k-token input": 200,
    "OpenAI: unknown model": 404,
    "OpenAI: token-id input": 422,
    "document: whitespace-only text": 422,
    "document: control chars": 200,
    "document: 14k Japanese chars": 200,
    "document: NUL in doc_id": 200,
    "document: quote in doc_id": 200,
    "body over the size limit": 413,
    "GET unknown document": 404,
    "GET path traversal id (encoded)": 404,
    "DELETE unknown document": 200,
}
CREATED = ("fuzz/doc", "a\x00b", 'fuzz/"q')  # documents the cases write; deleted afterwards


def _cases(big: int, model: str) -> list[tuple[str, str, str, Any, dict[str, str]]]:
    """(name, method, path, body, headers); a bytes body is sent as is (invalid UTF-8, not JSON)."""
    j = {"content-type": "application/json"}
    doc = {"doc_id": "fuzz/doc", "text": "x"}
    return [
        ("invalid UTF-8 body", "POST", "/v1/search", b'{"query": "\xff\xfe\xfa token"}', j),
        ("invalid UTF-8 body", "POST", "/v1/embed", b'{"input": ["\xc3\x28"]}', j),
        (
            "invalid UTF-8 body",
            "POST",
            "/v1/documents",
            b'{"documents": [{"doc_id": "a", "text": "\x80"}]}',
            j,
        ),
        ("lone surrogate (\\ud800) in JSON", "POST", "/v1/search", b'{"query": "token \\ud800 expiry"}', j),
        ("lone surrogate (\\udfff) in JSON", "POST", "/v1/embed", b'{"input": ["\\udfff"]}', j),
        ("not JSON", "POST", "/v1/search", b"query=token", j),
        ("JSON but not an object", "POST", "/v1/search", b"[1, 2, 3]", j),
        ("deeply nested JSON", "POST", "/v1/search", b'{"query": ' + b"[" * 5000 + b"]" * 5000 + b"}", j),
        ("empty query", "POST", "/v1/search", {"query": ""}, {}),
        ("whitespace-only query", "POST", "/v1/search", {"query": " \t\n\u3000 "}, {}),
        ("control characters in query", "POST", "/v1/search", {"query": CONTROL}, {}),
        ("mixed scripts and emoji", "POST", "/v1/search", {"query": MIXED}, {}),
        ("query of 14k Japanese characters (over the limit)", "POST", "/v1/search", {"query": LONG_JA}, {}),
        ("query of 9k tokens (over the 2000-char query limit)", "POST", "/v1/search", {"query": LONG_EN}, {}),
        ("query at the char limit (1000 tokens)", "POST", "/v1/search", {"query": LONG_EN[:2000]}, {}),
        ("top_k = 0", "POST", "/v1/search", {"query": "token", "top_k": 0}, {}),
        ("top_k = 10^9", "POST", "/v1/search", {"query": "token", "top_k": 10**9}, {}),
        ("unknown field", "POST", "/v1/search", {"query": "token", "topk": 3}, {}),
        (
            "filter with 10k tags",
            "POST",
            "/v1/search",
            {"query": "t", "filters": {"tags": ["x"] * 10_000}},
            {},
        ),
        (
            "filter value with quotes",
            "POST",
            "/v1/search",
            {"query": "t", "filters": {"tags": ['a" or 1==1']}},
            {},
        ),
        ("empty embed list", "POST", "/v1/embed", {"input": []}, {}),
        ("embed: empty and whitespace items", "POST", "/v1/embed", {"input": ["", "   ", "ok"]}, {}),
        ("embed: 14k Japanese characters (10.8k tokens)", "POST", "/v1/embed", {"input": [LONG_JA]}, {}),
        ("embed: 9k tokens", "POST", "/v1/embed", {"input": [LONG_EN]}, {}),
        ("embed: 60k characters (over the item limit)", "POST", "/v1/embed", {"input": [HUGE]}, {}),
        ("embed: control chars, mixed scripts", "POST", "/v1/embed", {"input": [CONTROL, MIXED]}, {}),
        ("embed: non-string items", "POST", "/v1/embed", {"input": [1, None, {"a": 1}, "ok"]}, {}),
        ("OpenAI: 9k-token input", "POST", "/v1/embeddings", {"input": LONG_EN, "model": model}, {}),
        ("OpenAI: unknown model", "POST", "/v1/embeddings", {"input": "token", "model": "gpt-x"}, {}),
        ("OpenAI: token-id input", "POST", "/v1/embeddings", {"input": [[1, 2, 3]], "model": model}, {}),
        (
            "document: whitespace-only text",
            "POST",
            "/v1/documents",
            {"documents": [{**doc, "text": " \n "}]},
            {},
        ),
        ("document: control chars", "POST", "/v1/documents", {"documents": [{**doc, "text": CONTROL}]}, {}),
        (
            "document: 14k Japanese chars",
            "POST",
            "/v1/documents",
            {"documents": [{**doc, "text": LONG_JA}]},
            {},
        ),
        (
            "document: NUL in doc_id",
            "POST",
            "/v1/documents",
            {"documents": [{**doc, "doc_id": "a\x00b"}]},
            {},
        ),
        (
            "document: quote in doc_id",
            "POST",
            "/v1/documents",
            {"documents": [{**doc, "doc_id": 'fuzz/"q'}]},
            {},
        ),
        ("body over the size limit", "POST", "/v1/embed", {"input": ["a" * big]}, {}),
        ("GET unknown document", "GET", "/v1/documents/fuzz/none", None, {}),
        ("GET path traversal id (encoded)", "GET", "/v1/documents/..%2F..%2Fetc%2Fpasswd", None, {}),
        ("DELETE unknown document", "DELETE", "/v1/documents/fuzz/none", None, {}),
    ]


def _reason(text: str) -> str:
    """The reason a refusal gives: ``error`` (ours, or OpenAI's ``error.message``) plus the first
    ``detail`` item; empty when the body names none, which fails the case."""
    try:
        payload = json.loads(text)
    except json.JSONDecodeError:
        return text[:90]
    if not isinstance(payload, dict):
        return ""
    error, detail = payload.get("error"), payload.get("detail")
    if isinstance(error, dict):  # OpenAI shape
        return str(error.get("message") or "")
    if "error_msg" in payload:  # Dify's
        return str(payload["error_msg"] or "")
    parts = [str(error)] if error else []
    if isinstance(detail, str):
        parts.append(detail)
    elif isinstance(detail, list) and detail and isinstance(detail[0], dict):
        where, why = detail[0].get("field", detail[0].get("index")), detail[0].get("reason")
        parts.append(f"{where}: {why}" if where is not None else str(why))
    return ": ".join(parts)


def bad_inputs(
    base_url: str, model: str, timeout_s: float = 60.0, body_limit: int = 8 * 1024 * 1024
) -> dict[str, Any]:
    """Send every hostile case once; pass when none got a 5xx or went unanswered, and every 4xx
    named its reason in one line with the request's id (``load.body_flaws``). ``model`` is the
    served model's name (for the OpenAI-shaped cases)."""
    require_loopback(base_url)
    results = []
    with httpx.Client(base_url=base_url, timeout=timeout_s) as client:
        for name, method, path, body, headers in _cases(body_limit + 1024, model):
            started = time.monotonic()
            flaws: list[str] = []
            kwargs: dict[str, Any] = {"headers": headers}
            if isinstance(body, bytes):
                kwargs["content"] = body
            elif body is not None:
                kwargs["json"] = body
            try:
                response = client.request(method, path, **kwargs)
                status, reason = response.status_code, _reason(response.text)
                flaws = body_flaws(response)
            except httpx.TimeoutException:
                status, reason = -1, f"no answer in {timeout_s} s"
            except httpx.HTTPError as exc:  # the connection broke: as bad as a 5xx
                status, reason = 0, f"{type(exc).__name__}: {exc}"
            if 200 <= status < 300:
                reason = reason or "accepted"
            results.append(
                {
                    "case": name,
                    "path": f"{method} {path}",
                    "status": status,
                    "expected": EXPECTED.get(name),
                    "reason": str(reason).replace("|", "/").replace("\n", " "),
                    "flaws": flaws,
                    "ms": round((time.monotonic() - started) * 1000),
                }
            )
        for doc_id in CREATED:
            client.delete(f"/v1/documents/{quote(doc_id, safe='/')}")
    bad = [r for r in results if r["status"] >= 500 or r["status"] <= 0]
    no_reason = [r for r in results if 400 <= r["status"] < 500 and not r["reason"]]
    unexpected = [r for r in results if r["status"] != r["expected"]]
    flawed = [r for r in results if r["flaws"]]
    return {
        "cases": results,
        "passed": not bad and not no_reason and not unexpected and not flawed,
        "summary": f"{len(results)} cases: {sum(200 <= r['status'] < 300 for r in results)} accepted, "
        f"{sum(400 <= r['status'] < 500 for r in results)} refused with a 4xx and a reason, "
        f"{len(bad)} 5xx or unanswered, {len(no_reason)} 4xx without a reason, "
        f"{len(unexpected)} with another status than documented, "
        f"{len(flawed)} whose body leaks internals or lacks the request id.",
    }


# What every schemathesis answer is checked for: no 5xx, and conformance to the document (a
# status it declares for the operation, its content type, its required headers such as
# X-Request-ID, and its schema). Not ``ignored_auth``: the stack runs without keys.
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)


def schemathesis_run(
    base_url: str, max_examples: int, workdir: Path, timeout_s: float = 60.0, seed: int = 1
) -> dict[str, Any]:
    """``st run`` over ``/openapi.json``: examples, coverage and fuzzing phases, positive and
    negative data; the checks are ``CHECKS`` plus a bound on response time (a hang)."""
    require_loopback(base_url)
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    if st is None:
        raise RuntimeError("schemathesis is not installed (pip install -e '.[test]')")
    workdir.mkdir(parents=True, exist_ok=True)
    report = workdir / "report.json"
    phases = "examples,coverage,fuzzing"
    cmd = [
        st, "run", f"{base_url}/openapi.json",
        "--checks", ",".join(CHECKS),
        "--max-response-time", str(timeout_s),
        "--request-timeout", str(timeout_s),
        "--phases", phases,
        "--max-examples", str(max_examples),
        "--seed", str(seed),
        "--workers", "1",  # 2 threads trip a CPython 3.11 ast.parse race inside hypothesis
        "--suppress-health-check", "all",
        "--report", "json",
        "--report-json-path", str(report),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, cwd=workdir)
    if not report.exists():
        raise RuntimeError(f"schemathesis wrote no report (exit {proc.returncode}):\n{proc.stdout[-3000:]}")
    data = json.loads(report.read_text())
    failures = data.get("failures") or []
    server = sum(f["count"] for f in failures if "server error" in f["title"].lower())
    slow = sum(f["count"] for f in failures if "response time" in f["title"].lower())
    non_conforming = sum(f["count"] for f in failures) - server - slow
    errors = sum(e["count"] for e in data.get("errors") or [])
    cases = data["test_cases"]
    return {
        "version": data["schemathesis_version"],
        "phases": phases,
        "checks": list(CHECKS),
        "max_examples": max_examples,
        "operations": data.get("operations"),
        "cases": cases["generated"],
        "with_failures": cases["with_failures"],
        "server_errors": server,
        "hangs": slow,
        "non_conforming": non_conforming,
        "network_errors": errors,
        "failures": failures,
        "errors": data.get("errors"),
        "running_time_s": data.get("running_time"),
        "passed": proc.returncode == 0 and not failures and not errors,
        "output_tail": proc.stdout[-2000:],
    }
