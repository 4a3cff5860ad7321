"""The CLI verbs over a model's memory: ``read`` (a text into a snapshot) and ``serve``.

Each parses its options and calls one library function (:func:`memtx.reading.read_text`,
:func:`memtx.serve.serve`), imported inside the verb so that ``memtx --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from memtx.cli.common import app, guarded
from memtx.cli.options import at_least, check_device

__all__ = ["read", "serve"]


@app.command()
@guarded
def read(
    run: Annotated[Path, typer.Option(help="Run folder written by memtx train.")],
    input_: Annotated[str, typer.Option("--input", help="Text file to read, or - for stdin.")],
    out: Annotated[Path, typer.Option(help="Snapshot file to write, e.g. doc.mem.")],
    memory: Annotated[
        Optional[Path], typer.Option(help="Continue reading after this snapshot.")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar (tokens/s).")] = True,
) -> None:
    """Read a text of any length into the model's memory (constant memory) and save it as a
    snapshot; continue from it with memtx generate --memory."""

    from memtx.reading import read_text

    result = read_text(run, input_, out=out, memory=memory, progress=progress)
    summary = {
        "out": str(result.out),
        "tokens": result.tokens,
        "seconds": round(result.seconds, 3),
        "tokens_per_s": round(result.tokens_per_s),
        "bytes": result.out.stat().st_size,
    }
    typer.echo(json.dumps(summary))


@app.command()
@guarded
def serve(
    run: Annotated[Path, typer.Option(help="Run folder written by memtx train.")],
    host: Annotated[str, typer.Option(help="Address to listen on (localhost only).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    state_dir: Annotated[
        Optional[Path], typer.Option(help="Where sessions are kept (default RUN/sessions).")
    ] = None,
    max_sessions_in_memory: Annotated[
        int, typer.Option(help="Sessions held in RAM; the others wait on disk.")
    ] = 1024,
    token: Annotated[
        Optional[str],
        typer.Option(help="Bearer token every request needs (default $MEMTX_SERVE_TOKEN)."),
    ] = None,
    max_text_bytes: Annotated[int, typer.Option(help="Largest text of one append or prompt.")] = 1
    << 20,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens one generation may ask.")] = (
        4096
    ),
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda or cuda:N.")] = None,
) -> None:
    """Serve a trained model over HTTP: sessions of memory, generation streamed as
    server-sent events, OpenAPI docs at /docs."""

    from memtx.serve import Limits
    from memtx.serve import serve as run_server

    at_least(port, 0, name="--port")
    at_least(max_sessions_in_memory, 1, name="--max-sessions-in-memory")
    at_least(max_text_bytes, 1, name="--max-text-bytes")
    at_least(max_new_tokens, 1, name="--max-new-tokens")
    if device is not None:
        check_device(device)
    limits = Limits(
        max_body_bytes=max(4 << 20, 2 * max_text_bytes),
        max_text_bytes=max_text_bytes,
        max_new_tokens=max_new_tokens,
    )
    run_server(
        run, host=host, port=port, state_dir=state_dir,
        max_sessions_in_memory=max_sessions_in_memory, token=token, limits=limits, device=device,
    )  # fmt: skip
