"""What every task shares: the sample, the seeded generator, the checks of lengths, scoring.

A task makes byte-level sequences (vocabulary 256) as language-modelling pairs with
teacher forcing; a :class:`Task` subclass writes only ``_sequences``: the whole sequences
``x`` [B, N+1] and where the answer is in them. :meth:`Task.sample` turns those into
``inputs = x[:, :N]`` and ``targets = x[:, 1:]`` on the answer, ``-100`` elsewhere, and
:func:`answer_accuracy` scores a model's logits on exactly those tokens.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from memtx.errors import ConfigError, DataError

__all__ = [
    "IGNORE_INDEX",
    "VOCAB_SIZE",
    "Task",
    "TaskSample",
    "answer_accuracy",
    "at_least",
    "task_lengths",
]

IGNORE_INDEX = -100
VOCAB_SIZE = 256


@dataclass(frozen=True)
class TaskSample:
    """A batch of a task.

    Attributes:
        inputs: [B, N] long token ids.
        targets: [B, N] long; the answer token that follows ``inputs[:, i]``, else -100.
        answer_mask: [B, N] bool; True exactly where ``targets`` is scored.
    """

    inputs: Tensor
    targets: Tensor
    answer_mask: Tensor

    def to(self, device: torch.device | str) -> TaskSample:
        """The same sample on ``device``."""
        return TaskSample(
            self.inputs.to(device), self.targets.to(device), self.answer_mask.to(device)
        )


class Task(ABC):
    """A seeded generator of :class:`TaskSample` batches of one synthetic task.

    Attributes:
        name: the task's name in :data:`TASKS`.
        total_len: N, input tokens per row (``segments * segment_len``).
        segments: segments per row (1 when only ``total_len`` was given).
        segment_len: tokens per segment.
        vocab_size: 256 (bytes).
        answer_len: scored tokens per row.
        chance: the token accuracy of guessing uniformly among the answer symbols.
    """

    name: ClassVar[str] = ""
    vocab_size: int = VOCAB_SIZE
    answer_len: int
    chance: float

    def __init__(self, *, total_len: int, segments: int, segment_len: int, seed: int) -> None:
        self.total_len, self.segments, self.segment_len = total_len, segments, segment_len
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def sample(
        self, batch_size: int, *, generator: torch.Generator | None = None, seed: int | None = None
    ) -> TaskSample:
        """A batch of ``batch_size`` rows.

        Randomness comes from ``generator``, else a fresh generator seeded with ``seed``,
        else the task's own generator (seeded at creation; it advances, so successive calls
        give new batches in a reproducible order).
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size!r}")
        if generator is not None and seed is not None:
            raise ConfigError("pass generator or seed, not both")
        if generator is None:
            generator = torch.Generator().manual_seed(seed) if seed is not None else self.generator
        sequence, answer = self._sequences(batch_size, generator)  # (B, N+1) each
        inputs, answer_mask = sequence[:, :-1], answer[:, 1:]
        targets = sequence[:, 1:].masked_fill(~answer_mask, IGNORE_INDEX)
        return TaskSample(inputs.contiguous(), targets.contiguous(), answer_mask.contiguous())

    @abstractmethod
    def _sequences(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """The whole sequences [B, N+1] (long) and where the answer tokens are [B, N+1]."""

    def _check_question_fits(self, question_len: int) -> None:
        needed = question_len + self.answer_len
        if needed > self.segment_len:
            raise ConfigError(
                f"task {self.name!r}: the question and answer ({question_len} + "
                f"{self.answer_len} = {needed} tokens) must fit in one segment, but "
                f"segment_len is {self.segment_len}"
            )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(total_len={self.total_len}, segments={self.segments}, "
            f"segment_len={self.segment_len}, seed={self.seed})"
        )


def at_least(task: str, name: str, value: Any, minimum: int) -> None:
    """Refuse a parameter ``name`` of ``task`` that is not an integer >= ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"task {task!r}: {name} must be an integer >= {minimum}, got {value!r}")


def task_lengths(
    total_len: int | None, segments: int | None, segment_len: int | None
) -> tuple[int, int, int]:
    """(total_len, segments, segment_len) from any two of them (or total_len alone)."""
    given = {"total_len": total_len, "segments": segments, "segment_len": segment_len}
    for name, value in given.items():
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    if total_len is None:
        if segments is None or segment_len is None:
            raise ConfigError("give total_len, or segments and segment_len")
        return segments * segment_len, segments, segment_len
    if segments is None and segment_len is None:
        return total_len, 1, total_len
    if segment_len is None:
        assert segments is not None
        segment_len = total_len // segments
    segments = total_len // segment_len if segments is None else segments
    if segments * segment_len != total_len:
        raise ConfigError(
            f"total_len ({total_len}) must equal segments * segment_len "
            f"({segments} * {segment_len} = {segments * segment_len})"
        )
    return total_len, segments, segment_len


def answer_accuracy(logits: Tensor, sample: TaskSample) -> dict[str, float]:
    """Greedy accuracy on the answer tokens.

    Args:
        logits: [B, N, V]; ``logits[:, i]`` predicts ``targets[:, i]``.
        sample: the batch the logits belong to.

    Returns:
        ``token_accuracy`` (share of answer tokens predicted right) and ``exact_match``
        (share of rows whose answer tokens are all right).
    """
    if not isinstance(logits, Tensor) or logits.dim() != 3:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise DataError(f"logits must have shape [batch, length, vocab], got {shape}")
    if logits.shape[:2] != sample.targets.shape:
        raise DataError(
            f"logits {tuple(logits.shape)} do not match the sample's targets "
            f"{tuple(sample.targets.shape)}"
        )
    mask = sample.answer_mask.to(logits.device)
    correct = (logits.argmax(dim=-1) == sample.targets.to(logits.device)) & mask
    scored = int(mask.sum())
    token_accuracy = float(correct.sum()) / scored if scored else math.nan
    rows = mask.any(dim=1)
    exact = (correct == mask).all(dim=1) & rows
    exact_match = float(exact.sum()) / int(rows.sum()) if bool(rows.any()) else math.nan
    return {"token_accuracy": token_accuracy, "exact_match": exact_match}
