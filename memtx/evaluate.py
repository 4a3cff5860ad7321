"""Streaming evaluation: bits per byte / perplexity over whole splits, and task scores.

- :func:`evaluate_tokens`: the split is cut into ``rows`` contiguous streams; each is
  walked segment by segment with the model's memory, so memory use does not grow with
  the length evaluated.
- :func:`evaluate_task`: answer loss, token accuracy and exact match of a synthetic task's
  held-out samples, each sample streamed from a fresh memory.
- :func:`evaluate_haystacks`: the same figures for long haystacks (BABILong-style tasks up
  to millions of tokens): a batch of rows kept as bytes, streamed together a chunk of
  segments at a time, so memory holds one chunk of int64 tokens and the model's memory.

Both walk segments through :func:`memtx.recurrence.stream`, the one no-grad segment walk.
"""

from __future__ import annotations

import math
import resource
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from memtx.data import as_rows
from memtx.errors import DataError
from memtx.models.protocol import SegmentModel
from memtx.progress import ProgressBar, progress_bar
from memtx.recurrence import stream

__all__ = [
    "EvalResult",
    "RowTask",
    "SupportTask",
    "evaluate_haystacks",
    "evaluate_task",
    "evaluate_tokens",
    "peak_memory_mb",
]


@dataclass(frozen=True)
class EvalResult:
    """Evaluation figures.

    Attributes:
        tokens: tokens scored.
        loss: mean cross-entropy in nats per token.
        bits_per_token: ``loss / ln 2``.
        bpc: bits per byte of text (equals ``bits_per_token`` for byte tokens).
        ppl: perplexity per token, ``exp(loss)``.
        tokens_per_s: scoring throughput.
        peak_memory_mb: peak process memory (RSS, or CUDA allocations on GPU).
        bits_by_position: bits per token at each position of a segment, averaged over
            the segments (a segment's first positions lean most on the memory: a model
            that ignores it scores them worst; empty when not measured).
    """

    tokens: int
    loss: float
    bits_per_token: float
    bpc: float
    ppl: float
    tokens_per_s: float
    peak_memory_mb: float
    bits_by_position: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def peak_memory_mb(device: torch.device | str = "cpu") -> float:
    """Peak memory of this process: CUDA allocations on GPU, resident set size on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class _AnswerScore:
    """Sums of answer loss, hits and fully right rows, segment by segment."""

    def __init__(self) -> None:
        self.loss_sum, self.right, self.scored, self.exact, self.rows = 0.0, 0, 0, 0, 0
        self.wrong: Tensor | None = None  # (B,) wrong answer tokens of the current rows

    def start_rows(self, batch: int, device: torch.device) -> None:
        self.wrong = torch.zeros(batch, dtype=torch.long, device=device)

    def add(self, logits: Tensor, y: Tensor, scored_here: Tensor) -> None:
        """Score one segment: ``logits`` [B, L, V], targets ``y`` and the mask [B, L]."""
        assert self.wrong is not None
        logits = logits.float()
        self.loss_sum += float(
            F.cross_entropy(logits[scored_here], y[scored_here], reduction="sum")
        )
        hits = (logits.argmax(-1) == y) & scored_here
        self.right += int(hits.sum())
        self.scored += int(scored_here.sum())
        self.wrong += (scored_here & ~hits).sum(1)

    def end_rows(self) -> Tensor:
        """Close the current rows; returns which of them were exactly right, [B] bool."""
        assert self.wrong is not None
        right = self.wrong == 0
        self.exact += int(right.sum())
        self.rows += self.wrong.shape[0]
        return right

    def result(self) -> dict[str, float]:
        return {
            "loss": self.loss_sum / max(self.scored, 1),
            "token_accuracy": self.right / max(self.scored, 1),
            "exact_match": self.exact / max(self.rows, 1),
        }


@torch.no_grad()
def evaluate_tokens(
    model: SegmentModel,
    tokens: np.ndarray,
    *,
    rows: int = 8,
    max_tokens: int = 0,
    bytes_per_token: float = 1.0,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> EvalResult:
    """Score a token stream with the model's memory, streamed segment by segment.

    Args:
        model: any segment model (put in eval mode here, restored afterwards).
        tokens: 1-D token ids of the whole split.
        rows: parallel streams the split is cut into.
        max_tokens: score only about this many tokens (0: all of them).
        bytes_per_token: text bytes per token, to report bits per byte for BPE.
        device: where to run (default: the model's device).
        progress: show a progress bar.

    Raises:
        DataError: fewer than two tokens, ``rows`` < 1 or ``max_tokens`` < 0.
    """
    if max_tokens < 0:
        raise DataError(f"max_tokens must be >= 0 (0: all), got {max_tokens}")
    if max_tokens:
        tokens = tokens[: max_tokens + rows]
    grid = as_rows(tokens, rows=rows)  # (R, n)
    if grid.shape[1] < 2:
        raise DataError(f"evaluation needs at least 2 tokens per row, got {grid.shape[1]}")
    device = torch.device(device) if device is not None else next(model.parameters()).device  # type: ignore[attr-defined]
    grid = grid.to(device)
    inputs, targets = grid[:, :-1], grid[:, 1:]
    segment_len = model.config.segment_len
    was_training = getattr(model, "training", False)
    model.eval()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    by_position = torch.zeros(segment_len, dtype=torch.float64, device=device)  # loss sums
    counts = torch.zeros(segment_len, dtype=torch.float64, device=device)
    memory = model.init_memory(grid.shape[0], device=device)
    segments = -(-inputs.shape[1] // segment_len)  # ceil: the last segment may be shorter
    walk = stream(model, inputs, memory, segment_len=segment_len)
    began = time.perf_counter()
    for start, out in progress_bar(
        walk, total=segments, desc="eval", unit="seg", disable=not progress, leave=False
    ):
        length = out.logits.shape[1]
        losses = F.cross_entropy(
            out.logits.float().transpose(1, 2), targets[:, start : start + length], reduction="none"
        )  # (R, length)
        by_position[:length] += losses.sum(0)
        counts[:length] += losses.shape[0]
    elapsed = time.perf_counter() - began
    model.train(was_training)
    count = targets.numel()
    loss = float(by_position.sum()) / count
    per_position = (by_position / counts.clamp(min=1) / math.log(2)).tolist()
    bits = loss / math.log(2)
    return EvalResult(
        tokens=count,
        loss=loss,
        bits_per_token=bits,
        bpc=bits / bytes_per_token,
        ppl=math.exp(min(loss, 700.0)),
        tokens_per_s=count / max(elapsed, 1e-9),
        peak_memory_mb=peak_memory_mb(device),
        bits_by_position=[b for b, n in zip(per_position, counts.tolist(), strict=True) if n],
    )


@torch.no_grad()
def evaluate_task(
    model: SegmentModel,
    task: Any,
    *,
    samples: int,
    device: torch.device | str,
    seed: int,
    batch_size: int = 64,
) -> dict[str, float]:
    """Answer loss, token accuracy and exact match on ``samples`` held-out samples.

    Streams each sample segment by segment with the model's memory and scores only the
    answer positions, so the cost in memory does not grow with the sample's length.

    Args:
        model: any segment model (put in eval mode here, restored afterwards).
        task: a synthetic task (:mod:`memtx.data.tasks`): ``task.sample(n, generator=...)``
            returns ``inputs`` and ``targets`` [n, N], ``-100`` where nothing is scored.
        samples: how many held-out samples to score.
        device: where to run.
        seed: seeds the samples' generator, so every call scores the same samples.
        batch_size: samples per batch.

    Returns:
        ``loss`` (mean cross-entropy per answer token, nats), ``token_accuracy`` (share of
        answer tokens predicted right) and ``exact_match`` (share of samples with every
        answer token right).

    Raises:
        DataError: ``samples`` or ``batch_size`` < 1.
    """
    if samples < 1:
        raise DataError(f"samples must be >= 1, got {samples}")
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    was_training = getattr(model, "training", False)
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    score = _AnswerScore()
    try:
        for first in range(0, samples, batch_size):
            sample = task.sample(min(batch_size, samples - first), generator=generator)
            inputs, targets = sample.inputs.to(device), sample.targets.to(device)
            memory = model.init_memory(inputs.shape[0], device=device)
            score.start_rows(inputs.shape[0], device)
            for start, out in stream(model, inputs, memory):
                y = targets[:, start : start + out.logits.shape[1]]  # (B, L)
                scored_here = y != -100  # (B, L)
                if scored_here.any():
                    score.add(out.logits, y, scored_here)
            score.end_rows()
    finally:
        model.train(was_training)
    return score.result()


class RowTask(Protocol):
    """A task whose rows come as compact arrays with the answer near the end
    (``BabilongTask``)."""

    total_len: int

    def token_rows(self, batch: int, generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Tokens [B, N+1] (uint8 or uint16) and each row's answer as targets
        ``first .. stop - 1`` [B, 2] (target j is token j + 1)."""
        ...


@runtime_checkable
class SupportTask(RowTask, Protocol):
    """A :class:`RowTask` that also says where each row's supporting fact ends."""

    def support_rows(
        self, batch: int, generator: torch.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``token_rows``'s rows and the index [B] of the earliest supporting fact's last
        token."""
        ...


@torch.no_grad()
def evaluate_haystacks(
    model: SegmentModel,
    task: RowTask,
    *,
    samples: int,
    device: torch.device | str,
    seed: int,
    batch_size: int = 32,
    chunk_segments: int = 64,
    bar: ProgressBar[Any] | None = None,
    by_distance: bool = False,
) -> dict[str, float]:
    """:func:`evaluate_task`'s figures for long rows, in memory that does not grow with N.

    A batch of ``batch_size`` rows is drawn compact (N+1 bytes or uint16 ids a row) and streamed
    together through :func:`memtx.recurrence.stream`, ``chunk_segments`` segments of int64
    tokens at a time, the memory carried from chunk to chunk. With the same ``seed`` and
    ``batch_size`` the samples and the figures equal :func:`evaluate_task`'s.

    Args:
        model: any segment model (put in eval mode here, restored afterwards).
        task: compact rows with the answer last (:class:`RowTask`).
        samples: how many held-out samples to score.
        device: where to run.
        seed: seeds the samples' generator.
        batch_size: rows streamed together.
        chunk_segments: segments converted to int64 and moved to ``device`` at a time.
        bar: a progress bar to advance by the tokens read.
        by_distance: also score the rows by how many segments back their earliest
            supporting fact ends (0: in the question's own segment), for a task with
            ``support_rows`` (:class:`SupportTask`); the rows are the same.

    Returns:
        ``loss``, ``token_accuracy``, ``exact_match`` (as :func:`evaluate_task`), and
        ``tokens`` (tokens read) and ``tokens_per_s`` (reading throughput, row
        generation included). With ``by_distance``, for each distance d that occurs,
        ``exact_match_back_<d>`` and ``samples_back_<d>``.

    Raises:
        DataError: ``samples``, ``batch_size`` or ``chunk_segments`` < 1; ``by_distance``
            for a task without ``support_rows``.
    """
    for name, value in (("samples", samples), ("batch_size", batch_size)):
        if value < 1:
            raise DataError(f"{name} must be >= 1, got {value}")
    if chunk_segments < 1:
        raise DataError(f"chunk_segments must be >= 1, got {chunk_segments}")
    if by_distance and not isinstance(task, SupportTask):
        raise DataError(
            f"by_distance needs a task that says where its facts are (support_rows); "
            f"{type(task).__name__} does not"
        )
    device = torch.device(device)
    segment_len = model.config.segment_len
    chunk = chunk_segments * segment_len
    back: dict[int, list[int]] = {}  # segments back -> [right, rows]
    was_training = getattr(model, "training", False)
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    score, read = _AnswerScore(), 0
    began = time.perf_counter()
    try:
        for first in range(0, samples, batch_size):
            rows = min(batch_size, samples - first)
            if by_distance:
                tokens, spans, support = cast(SupportTask, task).support_rows(rows, generator)
                distance = spans[:, 0] // segment_len - support // segment_len  # (B,)
            else:
                tokens, spans = task.token_rows(rows, generator)
            batch, length = tokens.shape[0], tokens.shape[1] - 1  # N inputs per row
            # target j (= token j + 1) is scored when it is among the row's answer tokens
            answer_from, answer_to = torch.from_numpy(spans).to(device).unbind(1)  # (B,) each
            memory = model.init_memory(batch, device=device)
            score.start_rows(batch, device)
            for begin in range(0, length, chunk):
                end = min(begin + chunk, length)
                piece = torch.from_numpy(tokens[:, begin : end + 1]).to(device).long()
                for start, out in stream(model, piece[:, :-1], memory):
                    memory = out.memory
                    width, at = out.logits.shape[1], begin + start
                    if at + width <= int(answer_from.min()):
                        continue  # no answer token in this segment
                    positions = torch.arange(at, at + width, device=device)
                    scored_here = (positions[None, :] >= answer_from[:, None]) & (
                        positions[None, :] < answer_to[:, None]
                    )  # (B, L)
                    score.add(out.logits, piece[:, start + 1 : start + 1 + width], scored_here)
                if bar is not None:
                    bar.update(batch * (end - begin))
            right = score.end_rows()
            if by_distance:
                for d, ok in zip(distance.tolist(), right.tolist(), strict=True):
                    cell = back.setdefault(d, [0, 0])
                    cell[0], cell[1] = cell[0] + ok, cell[1] + 1
            read += batch * length
    finally:
        model.train(was_training)
    by_back = {}
    for d, (hits, rows) in sorted(back.items()):
        by_back[f"exact_match_back_{d}"] = hits / rows
        by_back[f"samples_back_{d}"] = float(rows)
    return {
        **score.result(),
        "tokens": float(read),
        "tokens_per_s": read / max(time.perf_counter() - began, 1e-9),
        **by_back,
    }
