"""SIGKILL: a restarted ``memtx serve`` has every completed append, with equal logits."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from memtx.bench.serve import Client, free_port, start_server


@pytest.mark.slow
def test_sigkill_keeps_every_completed_append(rmt_run: Path, tmp_path: Path) -> None:
    port, state = free_port(), tmp_path / "sessions"
    server = start_server(rmt_run, state, port, max_in_memory=1)
    try:
        client, before = Client(port), {}
        for name in ("a", "b"):
            assert client.call("POST", "/sessions", {"id": name})[0] == 201
            for piece in ("Mary went to the kitchen. ", "Where is Mary? " * 7):
                assert client.call("POST", f"/sessions/{name}/append", {"text": piece})[0] == 200
            before[name] = json.loads(client.call("GET", f"/sessions/{name}/logits")[1])
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()
    again = start_server(rmt_run, state, port, max_in_memory=1)
    try:
        client = Client(port)
        for name, expected in before.items():
            assert json.loads(client.call("GET", f"/sessions/{name}/logits")[1]) == expected
        assert Client(port, token=None).call("GET", "/health")[0] == 401
    finally:
        again.terminate()
        again.wait(timeout=60)
