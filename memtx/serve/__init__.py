"""``memtx serve``: an HTTP server over sessions of memory, each a few kilobytes.

A session is what the model holds after reading its text (a :class:`memtx.reading.Context`):
text appended to it is read into its memory, generation continues from it and streams
tokens as server-sent events, and it can be saved and loaded as a snapshot
(:mod:`memtx.snapshot`). Why FastAPI on uvicorn: an ASGI stack that is well kept and
widely used, streams responses natively (server-sent events need nothing more than a
streaming response), validates JSON bodies into typed models and writes the OpenAPI
description from the same code.

- :mod:`memtx.serve.app`: the routes, errors as JSON, the bearer token, limits.
- :mod:`memtx.serve.engine`: the model's one thread; concurrent sessions' ready segments
  are read in one batched forward pass.
- :mod:`memtx.serve.store`: contexts in RAM up to a bound, every session on disk.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI

from memtx.serve.app import Limits, check_token, create_app
from memtx.serve.store import SessionStore

__all__ = ["TOKEN_ENV", "Limits", "SessionStore", "build_app", "create_app", "serve"]

#: the environment variable that sets the bearer token when ``--token`` is not given
TOKEN_ENV = "MEMTX_SERVE_TOKEN"


def build_app(
    run_dir: Path,
    *,
    state_dir: Path | None = None,
    max_sessions_in_memory: int = 1024,
    token: str | None = None,
    limits: Limits | None = None,
    device: str | None = None,
) -> FastAPI:
    """The application serving ``run_dir``'s model; sessions live in ``state_dir``.

    Args:
        run_dir: a trained run folder.
        state_dir: where sessions are kept as snapshots (default ``RUN/sessions``).
        max_sessions_in_memory: contexts held in RAM; the rest are loaded on use.
        token: the bearer token every request needs (default: ``$MEMTX_SERVE_TOKEN``;
            neither: no token).
        limits: request limits.
        device: where the model runs (default: the run's device).

    Raises:
        ConfigError: no trained run in ``run_dir``.
        DataError: a bad token or bound.
    """
    from memtx import snapshot
    from memtx.data import load_tokenizer
    from memtx.train import load_trained

    token = check_token(token if token is not None else os.environ.get(TOKEN_ENV) or None)
    _, model = load_trained(Path(run_dir), device=device)
    store = SessionStore(
        Path(state_dir) if state_dir is not None else Path(run_dir) / "sessions",
        model=model,
        identity=snapshot.identify(model, run=run_dir),
        max_in_memory=max_sessions_in_memory,
    )
    tokenizer = load_tokenizer(Path(run_dir))
    return create_app(model=model, tokenizer=tokenizer, store=store, token=token, limits=limits)


def serve(
    run_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    state_dir: Path | None = None,
    max_sessions_in_memory: int = 1024,
    token: str | None = None,
    limits: Limits | None = None,
    device: str | None = None,
) -> None:
    """Serve ``run_dir``'s model on ``host:port`` until interrupted (see :func:`build_app`)."""
    import uvicorn

    app = build_app(
        run_dir, state_dir=state_dir, max_sessions_in_memory=max_sessions_in_memory,
        token=token, limits=limits, device=device,
    )  # fmt: skip
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
