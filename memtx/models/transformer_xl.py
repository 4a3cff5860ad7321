"""Transformer-XL (Dai et al. 2019): per-layer cache of hidden states, relative positions.

Each layer attends over [cache ; segment] with the relative score of Dai et al.:

    A_ij = q_i.k_j + q_i.W_R R_{i-j} + u.k_j + v.W_R R_{i-j}
         = (q_i + u).k_j + (q_i + v).W_R R_{i-j}

The first term goes to ``scaled_dot_product_attention`` as queries ``q + u``; the second
("BD") is computed here and passed as the additive mask, together with causality and the
not-yet-filled part of the cache. We use pre-LN blocks (the paper used post-LN) for the
same reason every other model here does: stable training without warmup tricks.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from memtx.config import TransformerXLConfig
from memtx.errors import DataError
from memtx.models.protocol import (
    CachedDecoding,
    DecodeState,
    StepOutput,
    TiedLM,
    check_memory_tensor,
    check_memory_type,
    register_batch_dims,
)
from memtx.modules import FeedForward, attend, sinusoid
from memtx.modules.attention import merge_heads, split_heads


class XLMemory(NamedTuple):
    """Transformer-XL's memory.

    Attributes:
        states: [n_layers, B, mem_len, d], the inputs of each layer for the last
            ``mem_len`` positions, most recent last; always detached (stop-gradient).
        valid: [B] long, how many of the last positions hold real states (the rest,
            on the left, are masked out).
    """

    states: Tensor
    valid: Tensor


register_batch_dims(XLMemory, (1, 0))  # the batch is dim 1 of states, dim 0 of valid


class RelativeAttentionLayer(nn.Module):
    """One pre-LN Transformer-XL layer: relative multi-head attention + FFN."""

    def __init__(self, config: TransformerXLConfig) -> None:
        super().__init__()
        d, h = config.d_model, config.n_heads
        self.n_heads = h
        self.dropout = config.dropout
        self.ln_attn = nn.LayerNorm(d)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.kv_proj = nn.Linear(d, 2 * d, bias=False)
        self.r_proj = nn.Linear(d, d, bias=False)  # W_R
        self.u = nn.Parameter(torch.zeros(h, d // h))  # content bias
        self.v = nn.Parameter(torch.zeros(h, d // h))  # position bias
        self.out_proj = nn.Linear(d, d, bias=False)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.ln_ffn = nn.LayerNorm(d)
        self.ffn = FeedForward(d, config.ffn_dim, dropout=config.dropout)

    def keys_values(self, normed: Tensor) -> tuple[Tensor, Tensor]:
        """k, v [B, H, K, hd] of LayerNorm'd states [B, K, d]."""
        k, v = self.kv_proj(normed).chunk(2, dim=-1)
        return split_heads(k, self.n_heads), split_heads(v, self.n_heads)

    def attend(
        self, x: Tensor, h: Tensor, k: Tensor, v: Tensor, *, distances: Tensor, allowed: Tensor
    ) -> Tensor:
        """Relative attention of queries ``h`` (= LN x) [B, n, d] over k, v [B, H, K, hd],
        then the residual and the FFN; returns [B, n, d].

        ``distances`` [n, K] are query-minus-key positions, ``allowed`` [B, 1, n, K].
        """
        q = split_heads(self.q_proj(h), self.n_heads)  # (B, H, n, hd)
        klen, hd = k.shape[2], q.shape[-1]
        # Relative term: (q + v) . W_R R_d for every distance d in [0, K), then pick the
        # distance of each (i, j) pair with a gather (the "rel-shift").
        rel = sinusoid(torch.arange(klen, device=x.device), x.shape[-1]).to(x.dtype)  # (K, d)
        r = self.r_proj(rel).view(klen, self.n_heads, hd).transpose(0, 1)  # (H, K, hd)
        bd = (q + self.v[None, :, None, :]) @ r.transpose(-1, -2)[None]  # (B, H, n, K)
        index = distances[None, None].expand(bd.shape[0], bd.shape[1], -1, -1)
        bd = torch.gather(bd, -1, index) / math.sqrt(hd)  # (B, H, n, K)
        bias = bd.masked_fill(~allowed, float("-inf"))
        dropout = self.dropout if self.training else 0.0
        out = attend(q + self.u[None, :, None, :], k, v, mask=bias, dropout=dropout)
        x = x + self.resid_dropout(self.out_proj(merge_heads(out)))
        return x + self.ffn(self.ln_ffn(x))

    def forward(self, x: Tensor, cache: Tensor, *, distances: Tensor, allowed: Tensor) -> Tensor:
        """x [B, L, d]; cache [B, M, d]; distances [L, M+L] long; allowed [B, 1, L, M+L]."""
        h = self.ln_attn(x)
        context = torch.cat([self.ln_attn(cache), h], dim=1) if cache.shape[1] else h
        k, v = self.keys_values(context)  # (B, H, M+L, hd)
        return self.attend(x, h, k, v, distances=distances, allowed=allowed)


