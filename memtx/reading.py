"""Reading into memory: a :class:`Context` is what a model holds after reading a text.

:func:`read` walks any number of tokens into a context with
:func:`memtx.recurrence.stream` (the one no-grad segment walk): full segments are
committed to the memory, the last 1..segment_len tokens stay pending (the last one
predicts the next token), so reading a text in pieces gives the memory of reading it at
once, and a context never holds more than one segment of tokens. :func:`read_text` reads
a file (or stdin) of any length in constant memory and saves the context as a snapshot
(:mod:`memtx.snapshot`); generation (:mod:`memtx.generate`) continues from a context.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch
from torch import Tensor

from memtx.errors import DataError
from memtx.models.protocol import Memory, SegmentModel, memory_leaves
from memtx.recurrence import stream

__all__ = [
    "Context",
    "ReadResult",
    "eval_mode",
    "next_logits",
    "read",
    "read_text",
    "start_context",
]

#: bytes of input tokenized at a time by :func:`read_text`
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Context:
    """What a model holds after reading: a value, like the memory it contains.

    Attributes:
        memory: the memory after every committed segment.
        pending: [B, n] tokens read but not yet committed, 0 <= n <= segment_len; n >= 1
            once anything was read (the last pending token predicts the next one).
        tokens_read: tokens read per row, committed and pending.
    """

    memory: Memory
    pending: Tensor
    tokens_read: int = 0

    @property
    def batch_size(self) -> int:
        return self.pending.shape[0]


@contextlib.contextmanager
def eval_mode(model: SegmentModel) -> Iterator[None]:
    """Eval mode and no grad for the block; the model's mode is given back after it."""
    was_training = model.training
    if was_training:
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if was_training:
            model.train(True)


def start_context(
    model: SegmentModel, *, batch_size: int = 1, device: torch.device | str | None = None
) -> Context:
    """The context before anything is read: the model's initial memory, no pending tokens."""
    memory = model.init_memory(batch_size, device=device)
    where = memory_leaves(memory)[0].device
    return Context(memory, torch.zeros(batch_size, 0, dtype=torch.long, device=where), 0)


def read(model: SegmentModel, tokens: Tensor, context: Context) -> Context:
    """The context after reading ``tokens`` [B, N] (any N >= 0) after ``context``.

    Full segments are committed to the memory; the last 1..segment_len tokens stay
    pending, so reading a text in pieces gives the memory of reading it at once.

    Raises:
        DataError: ``tokens`` is not an integer [B, N] tensor of the context's batch size.
    """
    if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.dtype.is_floating_point:
        shape = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise DataError(f"tokens to read must be an integer tensor [batch, length], got {shape}")
    if tokens.shape[0] != context.batch_size:
        raise DataError(
            f"the context holds {context.batch_size} rows, got tokens for {tokens.shape[0]}"
        )
    if tokens.shape[1] == 0:
        return context
    joined = torch.cat([context.pending, tokens.to(context.pending.device, torch.long)], dim=1)
    segment_len = model.config.segment_len
    commit = (joined.shape[1] - 1) // segment_len * segment_len
    memory = context.memory
    if commit:
        with eval_mode(model):
            for _, out in stream(model, joined[:, :commit], memory):
                memory = out.memory
    # A copy, not a view: the pending tail must not keep a long input alive.
    return Context(memory, joined[:, commit:].clone(), context.tokens_read + tokens.shape[1])


def next_logits(model: SegmentModel, context: Context) -> Tensor:
    """Logits [B, V] for the token after ``context`` (its pending segment recomputed).

    Raises:
        DataError: nothing was read yet (no token to predict from).
    """
    if context.pending.shape[1] == 0:
        raise DataError("nothing was read yet: there is no token to predict the next one from")
    with eval_mode(model):
        return model.step(context.pending, context.memory).logits[:, -1]


@dataclass(frozen=True)
class ReadResult:
    """What :func:`read_text` did: tokens read, time taken, the snapshot written."""

    tokens: int
    seconds: float
    out: Path

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def _chunks(handle: BinaryIO, *, cut_at_newline: bool) -> Iterator[bytes]:
    """Pieces of about :data:`CHUNK_BYTES`; BPE pieces end after a newline where one exists
    (so a word is never split between two encodes)."""
    carry = b""
    while block := handle.read(CHUNK_BYTES):
        data = carry + block
        cut = data.rfind(b"\n") + 1 if cut_at_newline else len(data)
        if cut <= 0:
            cut = len(data)
        carry = data[cut:]
        if cut:
            yield data[:cut]
    if carry:
        yield carry


def read_text(
    run_dir: Path,
    source: Path | str,
    *,
    out: Path,
    memory: Path | None = None,
    progress: bool = True,
) -> ReadResult:
    """Read a text file (``"-"``: stdin) of any length into a run's model; save a snapshot.

    The text is tokenized and read a chunk at a time, so memory stays that of one chunk
    plus the model's memory, whatever the length.

    Args:
        run_dir: a trained run folder.
        source: the file to read, or ``"-"`` for stdin.
        out: where to write the snapshot.
        memory: a snapshot to continue reading after (else the model's initial memory).
        progress: show a progress bar with tokens/s.

    Raises:
        DataError: a missing input, an empty input, a snapshot of another model.
        ConfigError: a run folder without a checkpoint.
    """
    from memtx import snapshot
    from memtx.data import load_tokenizer
    from memtx.progress import progress_bar
    from memtx.train import load_trained

    path = None if str(source) == "-" else Path(source)
    if path is not None and not path.is_file():
        raise DataError(f"--input {path} is not a file")
    out = Path(out)
    if out.is_dir() or not out.parent.is_dir():
        raise DataError(f"--out {out} must be a file name in an existing folder")
    _, model = load_trained(Path(run_dir))
    tokenizer = load_tokenizer(Path(run_dir))
    identity = snapshot.identify(model, run=run_dir)
    if memory is not None:
        saved = snapshot.load(memory, model=model, identity=identity)
        context = Context(saved.memory, saved.pending, saved.tokens_read)
    else:
        context = start_context(model, device=model.device)
    start_tokens, began = context.tokens_read, time.perf_counter()
    handle = sys.stdin.buffer if path is None else path.open("rb")
    total = path.stat().st_size if path is not None else None
    try:
        with progress_bar(
            total=total, desc="read", unit="B", unit_scale=True, disable=not progress
        ) as bar:
            for chunk in _chunks(handle, cut_at_newline=tokenizer.kind != "byte"):
                ids = torch.from_numpy(tokenizer.encode(chunk).astype("int64"))[None]
                context = read(model, ids.to(model.device), context)
                bar.update(len(chunk))
                seconds = time.perf_counter() - began
                bar.set_postfix_str(
                    f"{(context.tokens_read - start_tokens) / max(seconds, 1e-9):,.0f} tokens/s"
                )
    finally:
        if path is not None:
            handle.close()
    tokens = context.tokens_read - start_tokens
    if tokens == 0:
        raise DataError(f"--input {source} is empty: nothing to read")
    snapshot.save(out, model=model, context=context, identity=identity)
    return ReadResult(tokens, time.perf_counter() - began, out)
