"""What ELECTRA pre-training reads: random windows of a token array (a loop source)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from memtx.errors import DataError

__all__ = ["WindowSampler", "evenly_spaced_windows"]


class WindowSampler:
    """Random windows of ``seq_len`` tokens from one token array, from a seeded NumPy generator."""

    def __init__(self, tokens: np.ndarray, *, seq_len: int, batch_size: int, seed: int) -> None:
        if len(tokens) < seq_len:
            raise DataError(
                f"the pre-training split holds {len(tokens)} tokens, fewer than "
                f"electra.seq_len={seq_len}"
            )
        self.tokens = tokens
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def next_batch(self) -> Tensor:
        """[batch_size, seq_len] long, each row a window at a uniform random offset."""
        starts = self.rng.integers(0, len(self.tokens) - self.seq_len + 1, size=self.batch_size)
        rows = np.stack([self.tokens[s : s + self.seq_len] for s in starts])
        return torch.from_numpy(rows.astype(np.int64))

    def state(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """Where the sampler stands (its generator's state, JSON-able Python ints)."""
        return dict(self.rng.bit_generator.state), {}

    def load_state(self, meta: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        self.rng.bit_generator.state = meta


def evenly_spaced_windows(tokens: np.ndarray, *, seq_len: int, count: int) -> Tensor:
    """``count`` evenly spaced windows [count, seq_len] over ``tokens`` (fixed, no randomness)."""
    if len(tokens) < seq_len:
        raise DataError(f"a split of {len(tokens)} tokens is shorter than seq_len={seq_len}")
    starts = np.linspace(0, len(tokens) - seq_len, num=max(count, 1)).astype(np.int64)
    return torch.from_numpy(np.stack([tokens[s : s + seq_len] for s in starts]).astype(np.int64))
