"""Load test of ``memtx serve`` with a real HTTP client on 127.0.0.1, then SIGKILL and restart.

1. Starts ``memtx serve --run RUN`` in its own process (with ``--token`` and a small
   ``--max-sessions-in-memory``) and checks that a request without the token gets 401
   and that every kind of bad request gets its 4xx.
2. ``--clients`` threads (64), each with its own ``http.client`` connection, append text
   to their session and ask for its next-token logits, generate (streamed, not kept)
   every few appends, and open a new session every ``--appends-per-session`` appends, so
   the number of sessions grows past the in-memory bound. It runs for ``--seconds`` or
   ``--max-requests``, whichever comes first, while the server's RSS is sampled.
3. The server is killed with SIGKILL in the middle of that load, restarted over the same
   folder, and every session is checked: its tokens read are those of its last completed
   append (or of the one in flight, if the server finished it) and its next-token logits
   equal, exactly, those the client got after that append.

    python -m memtx.bench.serve --run runs/babilong/rmt-qa1 --out benchmarks/serve.md
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TOKEN", "Client", "free_port", "main", "run_load_test", "start_server"]

TOKEN = "bench-token"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Client:
    """One keep-alive HTTP connection to the server."""

    def __init__(self, port: int, *, token: str | None = TOKEN) -> None:
        self.port, self.token = port, token
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def call(
        self, method: str, path: str, body: Any = None, raw: bytes | None = None
    ) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            self.connection.request(method, path, body=data, headers=headers)
            response = self.connection.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            self.connection.close()
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            raise


def start_server(
    run: Path, state: Path, port: int, *, max_in_memory: int
) -> subprocess.Popen[bytes]:
    """``memtx serve`` in its own process (token :data:`TOKEN`), once its /health answers."""
    command = [
        sys.executable,
        "-m",
        "memtx",
        "serve",
        "--run",
        str(run),
        "--port",
        str(port),
        "--state-dir",
        str(state),
        "--max-sessions-in-memory",
        str(max_in_memory),
        "--token",
        TOKEN,
        "--max-new-tokens",
        "256",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if Client(port).call("GET", "/health")[0] == 200:
                return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not start within 180 s")


@dataclass
class _Record:
    """What one client saw."""

    latencies: dict[str, list[float]] = field(
        default_factory=lambda: {"append": [], "logits": [], "generate": []}
    )
    # session -> (tokens_read, logits) after its last completed append
    done: dict[str, tuple[int, list[float]]] = field(default_factory=dict)
    # session -> tokens_read it would have if the append in flight completed
    in_flight: dict[str, int] = field(default_factory=dict)
    generated_tokens: int = 0
    appended_bytes: int = 0
    errors: int = 0
    error_messages: list[str] = field(default_factory=list)


def _client_loop(
    index: int,
    port: int,
    text: str,
    record: _Record,
    stop: threading.Event,
    budget: list[int],
    *,
    appends_per_session: int,
    generate_every: int,
    lock: threading.Lock,
) -> None:
    client, rng = Client(port), random.Random(index)
    session, appends, tokens_read, made = None, 0, 0, 0
    while not stop.is_set():
        with lock:
            if budget[0] <= 0:
                return
            budget[0] -= 1
        try:
            if session is None or appends >= appends_per_session:
                session, appends, tokens_read, made = f"c{index}-{made}", 0, 0, made + 1
                status, _ = client.call("POST", "/sessions", {"id": session})
                assert status == 201, status
            start = rng.randrange(0, len(text) - 1024)
            chunk = text[start : start + rng.randrange(64, 1024)]
            record.in_flight[session] = tokens_read + len(chunk.encode())
            began = time.perf_counter()
            status, body = client.call("POST", f"/sessions/{session}/append", {"text": chunk})
            record.latencies["append"].append(time.perf_counter() - began)
            assert status == 200, (status, body)
            tokens_read = json.loads(body)["tokens_read"]
            record.appended_bytes += len(chunk.encode())
            began = time.perf_counter()
            status, body = client.call("GET", f"/sessions/{session}/logits")
            record.latencies["logits"].append(time.perf_counter() - began)
            record.done[session] = (tokens_read, json.loads(body)["logits"])
            del record.in_flight[session]
            appends += 1
            if appends % generate_every == 0:
                began = time.perf_counter()
                request = {"prompt": " Where", "max_new_tokens": 16, "keep": False, "seed": index}
                status, body = client.call("POST", f"/sessions/{session}/generate", request)
                record.latencies["generate"].append(time.perf_counter() - began)
                record.generated_tokens += body.count(b"event: token")
        except (OSError, http.client.HTTPException, AssertionError) as exc:
            if stop.is_set():
                return
            record.errors += 1
            record.error_messages = [*record.error_messages[:4], repr(exc)[:200]]


def _bad_requests(port: int) -> list[dict[str, Any]]:
    """Each bad request of the issue, and the status it got."""
    client = Client(port)
    client.call("POST", "/sessions", {"id": "bad-requests", "text": "hello"})
    cases = [
        ("no token", "GET", "/sessions", None, None, Client(port, token=None)),
        ("unknown session", "POST", "/sessions/nope/append", {"text": "x"}, None, client),
        ("malformed JSON", "POST", "/sessions/bad-requests/append", None, b'{"text": ', client),
        (
            "text over the limit",
            "POST",
            "/sessions/bad-requests/append",
            {"text": "x" * (1 << 21)},
            None,
            client,
        ),
        (
            "negative max_new_tokens",
            "POST",
            "/sessions/bad-requests/generate",
            {"max_new_tokens": -1},
            None,
            client,
        ),
        (
            "prompt in a wrong encoding (Latin-1 bytes)",
            "POST",
            "/sessions/bad-requests/generate",
            None,
            b'{"prompt": "caf\xe9"}',
            client,
        ),
        (
            "prompt with a lone surrogate",
            "POST",
            "/sessions/bad-requests/generate",
            None,
            b'{"prompt": "\\udc80"}',
            client,
        ),
        ("not a snapshot", "PUT", "/sessions/x/snapshot", None, b"junk", client),
    ]
    rows = []
    for name, method, path, body, raw, who in cases:
        status, answer = who.call(method, path, body, raw=raw)
        rows.append({"request": name, "status": status, "error": json.loads(answer)["error"]})
    return rows


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_load_test(
    *,
    run: Path,
    clients: int = 64,
    seconds: float = 60,
    max_requests: int = 20000,
    max_in_memory: int = 16,
    appends_per_session: int = 4,
    generate_every: int = 2,
    text_file: Path | None = None,
) -> dict[str, Any]:
    """The load test (see the module docstring); returns its figures."""
    from memtx.bench.generation import rss_mb

    text = (text_file or Path(__file__).resolve().parents[2] / "README.md").read_text()
    text = (text * (1 + 4096 // max(1, len(text))))[: max(len(text), 4096)]
    state = Path(tempfile.mkdtemp(prefix="memtx-serve-bench-"))
    port = free_port()
    server = start_server(run, state, port, max_in_memory=max_in_memory)
    bad = _bad_requests(port)
    records = [_Record() for _ in range(clients)]
    stop, lock, budget = threading.Event(), threading.Lock(), [max_requests]
    threads = [
        threading.Thread(
            target=_client_loop,
            args=(i, port, text, records[i], stop, budget),
            kwargs={
                "appends_per_session": appends_per_session,
                "generate_every": generate_every,
                "lock": lock,
            },
            daemon=True,
        )
        for i in range(clients)
    ]
    rss: list[tuple[float, float, int]] = []
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    while time.perf_counter() - began < seconds and any(t.is_alive() for t in threads):
        sessions = len(list(state.glob("*.mem")))
        rss.append((time.perf_counter() - began, rss_mb(server.pid), sessions))
        time.sleep(0.5)
    elapsed = time.perf_counter() - began
    stop.set()  # no new requests; those in flight are cut by the kill
    server.send_signal(signal.SIGKILL)
    server.wait()
    for thread in threads:
        thread.join(timeout=30)
    restarted = start_server(run, state, port, max_in_memory=max_in_memory)
    try:
        durability = _check_after_restart(port, records)
    finally:
        restarted.terminate()
        restarted.wait(timeout=60)
    latencies: dict[str, list[float]] = {"append": [], "logits": [], "generate": []}
    for record in records:
        for kind, values in record.latencies.items():
            latencies[kind].extend(values)
    requests = sum(len(v) for v in latencies.values())
    return {
        "run": str(run),
        "clients": clients,
        "seconds": round(elapsed, 1),
        "max_sessions_in_memory": max_in_memory,
        "requests": requests,
        "requests_per_s": round(requests / elapsed, 1),
        "appended_bytes_per_s": round(sum(r.appended_bytes for r in records) / elapsed),
        "generated_tokens_per_s": round(sum(r.generated_tokens for r in records) / elapsed, 1),
        "errors": sum(r.errors for r in records),
        "error_examples": [m for r in records for m in r.error_messages][:5],
        "latency_ms": {
            kind: {
                "n": len(v),
                "p50": round(1000 * _percentile(v, 0.5), 1),
                "p99": round(1000 * _percentile(v, 0.99), 1),
                "mean": round(1000 * statistics.fmean(v), 1) if v else None,
            }
            for kind, v in latencies.items()
        },
        "rss_mb": {
            "first": round(rss[0][1], 1),
            "max": round(max(r[1] for r in rss), 1),
            "last": round(rss[-1][1], 1),
        },
        "sessions": {"first": rss[0][2], "last": rss[-1][2]},
        "rss_trace": [(round(t, 1), round(m, 1), s) for t, m, s in rss[:: max(1, len(rss) // 12)]],
        "durability": durability,
        "bad_requests": bad,
    }


def _check_after_restart(port: int, records: list[_Record]) -> dict[str, int]:
    """Every session after the restart: where its last completed append left it?"""
    client = Client(port)
    counts = {"sessions": 0, "equal_logits": 0, "in_flight_completed": 0, "lost": 0, "other": 0}
    for record in records:
        for session, (tokens_read, logits) in record.done.items():
            counts["sessions"] += 1
            status, body = client.call("GET", f"/sessions/{session}/logits")
            if status != 200:
                counts["lost"] += 1
                continue
            got = json.loads(body)
            if got["tokens_read"] == tokens_read and got["logits"] == logits:
                counts["equal_logits"] += 1
            elif got["tokens_read"] == record.in_flight.get(session):
                counts["in_flight_completed"] += 1
            else:
                counts["other"] += 1
    return counts


def _markdown(result: dict[str, Any]) -> str:
    lat, rss, sessions = result["latency_ms"], result["rss_mb"], result["sessions"]
    lines = [
        "# memtx serve under load",
        "",
        f"Run `{result['run']}`; {result['clients']} concurrent clients (one `http.client`"
        f" connection each) on 127.0.0.1 for {result['seconds']} s, "
        f"`--max-sessions-in-memory {result['max_sessions_in_memory']}`. Shared 2-core CPU "
        "(other jobs running): figures are of this machine at that time.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| requests | {result['requests']} ({result['requests_per_s']}/s), "
        f"errors {result['errors']} |",
        f"| text appended | {result['appended_bytes_per_s']:,} bytes/s |",
        f"| tokens generated (streamed) | {result['generated_tokens_per_s']}/s |",
        *(
            f"| {kind} latency p50 / p99 | {v['p50']} / {v['p99']} ms (n={v['n']}) |"
            for kind, v in lat.items()
        ),
        f"| sessions on disk, start -> end | {sessions['first']} -> {sessions['last']} |",
        f"| server RSS first / max / last | {rss['first']} / {rss['max']} / {rss['last']} MB |",
        "",
        "SIGKILL under load, then restart over the same folder:",
        "",
        "| sessions | equal logits after the last completed append "
        "| in-flight append completed | lost | other |",
        "|---|---|---|---|---|",
        "| {sessions} | {equal_logits} | {in_flight_completed} | {lost} | {other} |".format(
            **result["durability"]
        ),
        "",
        "Bad requests:",
        "",
        "| request | status | error |",
        "|---|---|---|",
        *(
            f"| {row['request']} | {row['status']} | {row['error'][:90]} |"
            for row in result["bad_requests"]
        ),
        "",
        "RSS trace (s, MB, sessions): "
        + ", ".join(f"({t}, {m}, {s})" for t, m, s in result["rss_trace"]),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--max-requests", type=int, default=20000)
    parser.add_argument("--max-sessions-in-memory", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None, help="markdown report (and .json)")
    args = parser.parse_args(argv)
    result = run_load_test(
        run=args.run,
        clients=args.clients,
        seconds=args.seconds,
        max_requests=args.max_requests,
        max_in_memory=args.max_sessions_in_memory,
    )
    print(json.dumps(result))
    if args.out is not None:
        args.out.write_text(_markdown(result))
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
