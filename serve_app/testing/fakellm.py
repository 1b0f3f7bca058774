"""A small real HTTP server speaking the OpenAI chat API, for testing the expander's LLM client."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse


class FakeLLM:
    """``POST /v1/chat/completions``; ``mode``: ok, empty (valid, no variants), garbage (not JSON),
    html (not a completion), error (503), slow (5 s)."""

    def __init__(self, mode: str = "ok", port: int | None = None) -> None:
        self.mode = mode
        self.requests: list[dict[str, Any]] = []
        self.content: str = json.dumps(
            {"ja": ["認証トークンの有効期限"], "en": ["auth token expiry", "token lifetime", "token TTL"]}
        )
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Any:
            body = await request.json()
            self.requests.append(body)
            if self.mode == "slow":
                await asyncio.sleep(5)
            if self.mode == "error":
                return JSONResponse({"error": "overloaded"}, status_code=503)
            if self.mode == "html":
                return PlainTextResponse("<html>bad gateway</html>")
            content = self.content
            if self.mode == "garbage":
                content = "I think the answer is {not json"
            elif self.mode == "empty":
                content = json.dumps({"ja": [], "en": []})
            return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}

        self.app = app
        self.port = port or _ephemeral_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        """Serve on ``self.port`` (again, after ``stop``)."""
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "fake LLM did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        """Nothing listens on the port until ``start``: the endpoint is down."""
        self.server.should_exit = True
        self.thread.join(5)

    def __enter__(self) -> FakeLLM:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _ephemeral_port() -> int:
    """A free loopback port from the kernel's ephemeral range (above Ray's worker ports 10002-19999)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
