"""Streaming evaluation: bits per byte / perplexity over whole splits, and task scores.

- :func:`evaluate_tokens`: the split is cut into ``rows`` contiguous streams; each is
  walked segment by segment with the model's memory, so memory use does not grow with
  the length evaluated.
- :func:`evaluate_task`: answer loss, token accuracy and exact match of a synthetic task's
  held-out samples, each sample streamed from a fresh memory.

Both walk segments through :func:`memtx.recurrence.stream`, the one no-grad segment walk.
"""

from __future__ import annotations

import math
import resource
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from memtx.data import as_rows
from memtx.errors import DataError
from memtx.models.protocol import SegmentModel
from memtx.progress import progress_bar
from memtx.recurrence import stream

__all__ = ["EvalResult", "evaluate_task", "evaluate_tokens", "peak_memory_mb"]


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
    """

    tokens: int
    loss: float
    bits_per_token: float
    bpc: float
    ppl: float
    tokens_per_s: float
    peak_memory_mb: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def peak_memory_mb(device: torch.device | str = "cpu") -> float:
    """Peak memory of this process: CUDA allocations on GPU, resident set size on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _sum_loss(logits: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum")


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
    total = torch.zeros((), dtype=torch.float64, device=device)
    memory = model.init_memory(grid.shape[0], device=device)
    segments = -(-inputs.shape[1] // segment_len)  # ceil: the last segment may be shorter
    walk = stream(model, inputs, memory, segment_len=segment_len)
    began = time.perf_counter()
    for start, out in progress_bar(
        walk, total=segments, desc="eval", unit="seg", disable=not progress, leave=False
    ):
        total += _sum_loss(out.logits, targets[:, start : start + out.logits.shape[1]])
    elapsed = time.perf_counter() - began
    model.train(was_training)
    count = targets.numel()
    loss = float(total) / count
    bits = loss / math.log(2)
    return EvalResult(
        tokens=count,
        loss=loss,
        bits_per_token=bits,
        bpc=bits / bytes_per_token,
        ppl=math.exp(min(loss, 700.0)),
        tokens_per_s=count / max(elapsed, 1e-9),
        peak_memory_mb=peak_memory_mb(device),
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
    loss_sum, right, scored, exact, rows = 0.0, 0, 0, 0, 0
    try:
        for first in range(0, samples, batch_size):
            sample = task.sample(min(batch_size, samples - first), generator=generator)
            inputs, targets = sample.inputs.to(device), sample.targets.to(device)
            memory = model.init_memory(inputs.shape[0], device=device)
            wrong = torch.zeros(inputs.shape[0], dtype=torch.long, device=device)  # (B,)
            for start, out in stream(model, inputs, memory):
                y = targets[:, start : start + out.logits.shape[1]]  # (B, L)
                scored_here = y != -100  # (B, L)
                if not scored_here.any():
                    continue
                logits = out.logits.float()
                loss_sum += float(
                    F.cross_entropy(logits[scored_here], y[scored_here], reduction="sum")
                )
                hits = (logits.argmax(-1) == y) & scored_here
                right += int(hits.sum())
                scored += int(scored_here.sum())
                wrong += (scored_here & ~hits).sum(1)
            exact += int((wrong == 0).sum())
            rows += inputs.shape[0]
    finally:
        model.train(was_training)
    return {
        "loss": loss_sum / max(scored, 1),
        "token_accuracy": right / max(scored, 1),
        "exact_match": exact / max(rows, 1),
    }
