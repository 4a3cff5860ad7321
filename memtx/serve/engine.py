"""The model's one thread: batched reading for every session, token-by-token generation.

Requests hand work to the :class:`Engine` and wait for it without blocking the event loop.
One thread runs the model, so its use needs no locks and the order of work is plain:

- reading (an append): the full segments of every session waiting to read are stacked
  into one batch ([sessions, k * segment_len], the memories joined along their batch
  dimension with :func:`concat_rows`) and walked with :func:`memtx.recurrence.stream`,
  the one segment walk; k is the fewest segments any of them waits for (at most
  :data:`SEGMENTS_PER_ROUND`), so a long append does not hold back a short one;
- generation: every session generating gets one token per round (round robin), so
  streams interleave fairly; a token's text is handed back as soon as it is decoded.

The pending tail of an append (under one segment) never reaches the thread: it stays in
the session's context until a later append fills the segment.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import Tensor

from memtx.generate import Generation, TextDecoder
from memtx.models.protocol import Memory, SegmentModel, concat_rows, map_memory, select_rows
from memtx.reading import Context, eval_mode
from memtx.recurrence import stream

__all__ = ["SEGMENTS_PER_ROUND", "Engine", "GenerationJob"]

#: segments a reading batch walks before new arrivals may join it
SEGMENTS_PER_ROUND = 4

T = TypeVar("T")


@dataclass
class _ReadJob:
    memory: Memory
    segments: Tensor  # (1, k * segment_len): full segments still to commit
    tail: Tensor  # (1, n): what stays pending afterwards
    tokens_read: int
    future: Future[Context]


@dataclass
class GenerationJob:
    """A generation in the engine; ``emit`` gets text pieces, then the final context.

    ``emit`` is called from the engine's thread with a ``str`` (a piece of text), then
    once with the :class:`Context` generation ended with, or with an exception.
    """

    generation: Generation
    decoder: TextDecoder
    emit: Callable[[str | Context | BaseException], object]
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Stop generating (the client went away); nothing more is emitted."""
        self.cancelled.set()


@dataclass
class _CallJob:
    fn: Callable[[], Any]
    future: Future[Any]


class Engine:
    """Runs ``model`` on one thread for many sessions (see the module docstring).

    Args:
        model: the served model (eval mode).
        max_batch: sessions read in one batched forward pass at most.
    """

    def __init__(self, model: SegmentModel, *, max_batch: int = 64) -> None:
        self.model = model
        self.max_batch = max_batch
        self.segment_len = model.config.segment_len
        self._jobs: queue.Queue[_ReadJob | GenerationJob | _CallJob | None] = queue.Queue()
        self._reads: list[_ReadJob] = []
        self._generations: list[GenerationJob] = []
        self.batches: list[int] = []  # sessions per reading forward (the last 1000)
        self._thread = threading.Thread(target=self._run, name="memtx-engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ submitting

    def read(self, context: Context, tokens: Tensor) -> Future[Context]:
        """The context after reading ``tokens`` [1, N], batched with other sessions' reads."""
        joined = torch.cat([context.pending, tokens], dim=1)
        commit = (joined.shape[1] - 1) // self.segment_len * self.segment_len
        tokens_read = context.tokens_read + tokens.shape[1]
        future: Future[Context] = Future()
        if not commit:  # nothing to commit: no model work
            future.set_result(Context(context.memory, joined.clone(), tokens_read))
            return future
        tail = joined[:, commit:].clone()
        self._jobs.put(_ReadJob(context.memory, joined[:, :commit], tail, tokens_read, future))
        return future

    def generate(self, job: GenerationJob) -> GenerationJob:
        """Start ``job``; its pieces and final context arrive through ``job.emit``."""
        self._jobs.put(job)
        return job

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` on the engine's thread (e.g. next-token logits of a context)."""
        future: Future[T] = Future()
        self._jobs.put(_CallJob(fn, future))
        return future

    @property
    def queued(self) -> int:
        """Work handed in and not yet taken up by the thread."""
        return self._jobs.qsize()

    def close(self) -> None:
        """Finish the work in hand and stop the thread."""
        self._jobs.put(None)
        self._thread.join(timeout=30)

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        while True:
            idle = not self._reads and not self._generations
            try:
                job = self._jobs.get(block=idle)
            except queue.Empty:
                job = _NOTHING
            while job is not _NOTHING:
                if job is None:
                    return self._stop()
                self._accept(job)
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    job = _NOTHING
            if self._reads:
                self._read_round()
            self._generation_round()

    def _accept(self, job: _ReadJob | GenerationJob | _CallJob) -> None:
        if isinstance(job, _ReadJob):
            self._reads.append(job)
        elif isinstance(job, GenerationJob):
            self._generations.append(job)
        else:
            try:
                with eval_mode(self.model):
                    job.future.set_result(job.fn())
            except Exception as exc:
                job.future.set_exception(exc)

    def _read_round(self) -> None:
        batch, self._reads = self._reads[: self.max_batch], self._reads[self.max_batch :]
        waiting = min(job.segments.shape[1] for job in batch) // self.segment_len
        width = min(waiting, SEGMENTS_PER_ROUND) * self.segment_len
        try:
            tokens = torch.cat([job.segments[:, :width] for job in batch], dim=0)  # (S, k*L)
            memory = concat_rows([job.memory for job in batch])
            with eval_mode(self.model):
                for _, out in stream(self.model, tokens, memory):
                    memory = out.memory
        except Exception as exc:
            for job in batch:
                job.future.set_exception(exc)
            return
        self.batches = [*self.batches[-999:], len(batch)]
        for row, job in enumerate(batch):
            # A copy of each row, so no session keeps the whole batch alive.
            job.memory = map_memory(torch.clone, select_rows(memory, row, row + 1))
            job.segments = job.segments[:, width:]
            if job.segments.shape[1]:
                self._reads.append(job)
            else:
                job.future.set_result(Context(job.memory, job.tail, job.tokens_read))

    def _generation_round(self) -> None:
        for job in list(self._generations):
            if job.cancelled.is_set():
                self._generations.remove(job)
                continue
            try:
                piece, done = self._next_piece(job)
                if piece:
                    job.emit(piece)
                if done:
                    self._generations.remove(job)
                    rest = job.decoder.finish()
                    if rest:
                        job.emit(rest)
                    job.emit(job.generation.context)
            except Exception as exc:
                self._generations.remove(job)
                job.emit(exc)

    @staticmethod
    def _next_piece(job: GenerationJob) -> tuple[str, bool]:
        """One token of ``job``: its text and whether generation is over."""
        token = next(job.generation, None)
        if token is None:
            return "", True
        piece = job.decoder.push(int(token[0]))
        return piece, job.decoder.stopped

    def _stop(self) -> None:
        for job in self._reads:
            job.future.cancel()
        for generation in self._generations:
            generation.emit(RuntimeError("the server is shutting down"))
        self._reads, self._generations = [], []


_NOTHING: Any = object()
