"""Synthetic long-range tasks: copy, reverse, associative recall, facts in noise.

Every task makes byte-level sequences (vocabulary 256, the same models and tokenizer as
text) of ``total_len`` input tokens, optionally cut into ``segments`` of ``segment_len``.
A sample is a language-modelling pair with teacher forcing: ``inputs`` [B, N] and
``targets`` [B, N] where ``targets[:, i]`` is the token that follows ``inputs[:, i]`` when
that token is part of the answer, and ``-100`` everywhere else. So a model's
``logits[:, i]`` is scored exactly on the answer tokens, and nowhere else.

Layouts (``x`` is the whole sequence of N + 1 bytes; ``inputs = x[:N]``,
``targets = x[1:]`` on the answer):

- ``copy``: ``[source S][filler F]["="][source S]``, F = N - 2S. The source is S random
  symbols from the first ``alphabet`` letters of ``a-zA-Z``; the filler is ``"."``. The
  source comes first and the answer last, so with several segments the copy has to travel
  through the memory; ``source_len`` defaults to N // 2 (no filler; 72 tokens = 36 source
  symbols, the separator and 35 copied symbols in the inputs, the 36th only as a
  target). With ``filler_at="start"`` the filler goes first instead,
  ``[filler][source]["="][source]``: a short source then sits next to its copy (in the last
  segment), so a curriculum that grows the source at fixed N starts without needing the
  memory and reaches further back stage by stage; ``"middle"`` (the default) keeps the
  distance for every source length.
- ``reverse``: the same, the answer is the source reversed.
- ``associative``: ``[k1 v1 ... kP vP][filler F]["?"][query key][its value]``: P pairs of
  distinct keys (letters ``a``, ``b``, ...; ``keys`` of them) and values (digits, ``values``
  of them), then a query of one of the keys; the answer is its value (one token).
- ``facts``: facts-in-noise question answering. ``num_facts`` facts
  ``"The key of NAME is 123. "`` are spliced at random places into a window of real text
  (``noise``: a 1-D uint8/uint16 array of byte tokens, e.g. a corpus), then
  ``"What is the key of NAME? "`` about one of them, then the answer (``value_len``
  digits, the only scored tokens).

Where a task has a question (associative, facts), the question and its answer must fit in
one segment (the last): ``ConfigError`` otherwise. Every task is deterministic: the same
``seed`` gives the same samples.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from memtx.errors import ConfigError, DataError

__all__ = [
    "IGNORE_INDEX",
    "TASKS",
    "AssociativeTask",
    "CopyTask",
    "FactsTask",
    "ReverseTask",
    "Task",
    "TaskSample",
    "answer_accuracy",
    "make_task",
]

IGNORE_INDEX = -100
VOCAB_SIZE = 256
SYMBOLS = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
DIGITS = b"0123456789"
SEPARATOR = ord("=")
FILLER = ord(".")
QUESTION = ord("?")
_NAMES = "Alice Bob Carol David Emma Frank Grace Henry Irene Jack Karen Leo Mona Nina Oscar Paul"
NAMES: tuple[str, ...] = tuple(f"{_NAMES} Quinn Rosa Sam Tina".split())


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


def _at_least(task: str, name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"task {task!r}: {name} must be an integer >= {minimum}, got {value!r}")


class CopyTask(Task):
    """``[source][filler]["="][source]``: repeat the source after the separator.

    Args:
        alphabet: how many symbols (2..52, the letters ``a-zA-Z`` in that order).
        source_len: S, symbols to copy (default ``total_len // 2``, the most that fits).
        filler_at: ``"middle"`` (between source and separator) or ``"start"``.
    """

    name = "copy"

    def __init__(
        self,
        *,
        total_len: int,
        segments: int,
        segment_len: int,
        seed: int,
        alphabet: int = 8,
        source_len: int | None = None,
        filler_at: str = "middle",
    ) -> None:
        super().__init__(total_len=total_len, segments=segments, segment_len=segment_len, seed=seed)
        _at_least(self.name, "alphabet", alphabet, 2)
        if alphabet > len(SYMBOLS):
            raise ConfigError(
                f"task {self.name!r}: alphabet must be <= {len(SYMBOLS)}, got {alphabet}"
            )
        source_len = total_len // 2 if source_len is None else source_len
        _at_least(self.name, "source_len", source_len, 1)
        if 2 * source_len > total_len:
            raise ConfigError(
                f"task {self.name!r}: total_len ({total_len}) is too small for source_len "
                f"{source_len}: it needs 2 * source_len = {2 * source_len} input tokens"
            )
        if filler_at not in ("middle", "start"):
            raise ConfigError(
                f"task {self.name!r}: filler_at must be 'middle' or 'start', got {filler_at!r}"
            )
        self.alphabet, self.source_len, self.filler_at = alphabet, source_len, filler_at
        self.answer_len, self.chance = source_len, 1.0 / alphabet
        self._symbols = torch.tensor(list(SYMBOLS[:alphabet]), dtype=torch.long)

    def _answer(self, source: Tensor) -> Tensor:
        return source

    def _sequences(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        n, s = self.total_len, self.source_len
        source = self._symbols[torch.randint(0, self.alphabet, (batch, s), generator=generator)]
        filler = torch.full((batch, n - 2 * s), FILLER, dtype=torch.long)
        separator = torch.full((batch, 1), SEPARATOR, dtype=torch.long)
        parts = [source, filler] if self.filler_at == "middle" else [filler, source]
        sequence = torch.cat([*parts, separator, self._answer(source)], dim=1)
        answer = torch.zeros_like(sequence, dtype=torch.bool)
        answer[:, -s:] = True
        return sequence, answer


class ReverseTask(CopyTask):
    """``[source][filler]["="][reversed source]`` (or filler first); as :class:`CopyTask`."""

    name = "reverse"

    def _answer(self, source: Tensor) -> Tensor:
        return source.flip(1)


class AssociativeTask(Task):
    """``[k1 v1 ... kP vP][filler]["?"][key][value]``: recall the value of the queried key.

    Args:
        pairs: P key-value pairs (default: as many as fit, at most ``keys``).
        keys: size of the key alphabet (letters ``a``...; 1..52); keys in a row are distinct.
        values: size of the value alphabet (digits ``0``...; 2..10).
    """

    name = "associative"

    def __init__(
        self,
        *,
        total_len: int,
        segments: int,
        segment_len: int,
        seed: int,
        pairs: int | None = None,
        keys: int = 26,
        values: int = 10,
    ) -> None:
        super().__init__(total_len=total_len, segments=segments, segment_len=segment_len, seed=seed)
        _at_least(self.name, "keys", keys, 1)
        _at_least(self.name, "values", values, 2)
        if keys > len(SYMBOLS) or values > len(DIGITS):
            raise ConfigError(
                f"task {self.name!r}: keys must be <= {len(SYMBOLS)} and values <= "
                f"{len(DIGITS)}, got {keys} and {values}"
            )
        # Sequence: 2P + F + 3 = N + 1 (query marker, key, value).
        room = (total_len - 2) // 2
        pairs = min(keys, room) if pairs is None else pairs
        _at_least(self.name, "pairs", pairs, 1)
        if pairs > keys:
            raise ConfigError(
                f"task {self.name!r}: pairs ({pairs}) must be <= keys ({keys}): keys are distinct"
            )
        if 2 * pairs + 2 > total_len:
            raise ConfigError(
                f"task {self.name!r}: total_len ({total_len}) is too small for {pairs} pairs: "
                f"it needs 2 * pairs + 2 = {2 * pairs + 2} input tokens"
            )
        self.pairs, self.keys, self.values = pairs, keys, values
        self.answer_len, self.chance = 1, 1.0 / values
        self._check_question_fits(2)
        self._key_symbols = torch.tensor(list(SYMBOLS[:keys]), dtype=torch.long)
        self._value_symbols = torch.tensor(list(DIGITS[:values]), dtype=torch.long)

    def _sequences(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        n, p = self.total_len, self.pairs
        order = torch.rand(batch, self.keys, generator=generator).argsort(dim=1)[:, :p]
        keys = self._key_symbols[order]  # (B, P) distinct per row
        values = self._value_symbols[torch.randint(0, self.values, (batch, p), generator=generator)]
        which = torch.randint(0, p, (batch, 1), generator=generator)
        pairs = torch.stack([keys, values], dim=2).flatten(1)  # (B, 2P): k1 v1 k2 v2 ...
        filler = torch.full((batch, n - 2 * p - 2), FILLER, dtype=torch.long)
        question = torch.full((batch, 1), QUESTION, dtype=torch.long)
        sequence = torch.cat(
            [pairs, filler, question, keys.gather(1, which), values.gather(1, which)], dim=1
        )
        answer = torch.zeros_like(sequence, dtype=torch.bool)
        answer[:, -1] = True
        return sequence, answer


class FactsTask(Task):
    """Facts hidden in real text, a question at the end (see the module docstring).

    Args:
        noise: a 1-D array of byte tokens (numpy uint8/uint16, an integer tensor, or
            ``bytes``) of real text, longer than the noise window of a row.
        num_facts: facts per row (1..20), about distinct names.
        value_len: digits of each key (the answer).
    """

    name = "facts"
    FACT = "The key of {name} is {value}. "
    QUESTION = "What is the key of {name}? "

    def __init__(
        self,
        *,
        total_len: int,
        segments: int,
        segment_len: int,
        seed: int,
        noise: Any = None,
        num_facts: int = 3,
        value_len: int = 3,
    ) -> None:
        super().__init__(total_len=total_len, segments=segments, segment_len=segment_len, seed=seed)
        _at_least(self.name, "num_facts", num_facts, 1)
        _at_least(self.name, "value_len", value_len, 1)
        if num_facts > len(NAMES):
            raise ConfigError(
                f"task {self.name!r}: num_facts must be <= {len(NAMES)}, got {num_facts}"
            )
        self.num_facts, self.value_len = num_facts, value_len
        self.answer_len, self.chance = value_len, 0.1
        longest = max(len(name) for name in NAMES)
        self._check_question_fits(len(self.QUESTION.format(name="x" * longest)))
        fact_len = len(self.FACT.format(name="x" * longest, value="0" * value_len))
        question_len = len(self.QUESTION.format(name="x" * longest))
        needed = num_facts * fact_len + question_len + value_len - 1
        if needed > total_len:
            raise ConfigError(
                f"task {self.name!r}: total_len ({total_len}) is too small for {num_facts} facts "
                f"and the question: it needs up to {needed} input tokens"
            )
        self.noise = _noise_tokens(noise)
        window = total_len + 1 - value_len  # the most noise a row can need
        if self.noise.numel() < window:
            raise ConfigError(
                f"task {self.name!r}: the noise has {self.noise.numel()} tokens, but a row "
                f"needs up to {window}"
            )

    def _sequences(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        length = self.total_len + 1
        sequence = torch.empty(batch, length, dtype=torch.long)
        answer = torch.zeros(batch, length, dtype=torch.bool)
        for row in range(batch):
            names = torch.randperm(len(NAMES), generator=generator)[: self.num_facts].tolist()
            digits = torch.randint(0, 10, (self.num_facts, self.value_len), generator=generator)
            values = ["".join(str(d) for d in row_digits) for row_digits in digits.tolist()]
            asked = int(torch.randint(0, self.num_facts, (1,), generator=generator))
            facts = [
                _encode(self.FACT.format(name=NAMES[n], value=v)) for n, v in zip(names, values)
            ]
            tail = _encode(self.QUESTION.format(name=NAMES[names[asked]]) + values[asked])
            noise_len = length - len(tail) - sum(len(f) for f in facts)
            last_start = self.noise.numel() - noise_len
            start = int(torch.randint(0, last_start + 1, (1,), generator=generator))
            noise = self.noise[start : start + noise_len]
            cuts = torch.randint(0, noise_len + 1, (self.num_facts,), generator=generator)
            pieces, previous = [], 0
            for cut, fact in zip(sorted(cuts.tolist()), facts):
                pieces += [noise[previous:cut], fact]
                previous = cut
            pieces += [noise[previous:], tail]
            sequence[row] = torch.cat(pieces)
            answer[row, -self.value_len :] = True
        return sequence, answer


def _encode(text: str) -> Tensor:
    return torch.tensor(list(text.encode("ascii")), dtype=torch.long)


def _noise_tokens(noise: Any) -> Tensor:
    """A 1-D long tensor of byte tokens from the accepted noise types."""
    hint = "facts needs noise: a 1-D uint8/uint16 array of byte tokens of real text"
    if noise is None:
        raise ConfigError(f"{hint} (e.g. a corpus's bytes)")
    if isinstance(noise, (bytes, bytearray, memoryview)):
        tokens = torch.frombuffer(bytearray(noise), dtype=torch.uint8).long()
    elif isinstance(noise, np.ndarray):
        if noise.dtype.kind not in "ui":
            raise ConfigError(f"{hint}, got a numpy array of dtype {noise.dtype}")
        tokens = torch.from_numpy(noise.astype(np.int64))
    elif isinstance(noise, Tensor):
        if noise.dtype.is_floating_point or noise.dtype.is_complex or noise.dtype == torch.bool:
            raise ConfigError(f"{hint}, got a tensor of dtype {noise.dtype}")
        tokens = noise.detach().cpu().long()
    else:
        raise ConfigError(f"{hint}, got {type(noise).__name__}")
    if tokens.dim() != 1 or tokens.numel() == 0:
        raise ConfigError(f"{hint}, got shape {tuple(tokens.shape)}")
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= VOCAB_SIZE:
        raise ConfigError(f"{hint}: token ids must be in [0, {VOCAB_SIZE}), got {low}..{high}")
    return tokens


TASKS: dict[str, type[Task]] = {
    cls.name: cls for cls in (CopyTask, ReverseTask, AssociativeTask, FactsTask)
}


def _lengths(
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


def make_task(
    name: str,
    *,
    total_len: int | None = None,
    segments: int | None = None,
    segment_len: int | None = None,
    seed: int = 0,
    **params: Any,
) -> Task:
    """The task ``name`` with ``total_len`` tokens (= ``segments * segment_len``).

    Example:
        >>> task = make_task("copy", segments=9, segment_len=8, alphabet=8, seed=0)
        >>> batch = task.sample(32)   # inputs/targets [32, 72]

    Args:
        name: one of :data:`TASKS` (``copy``, ``reverse``, ``associative``, ``facts``).
        total_len, segments, segment_len: any two (or ``total_len`` alone: one segment).
        seed: seeds the task's generator.
        params: the task's own parameters (see each task class); others are refused.

    Raises:
        ConfigError: unknown task or parameter, inconsistent lengths, a sequence too short
            for the task, or a question and answer that do not fit in one segment.
    """
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
    cls = TASKS[name]
    common = ("total_len", "segments", "segment_len", "seed")
    known = [p for p in _init_params(cls) if p not in common]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown parameter {unknown[0]!r} for task {name!r} (known: {', '.join(known)})"
        )
    total_len, segments, segment_len = _lengths(total_len, segments, segment_len)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    return cls(total_len=total_len, segments=segments, segment_len=segment_len, seed=seed, **params)


def _init_params(cls: type) -> list[str]:
    return list(inspect.signature(cls).parameters)


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
