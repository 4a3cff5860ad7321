"""Streaming evaluation: bits per byte / perplexity over whole splits of any length.

The split is cut into ``rows`` contiguous streams; each is walked segment by segment with
the model's memory, so memory use does not grow with the length evaluated.
"""

from __future__ import annotations

import math
import resource
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from memtx.data import as_rows
from memtx.errors import DataError
from memtx.models.protocol import SegmentModel

__all__ = ["EvalResult", "evaluate_tokens", "peak_memory_mb"]


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
        DataError: fewer than two tokens.
    """
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
    model.eval()  # type: ignore[attr-defined]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    memory = model.init_memory(grid.shape[0], device=device)
    starts = range(0, inputs.shape[1], segment_len)
    began = time.perf_counter()
    for start in tqdm(starts, desc="eval", unit="seg", disable=not progress, leave=False):
        out = model.step(inputs[:, start : start + segment_len], memory)
        total += _sum_loss(out.logits, targets[:, start : start + segment_len])
        memory = out.memory
    elapsed = time.perf_counter() - began
    model.train(was_training)  # type: ignore[attr-defined]
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
