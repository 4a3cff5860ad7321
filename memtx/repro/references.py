"""The bare Hugging Face model as segment-model references of ``memtx repro pretrained``:
reading each segment alone, the whole input at once, or only the last segment."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from memtx.config import TransformerConfig
from memtx.data.tasks import TaskSample
from memtx.models.protocol import StepOutput

__all__ = ["BareLM", "LastSegment"]


class BareLM(nn.Module):
    """The bare Hugging Face model as a segment model without memory (a reference).

    ``segment_len`` is what it reads at once: 128 reads segment by segment, each alone;
    the whole input's length is full attention.
    """

    memory_carries_grad = False

    def __init__(self, hf: nn.Module, *, vocab_size: int, segment_len: int) -> None:
        super().__init__()
        self.hf: Any = hf
        # A config for the driver (sizes other than vocab and segment are not used).
        self.config = TransformerConfig(
            vocab_size=vocab_size, d_model=2, n_heads=1, n_layers=1, segment_len=segment_len
        )

    def init_memory(self, batch_size: int, *, device: torch.device | str | None = None) -> Tensor:
        return torch.zeros(batch_size, 0, device=device)

    def step(self, tokens: Tensor, memory: Tensor) -> StepOutput:
        return StepOutput(self.hf(input_ids=tokens).logits, memory)

    def advance(self, tokens: Tensor, memory: Tensor) -> Tensor:
        return memory

    def cached_decoder(self) -> None:
        return None


class LastSegment:
    """``task``'s samples cut to their last ``segment_len`` tokens (the answer is there)."""

    def __init__(self, task: Any, segment_len: int) -> None:
        self.task, self.segment_len = task, segment_len

    def sample(self, batch_size: int, *, generator: torch.Generator) -> TaskSample:
        full = self.task.sample(batch_size, generator=generator)
        cut = slice(-self.segment_len, None)
        return TaskSample(full.inputs[:, cut], full.targets[:, cut], full.answer_mask[:, cut])
