"""Pre-LN transformer blocks: self-attention, optional cross-attention, feed-forward."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memtx.modules.attention import MultiHeadAttention
from memtx.modules.kv_cache import KVCache


class FeedForward(nn.Module):
    """Two-layer GELU MLP: [B, L, d] -> [B, L, d]."""

    def __init__(self, d_model: int, d_ff: int, *, dropout: float = 0.0) -> None:
        super().__init__()
        self.up = nn.Linear(d_model, d_ff)
        self.down = nn.Linear(d_ff, d_model)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.down(self.act(self.up(x))))


class Block(nn.Module):
    """x += SelfAttn(LN x); [x += CrossAttn(LN x, LN context)]; x += FFN(LN x).

    The context gets its own LayerNorm (Memformer's reader normalizes the slots, its
    decoder the encoder output).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        *,
        dropout: float = 0.0,
        cross_attention: bool = False,
    ) -> None:
        super().__init__()
        self.ln_self = nn.LayerNorm(d_model)
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout=dropout)
        self.cross_attn: MultiHeadAttention | None = None
        if cross_attention:
            self.ln_cross = nn.LayerNorm(d_model)
            self.ln_context = nn.LayerNorm(d_model)
            self.cross_attn = MultiHeadAttention(d_model, n_heads, dropout=dropout, cross=True)
        self.ln_ffn = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, d_ff, dropout=dropout)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        is_causal: bool = False,
        rotary: tuple[Tensor, Tensor] | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        context_rotary: tuple[Tensor, Tensor, Tensor, Tensor] | None = None,
        prefix: Tensor | None = None,
        prefix_mask: Tensor | None = None,
        prefix_rotary: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """x [B, L, d]; context [B, S, d] for the cross-attention; returns [B, L, d].

        ``prefix`` [B, P, d]: positions the self-attention reads before ``x`` with its own
        LayerNorm and projections (as Transformer-XL reads its cache), all of them visible
        where ``prefix_mask`` [B, 1, 1, P] is True, at the positions ``prefix_rotary``
        ([B, 1, P, hd] tables) gives them; ``x`` is then causal (``is_causal`` or ``mask``
        [L, L]).

        ``context_rotary``: positions in the cross-attention, (cos, sin) of the queries'
        positions then (cos, sin) of the context's (see :meth:`MultiHeadAttention.forward`);
        None: the cross-attention has no positions.
        """
        kv = None
        if prefix is not None:
            assert prefix_mask is not None and prefix_rotary is not None and rotary is not None
            kv = self.self_attn.prefix_kv(self.ln_self(prefix), prefix_rotary)
            mask = prefixed_mask(prefix_mask, x.shape[1], mask)
            is_causal = False
        x = x + self.resid_dropout(
            self.self_attn(
                self.ln_self(x), mask=mask, is_causal=is_causal, rotary=rotary, prefix=kv
            )
        )
        if self.cross_attn is not None and context is not None:
            attended = self._cross(x, context, context_mask, context_rotary)
            x = x + self.resid_dropout(attended)
        return x + self.ffn(self.ln_ffn(x))

    def _cross(
        self,
        x: Tensor,
        context: Tensor,
        mask: Tensor | None,
        rotary: tuple[Tensor, Tensor, Tensor, Tensor] | None,
    ) -> Tensor:
        """The cross-attention's output [B, L, d] (before the residual)."""
        assert self.cross_attn is not None
        q_rot, k_rot = (None, None) if rotary is None else (rotary[:2], rotary[2:])
        return self.cross_attn(
            self.ln_cross(x),
            context=self.ln_context(context),
            mask=mask,
            rotary=q_rot,
            key_rotary=k_rot,
        )

    def forward_cached(
        self,
        x: Tensor,
        cache: KVCache | None,
        *,
        mask: Tensor | None = None,
        rotary: tuple[Tensor, Tensor] | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        context_rotary: tuple[Tensor, Tensor, Tensor, Tensor] | None = None,
        capacity: int | None = None,
        prefix_kv: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, KVCache]:
        """:meth:`forward` for new positions only, with the self-attention's key/value cache.

        ``prefix_kv``: the prefix's keys and values (``self_attn.prefix_kv``, computed once
        per segment); ``mask`` then covers them too.

        Returns the new positions' output [B, n, d] and the grown cache (``capacity``: the
        positions a new cache's buffers hold). Same arithmetic as :meth:`forward` over the
        whole prefix (tested: cached generation equals recomputation), in eval mode: no
        dropout (called on its functions, as each module call costs a token time).
        """
        attended, cache = self.self_attn.forward_cached(
            self.ln_self(x), cache, mask=mask, rotary=rotary, capacity=capacity, prefix=prefix_kv
        )
        x = x + attended
        if self.cross_attn is not None and context is not None:
            x = x + self._cross(x, context, context_mask, context_rotary)
        ffn = self.ffn
        return x + ffn.down(F.gelu(ffn.up(self.ln_ffn(x)))), cache


def decode_blocks(
    blocks: Iterable[nn.Module],
    x: Tensor,
    caches: Sequence[KVCache | None],
    *,
    mask: Tensor | None = None,
    rotary: tuple[Tensor, Tensor] | None = None,
    context: Tensor | None = None,
    context_mask: Tensor | None = None,
    context_rotary: tuple[Tensor, Tensor, Tensor, Tensor] | None = None,
    capacity: int | None = None,
    prefixes: Sequence[tuple[Tensor, Tensor]] | None = None,
) -> tuple[Tensor, list[KVCache | None]]:
    """Run new positions ``x`` [B, n, d] through a stack of :class:`Block` with KV caches.

    Returns the output [B, n, d] and each block's grown cache (generation's inner loop);
    ``capacity`` sizes new caches (the segment's length); ``prefixes``: each block's
    prefix keys and values (:meth:`Block.forward_cached`).
    """
    grown: list[KVCache | None] = []
    for index, (block, cache) in enumerate(zip(blocks, caches, strict=True)):
        x, new_cache = cast(Block, block).forward_cached(
            x,
            cache,
            mask=mask,
            rotary=rotary,
            context=context,
            context_mask=context_mask,
            context_rotary=context_rotary,
            capacity=capacity,
            prefix_kv=None if prefixes is None else prefixes[index],
        )
        grown.append(new_cache)
    return x, grown


def prefixed_mask(prefix_mask: Tensor, length: int, mask: Tensor | None) -> Tensor:
    """[B, 1, L, P + K] bool: every prefix key where ``prefix_mask`` [B, 1, 1, P] allows,
    then ``mask`` [L, K] over the segment's own keys (None: causal, K = L)."""
    if mask is None:
        mask = torch.ones(length, length, dtype=torch.bool, device=prefix_mask.device).tril()
    batch, prefix = prefix_mask.shape[0], prefix_mask.shape[-1]
    own = mask.expand(batch, 1, length, mask.shape[-1])  # (B, 1, L, K)
    return torch.cat([prefix_mask.expand(batch, 1, length, prefix), own], dim=-1)
