"""Memformer's slot writer: multi-head slot attention over ``[the slot itself ; H]``.

See :mod:`memtx.models.memformer` (its docstring, "Writer") for the choices made here.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from memtx.modules.attention import merge_heads, split_heads


class SlotWriter(nn.Module):
    """Multi-head slot attention: each slot attends to itself and to the encoder outputs.

    Slot i never sees slot j != i: its keys are only ``[its own ; H]``, so the score with
    itself is computed on its own and no [k, k] attention exists at all.
    """

    def __init__(self, d_model: int, n_heads: int, *, temperature: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.temperature = temperature
        self.ln_slots = nn.LayerNorm(d_model)
        self.ln_hidden = nn.LayerNorm(d_model)
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)  # shared by slot and token keys
        self.v_proj = nn.Linear(d_model, d_model, bias=False)  # token values only
        self.out_proj = nn.Linear(d_model, d_model, bias=False)  # written part only

    def forward(
        self, slots: Tensor, hidden: Tensor, key_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Write ``hidden`` into ``slots``.

        Args:
            slots: [B, k, d] the slots m_i before writing.
            hidden: [B, P, d] the encoder outputs H.
            key_mask: [B, P] bool, True where H is a real token (None: all are).

        Returns:
            The written slots m' [B, k, d] (before BMN) and the attention
            [B, heads, k, 1 + P], column 0 the weight each slot puts on itself.
        """
        normed = self.ln_slots(slots)  # (B, k, d)
        context = self.ln_hidden(hidden)  # (B, P, d)
        q = split_heads(self.q_proj(normed), self.n_heads)  # (B, h, k, hd)
        k_self = split_heads(self.k_proj(normed), self.n_heads)  # (B, h, k, hd)
        k_tokens = split_heads(self.k_proj(context), self.n_heads)  # (B, h, P, hd)
        v_tokens = split_heads(self.v_proj(context), self.n_heads)  # (B, h, P, hd)
        scale = 1.0 / (math.sqrt(q.shape[-1]) * self.temperature)
        self_score = (q * k_self).sum(-1, keepdim=True) * scale  # (B, h, k, 1)
        token_scores = (q @ k_tokens.transpose(-1, -2)) * scale  # (B, h, k, P)
        if key_mask is not None:
            token_scores = token_scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        attention = torch.cat([self_score, token_scores], dim=-1).softmax(-1)  # (B, h, k, 1+P)
        retained = attention[..., :1] * split_heads(slots, self.n_heads)  # (B, h, k, hd)
        written = attention[..., 1:] @ v_tokens  # (B, h, k, hd)
        new_slots = merge_heads(retained) + self.out_proj(merge_heads(written))  # (B, k, d)
        return new_slots, attention
