"""Causal transformer without memory: each segment sees only itself. The floor to beat."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from memtx.config import TransformerConfig
from memtx.errors import DataError
from memtx.models.protocol import (
    CachedDecoding,
    DecodeState,
    StepOutput,
    TiedLM,
    cache_mask,
    check_memory_tensor,
)
from memtx.modules import Block, RotaryEmbedding, decode_blocks


class Transformer(TiedLM):
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

    def cached_decoder(self) -> CachedDecoding:
        """Generation with a KV cache: :meth:`begin_decode` / :meth:`decode`."""
        return self

    def begin_decode(self, memory: Tensor) -> DecodeState:
        """An empty segment to generate into (nothing is carried between segments)."""
        return DecodeState(caches=[None] * len(self.blocks))

    def decode(self, tokens: Tensor, state: DecodeState) -> tuple[Tensor, DecodeState]:
        """Logits [B, n, V] of ``tokens`` [B, n] appended to the segment, with a KV cache.

        The caches are preallocated to ``segment_len`` and written in place, the rotary
        tables sliced from the segment's (a token costs its own positions' work).
        """
        self.check_decode(tokens, state)
        n = tokens.shape[1]
        rotary = self.rotary.span(state.length, n)  # (n, hd) each
        mask = cache_mask(state.length, n, device=tokens.device)
        x = self.embed_tokens(tokens)  # (B, n, d)
        x, caches = decode_blocks(
            self.blocks,
            x,
            state.caches,
            mask=mask,
            rotary=rotary,
            capacity=self.config.segment_len,
        )
        return self.logits(x), DecodeState(caches=caches, length=state.length + n)