class TransformerXL(TiedLM):
    """Transformer-XL language model over segments, memory = :class:`XLMemory`."""

    memory_carries_grad = False  # the cache is stop-gradient by definition

    def __init__(self, config: TransformerXLConfig) -> None:
        super().__init__(config)
        self.config: TransformerXLConfig = config
        self.layers = nn.ModuleList(RelativeAttentionLayer(config) for _ in range(config.n_layers))
        self.init_weights()

    def init_memory(self, batch_size: int, *, device: torch.device | str | None = None) -> XLMemory:
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        cfg = self.config
        device = device or self.device
        states = torch.zeros(cfg.n_layers, batch_size, cfg.mem_len, cfg.d_model, device=device)
        return XLMemory(states, torch.zeros(batch_size, dtype=torch.long, device=device))

    def _check_memory(self, memory: XLMemory, tokens: Tensor) -> None:
        check_memory_type(memory, XLMemory, model="transformer_xl")
        cfg, batch = self.config, tokens.shape[0]
        check_memory_tensor(
            memory.states,
            name="states",
            shape=(cfg.n_layers, batch, cfg.mem_len, cfg.d_model),
            like=tokens,
        )
        check_memory_tensor(
            memory.valid, name="valid", shape=(batch,), like=tokens, dtype=torch.long
        )

    def step(self, tokens: Tensor, memory: XLMemory) -> StepOutput:
        self.check_tokens(tokens)
        self._check_memory(memory, tokens)
        mem_len = self.config.mem_len
        length = tokens.shape[1]
        device = tokens.device
        # Key j of [cache ; segment] sits at position j - mem_len relative to the segment start.
        query_pos = torch.arange(length, device=device)[:, None] + mem_len  # (L, 1)
        key_pos = torch.arange(mem_len + length, device=device)[None, :]  # (1, M+L)
        distances = (query_pos - key_pos).clamp(min=0)  # (L, M+L)
        causal = key_pos <= query_pos  # (L, M+L)
        first_valid = (mem_len - memory.valid)[:, None, None, None]  # (B, 1, 1, 1)
        allowed = causal[None, None] & (key_pos[None, None] >= first_valid)  # (B, 1, L, M+L)

        x = self.embed_tokens(tokens)  # (B, L, d)
        states = memory.states.detach()
        new_states = []
        for layer, cache in zip(self.layers, states):
            if mem_len:
                new_states.append(torch.cat([cache, x.detach()], dim=1)[:, -mem_len:])
            x = layer(x, cache, distances=distances, allowed=allowed)
        next_states = torch.stack(new_states) if mem_len else states
        valid = (memory.valid + length).clamp(max=mem_len)
        return StepOutput(self.logits(x), XLMemory(next_states, valid))

    # ----------------------------------------------------------------------- generation

    def cached_decoder(self) -> CachedDecoding:
        """Generation with a KV cache: :meth:`begin_decode` / :meth:`decode`."""
        return self

    def begin_decode(self, memory: XLMemory) -> DecodeState:
        """Keys and values of the cached states, once; the segment then grows on them."""
        probe = memory.valid[:, None]  # (B, 1): batch size and device
        self._check_memory(memory, probe)
        caches: list[tuple[Tensor, Tensor] | None] = []
        for layer, states in zip(self._typed_layers(), memory.states):
            caches.append(layer.keys_values(layer.ln_attn(states)) if self.config.mem_len else None)
        return DecodeState(caches=caches, extra={"valid": memory.valid})

    def decode(self, tokens: Tensor, state: DecodeState) -> tuple[Tensor, DecodeState]:
        """Logits [B, n, V] of ``tokens`` [B, n] appended to the segment, with a KV cache."""
        self.check_decode(tokens, state)
        mem_len, n, device = self.config.mem_len, tokens.shape[1], tokens.device
        past = state.length
        query_pos = mem_len + past + torch.arange(n, device=device)[:, None]  # (n, 1)
        key_pos = torch.arange(mem_len + past + n, device=device)[None, :]  # (1, K)
        distances = (query_pos - key_pos).clamp(min=0)  # (n, K)
        first_valid = (mem_len - state.extra["valid"])[:, None, None, None]  # (B, 1, 1, 1)
        allowed = (key_pos <= query_pos)[None, None] & (key_pos[None, None] >= first_valid)
        x = self.embed_tokens(tokens)  # (B, n, d)
        caches: list[tuple[Tensor, Tensor] | None] = []
        for layer, cache in zip(self._typed_layers(), state.caches):
            h = layer.ln_attn(x)
            k, v = layer.keys_values(h)  # (B, H, n, hd)
            if cache is not None:
                k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
            caches.append((k, v))
            x = layer.attend(x, h, k, v, distances=distances, allowed=allowed)
        return self.logits(x), DecodeState(caches=caches, length=past + n, extra=state.extra)

    def _typed_layers(self) -> list[RelativeAttentionLayer]:
        """``self.layers`` with its element type, for the type checker."""
        return list(self.layers)  # type: ignore[arg-type]
