"""Symbol tasks: copy, reverse and associative recall over ``total_len`` input tokens.

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
  of them), then a query of one of the keys; the answer is its value (one token), and the
  question and answer must fit in the last segment.
"""

from __future__ import annotations

import torch
from torch import Tensor

from memtx.data.tasks.base import Task, at_least
from memtx.errors import ConfigError

__all__ = [
    "DIGITS",
    "FILLER",
    "QUESTION",
    "SEPARATOR",
    "SYMBOLS",
    "AssociativeTask",
    "CopyTask",
    "ReverseTask",
]

SYMBOLS = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
DIGITS = b"0123456789"
SEPARATOR = ord("=")
FILLER = ord(".")
QUESTION = ord("?")


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
        at_least(self.name, "alphabet", alphabet, 2)
        if alphabet > len(SYMBOLS):
            raise ConfigError(
                f"task {self.name!r}: alphabet must be <= {len(SYMBOLS)}, got {alphabet}"
            )
        source_len = total_len // 2 if source_len is None else source_len
        at_least(self.name, "source_len", source_len, 1)
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
        at_least(self.name, "keys", keys, 1)
        at_least(self.name, "values", values, 2)
        if keys > len(SYMBOLS) or values > len(DIGITS):
            raise ConfigError(
                f"task {self.name!r}: keys must be <= {len(SYMBOLS)} and values <= "
                f"{len(DIGITS)}, got {keys} and {values}"
            )
        # Sequence: 2P + F + 3 = N + 1 (query marker, key, value).
        room = (total_len - 2) // 2
        pairs = min(keys, room) if pairs is None else pairs
        at_least(self.name, "pairs", pairs, 1)
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
