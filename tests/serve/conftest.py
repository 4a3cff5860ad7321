"""A tiny trained RMT run, and the server on 127.0.0.1 in a thread with a real HTTP client."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from memtx.serve import Limits, build_app
from memtx.train import train
from tests.helpers import tiny_run


@pytest.fixture(scope="session")
def rmt_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serve") / "run"
    settings = ["model.name=rmt", "model.memory_tokens=4", "train.steps=2", "train.rollout=1"]
    train(tiny_run(*settings), out_dir=out, progress=False)
    return out


class Server:
    """``memtx serve``'s app under uvicorn in a thread, and a client for it."""

    def __init__(self, run: Path, state: Path, *, token: str | None = None, **kwargs: Any):
        self.app = build_app(run, state_dir=state, token=token, **kwargs)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.token = token

    def request(
        self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
        token: str | None = "default", headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:  # fmt: skip
        """(status, JSON or SSE events or bytes) of one request."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        sent = dict(headers or {})
        token = self.token if token == "default" else token
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        if body is not None and raw is None:
            sent["Content-Type"] = "application/json"
        connection.request(method, path, body=data, headers=sent)
        response = connection.getresponse()
        payload = response.read()
        kind = response.getheader("content-type", "")
        connection.close()
        if kind.startswith("application/json"):
            return response.status, json.loads(payload)
        if kind.startswith("text/event-stream"):
            return response.status, parse_events(payload.decode())
        return response.status, payload

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def parse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


@pytest.fixture
def server(rmt_run: Path, tmp_path: Path) -> Iterator[Server]:
    running = Server(
        rmt_run, tmp_path / "sessions", limits=Limits(max_text_bytes=4096, max_new_tokens=64)
    )
    yield running
    running.close()
