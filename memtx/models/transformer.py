"""Causal transformer without memory: each segment sees only itself. The floor to beat."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from memtx.config import TransformerConfig
from memtx.errors import DataError
from memtx.models.protocol import SegmentLM, StepOutput, check_memory_tensor
from memtx.modules import Block, RotaryEmbedding


class Transformer(SegmentLM):
    """Pre-LN causal transformer with rotary positions restarting at every segment.

    Memory: an empty tensor [B, 0] (nothing is carried; it only fixes the batch size).
    """

    memory_carries_grad = False

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config)
        self.rotary = RotaryEmbedding(config.head_dim)
        self.blocks = nn.ModuleList(
            Block(config.d_model, config.n_heads, config.ffn_dim, dropout=config.dropout)
            for _ in range(config.n_layers)
        )
        self.init_weights()

    def init_memory(self, batch_size: int, *, device: torch.device | str | None = None) -> Tensor:
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        return torch.zeros(batch_size, 0, device=device or self.device)

    def step(self, tokens: Tensor, memory: Tensor) -> StepOutput:
        self.check_tokens(tokens)
        batch, length = tokens.shape
        check_memory_tensor(memory, name="transformer memory", shape=(batch, 0), like=tokens)
        x = self.embed_tokens(tokens)  # (B, L, d)
        rotary = self.rotary(torch.arange(length, device=tokens.device))
        for block in self.blocks:
            x = block(x, is_causal=True, rotary=rotary)
        return StepOutput(self.logits(x), memory)
