"""memtx serve over HTTP on 127.0.0.1: sessions, streaming, batching, spilling, errors."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from memtx import snapshot
from memtx.data import load_tokenizer
from memtx.errors import DataError
from memtx.reading import Context, next_logits, read, start_context
from memtx.serve import TOKEN_ENV, Limits
from memtx.train import load_trained
from tests.serve.conftest import Server

TEXT = "Mary went to the kitchen. John moved to the garden. Where is Mary? "


def _library_logits(run: Path, text: str) -> torch.Tensor:
    _, model = load_trained(run)
    ids = torch.from_numpy(load_tokenizer(run).encode(text).astype("int64"))[None]
    return next_logits(model, read(model, ids, start_context(model)))[0]


def test_a_session_reads_generates_saves_and_is_deleted(server: Server, rmt_run: Path) -> None:
    status, made = server.request("POST", "/sessions", {"id": "a", "text": TEXT[:20]})
    assert status == 201 and made["tokens_read"] == 20
    status, appended = server.request("POST", "/sessions/a/append", {"text": TEXT[20:]})
    assert status == 200 and appended["tokens_read"] == len(TEXT)
    # What the session holds is the library's read of the same text, exactly.
    status, got = server.request("GET", "/sessions/a/logits")
    assert torch.equal(torch.tensor(got["logits"]), _library_logits(rmt_run, TEXT))

    status, events = server.request(
        "POST", "/sessions/a/generate", {"max_new_tokens": 12, "seed": 3, "keep": False}
    )
    assert status == 200 and events[-1][0] == "done" and events[-1][1]["tokens"] == 12
    streamed = "".join(e[1]["text"] for e in events if e[0] == "token")
    status, whole = server.request(
        "POST", "/sessions/a/generate",
        {"max_new_tokens": 12, "seed": 3, "keep": False, "stream": False},
    )  # fmt: skip
    assert status == 200 and whole["text"] == streamed  # same seed, session unchanged
    status, kept = server.request("POST", "/sessions/a/generate", {"max_new_tokens": 5})
    assert kept[-1][1]["tokens_read"] == len(TEXT) + 5

    status, data = server.request("GET", "/sessions/a/snapshot")
    _, model = load_trained(rmt_run)
    saved = snapshot.from_bytes(data, model=model)
    assert saved.tokens_read == len(TEXT) + 5
    status, again = server.request("GET", "/sessions/a/logits")
    restored = next_logits(model, Context(saved.memory, saved.pending, saved.tokens_read))[0]
    assert torch.equal(torch.tensor(again["logits"]), restored)
    status, copy = server.request("PUT", "/sessions/b/snapshot", raw=data)
    assert status == 200 and copy["tokens_read"] == len(TEXT) + 5

    status, listed = server.request("GET", "/sessions")
    assert [s["id"] for s in listed["sessions"]] == ["a", "b"]
    assert server.request("DELETE", "/sessions/a")[0] == 200
    assert server.request("GET", "/sessions/a")[0] == 404
    status, health = server.request("GET", "/health")
    assert health["sessions"] == 1 and "rmt" in health["model"]
    assert server.request("GET", "/openapi.json")[1]["info"]["title"] == "memtx serve"


def test_concurrent_appends_share_a_forward_pass(server: Server, rmt_run: Path) -> None:
    texts = [TEXT * (3 + i) for i in range(6)]
    for i in range(len(texts)):
        server.request("POST", "/sessions", {"id": f"s{i}"})
    calls = [("POST", f"/sessions/s{i}/append", {"text": t}) for i, t in enumerate(texts)]
    threads = [threading.Thread(target=server.request, args=call) for call in calls]
    engine, hold = server.app.state.engine, threading.Event()
    engine.call(hold.wait)  # the model's thread waits until every append is queued
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while engine.queued < len(texts) and time.monotonic() < deadline:
        time.sleep(0.01)
    hold.set()
    for thread in threads:
        thread.join()
    assert engine.batches[0] == len(texts)
    for i, text in enumerate(texts):
        got = torch.tensor(server.request("GET", f"/sessions/s{i}/logits")[1]["logits"])
        # Batched rows equal the single read up to the rounding of another matmul shape.
        torch.testing.assert_close(got, _library_logits(rmt_run, text), rtol=1e-4, atol=1e-5)


def test_sessions_beyond_the_bound_wait_on_disk_and_come_back(
    rmt_run: Path, tmp_path: Path
) -> None:
    server = Server(rmt_run, tmp_path / "s", max_sessions_in_memory=2)
    try:
        before = {}
        for i in range(5):
            server.request("POST", "/sessions", {"id": f"s{i}", "text": TEXT * (i + 1)})
            before[i] = server.request("GET", f"/sessions/s{i}/logits")[1]["logits"]
        assert server.app.state.store.count_in_memory == 2
        for i in range(5):
            assert server.request("GET", f"/sessions/s{i}/logits")[1]["logits"] == before[i]
        assert server.app.state.store.loads >= 3
    finally:
        server.close()
    # A new server over the same folder serves every session where it was left.
    again = Server(rmt_run, tmp_path / "s", max_sessions_in_memory=2)
    try:
        for i in range(5):
            assert again.request("GET", f"/sessions/s{i}/logits")[1]["logits"] == before[i]
    finally:
        again.close()


@pytest.mark.parametrize("from_env", [False, True])
def test_a_token_is_required_when_set(
    rmt_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, from_env: bool
) -> None:
    if from_env:
        monkeypatch.setenv(TOKEN_ENV, "sekrit")
    server = Server(rmt_run, tmp_path / "s", token=None if from_env else "sekrit")
    server.token = "sekrit"
    try:
        status, body = server.request("GET", "/health", token=None)
        assert status == 401 and "Bearer" in body["error"]
        assert server.request("GET", "/openapi.json", token=None)[0] == 401
        assert server.request("GET", "/sessions", token="wrong")[0] == 401
        assert server.request("GET", "/health")[0] == 200
    finally:
        server.close()


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("POST", "/sessions/nope/append", {"text": "x"}, 404, "no session 'nope'"),
        ("GET", "/sessions/nope/logits", None, 404, "no session"),
        ("POST", "/sessions/a/generate", {"max_new_tokens": -1}, 422, "max_new_tokens"),
        ("POST", "/sessions/a/generate", {"max_new_tokens": 65}, 422, "limit is 64"),
        ("POST", "/sessions/a/generate", {"top_p": 0}, 422, "top_p"),
        ("POST", "/sessions/a/append", {"text": "x" * 5000}, 413, "limit is 4096"),
        ("POST", "/sessions/a/append", {}, 422, "text"),
        ("POST", "/sessions/a/append", b'{"text": ', 400, "not valid JSON"),
        ("POST", "/sessions/a/append", b'{"text": "\xff\xfe"}', 400, "not valid JSON"),
        ("POST", "/sessions/a/append", b'{"text": "\\ud800"}', 400, "not valid UTF-8"),
        ("POST", "/sessions", {"id": "a"}, 409, "exists already"),
        ("POST", "/sessions", {"id": "../etc"}, 400, "session id"),
        ("PUT", "/sessions/b/snapshot", b"not a snapshot", 400, "not a memtx snapshot"),
        ("GET", "/sessions/nope/snapshot", None, 404, "no session"),
        ("DELETE", "/sessions/nope", None, 404, "no session"),
    ],
)
def test_every_bad_request_gets_its_4xx(
    server: Server, method: str, path: str, body: object, status: int, message: str
) -> None:
    server.request("POST", "/sessions", {"id": "a", "text": "hello"})
    raw = body if isinstance(body, bytes) else None
    headers = {"Content-Type": "application/json"} if raw is not None else None
    got, answer = server.request(
        method, path, None if raw is not None else body, raw=raw, headers=headers
    )
    assert got == status and message in answer["error"]


def test_a_snapshot_of_another_model_gets_409(
    server: Server, rmt_run: Path, tmp_path: Path
) -> None:
    from tests.models.small import small_model

    other = small_model("rmt").eval()
    data = snapshot.to_bytes(
        read(other, torch.zeros(1, 3, dtype=torch.long), start_context(other)), model=other
    )
    status, body = server.request("PUT", "/sessions/x/snapshot", raw=data)
    assert status == 409 and "cannot be loaded into the model rmt" in body["error"]


def test_limits_are_checked(rmt_run: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="max-sessions-in-memory"):
        Server(rmt_run, tmp_path / "s", max_sessions_in_memory=0)
    assert Limits().max_new_tokens > 0
