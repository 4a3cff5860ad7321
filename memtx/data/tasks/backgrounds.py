"""Held-out real text to hide stories in: the haystacks of BABILong-style evaluation.

Evaluation never hides a story in text a model was trained on: the background is the
corpus's valid + test documents, repeated when a haystack needs more (and its note says
so), so shorter haystacks never see the repetition, whatever the longest length of a run.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from memtx.errors import ConfigError

__all__ = ["background_note", "eval_background", "haystack_background"]


def eval_background(corpus: str | None, *, tokenizer: Any = None) -> tuple[np.ndarray, str]:
    """Held-out background for the haystacks and a note saying what it is: the corpus's
    valid + test documents concatenated (see :func:`haystack_background` for longer), in
    bytes or in ``tokenizer``'s ids (a run's BPE or pretrained tokenizer)."""
    from memtx.config import DataConfig
    from memtx.data import prepare_data

    kind = "byte" if tokenizer is None else tokenizer.kind
    config = DataConfig(corpus=corpus or "shakespeare", tokenizer=kind)
    data = prepare_data(config, tokenizer=tokenizer)
    held_out = np.concatenate([data.valid, data.test])
    if len(held_out) < 2:
        raise ConfigError(f"corpus {corpus!r} has no held-out (valid/test) documents")
    name = corpus or "shakespeare"
    unit = "bytes" if tokenizer is None else f"{kind} tokens"
    return held_out, f"{name} valid+test documents ({len(held_out):,} {unit}, never trained on)"


def haystack_background(held_out: np.ndarray, note: str, length: int) -> tuple[np.ndarray, str]:
    """The background of haystacks of ``length`` tokens and its note: the held-out text
    itself, or, when a haystack needs more, that text repeated."""
    copies = _copies(len(held_out), length)
    background = np.tile(held_out, copies) if copies > 1 else held_out
    return background, background_note(note, held_out=len(held_out), length=length)


def background_note(note: str, *, held_out: int, length: int) -> str:
    """The note of :func:`haystack_background` for ``held_out`` tokens of text (no copy made)."""
    copies = _copies(held_out, length)
    return note if copies == 1 else f"{note}; repeated ({copies} copies) to fill the haystack"


def _copies(held_out: int, length: int) -> int:
    return max(1, math.ceil((length + 2) / held_out))
