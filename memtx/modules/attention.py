"""Multi-head attention on ``F.scaled_dot_product_attention`` (fused kernels where available)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memtx.modules.kv_cache import KVCache
from memtx.modules.positions import apply_rotary, rotate


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    is_causal: bool = False,
    dropout: float = 0.0,
    scale: float | None = None,
) -> Tensor:
    """Scaled dot-product attention over heads.

    Args:
        q: [B, H, Lq, hd]; k, v: [B, H, Lk, hd].
        mask: boolean (True = may attend) or additive float, broadcastable to [B, H, Lq, Lk].
        is_causal: causal mask aligned at the top-left (only when ``mask`` is None).
        dropout: attention-probability dropout (pass 0.0 in eval mode).

    Returns:
        [B, H, Lq, hd].
    """
    return F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=mask,
        is_causal=is_causal and mask is None,
        dropout_p=dropout,
        scale=scale,
    )


def split_heads(x: Tensor, n_heads: int) -> Tensor:
    """[B, L, H*hd] -> [B, H, L, hd]."""
    b, n, d = x.shape
    return x.view(b, n, n_heads, d // n_heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """[B, H, L, hd] -> [B, L, H*hd]."""
    b, h, n, hd = x.shape
    return x.transpose(1, 2).reshape(b, n, h * hd)


class MultiHeadAttention(nn.Module):
    """Self- or cross-attention with fused projections.

    Self-attention projects q, k, v with one matmul; cross-attention projects q from the
    queries and k, v together from the context, so each input is read once.
    """

    def __init__(self, d_model: int, n_heads: int, *, dropout: float = 0.0, cross: bool = False):
        super().__init__()
        self.n_heads = n_heads
        self.cross = cross
        self.dropout = dropout
        if cross:
            self.q_proj = nn.Linear(d_model, d_model, bias=False)
            self.kv_proj = nn.Linear(d_model, 2 * d_model, bias=False)
        else:
            self.qkv_proj = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def project(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v, each [B, H, L, hd], from ``x`` (and ``context`` for cross-attention)."""
        if self.cross:
            assert context is not None, "cross-attention needs a context"
            q = self.q_proj(x)
            k, v = self.kv_proj(context).chunk(2, dim=-1)
        else:
            q, k, v = self.qkv_proj(x).chunk(3, dim=-1)
        return (
            split_heads(q, self.n_heads),
            split_heads(k, self.n_heads),
            split_heads(v, self.n_heads),
        )

    def forward_cached(
        self,
        x: Tensor,
        cache: KVCache | None,
        *,
        mask: Tensor | None = None,
        rotary: tuple[Tensor, Tensor] | None = None,
        capacity: int | None = None,
        prefix: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, KVCache]:
        """Self-attention of new positions ``x`` [B, n, d] over ``cache`` + themselves.

        ``prefix``: keys and values [B, H, P, hd] read before the cache (:meth:`prefix_kv`);
        ``mask`` then covers ``P + past + n`` keys.

        ``rotary`` holds the tables of the n new positions; ``mask`` [n, past + n] (True
        = may attend) covers the cached and new keys. Returns the output [B, n, d] and the
        grown cache (:meth:`KVCache.append`; ``capacity`` sizes a new one's buffers).
        Generation uses it so a token costs one position's work instead of the whole
        segment's: one matmul for q, k, v, one rotation for q and k together, the new keys
        written in place.
        """
        b, n, d = x.shape
        qkv = self.qkv_proj(x).view(b, n, 3, self.n_heads, d // self.n_heads)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, B, H, n, hd)
        qk = qkv[:2] if rotary is None else rotate(qkv[:2], *rotary)  # tables (n, hd)
        q, k, v = qk[0], qk[1], qkv[2]  # (B, H, n, hd) each
        if cache is None:
            cache = KVCache.empty(k, capacity=max(capacity or 0, n))
        cache = cache.append(k, v)
        keys, values = cache.past()  # (B, H, past + n, hd) each
        if prefix is not None:
            keys, values = torch.cat([prefix[0], keys], 2), torch.cat([prefix[1], values], 2)
        out = attend(q, keys, values, mask=mask)  # (B, H, n, hd)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d)), cache

    def forward(
        self,
        x: Tensor,
        *,
        context: Tensor | None = None,
        mask: Tensor | None = None,
        is_causal: bool = False,
        rotary: tuple[Tensor, Tensor] | None = None,
        key_rotary: tuple[Tensor, Tensor] | None = None,
        prefix: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Attend from ``x`` [B, L, d] to itself (or ``context`` [B, S, d]); returns [B, L, d].

        ``rotary`` rotates the queries and, without ``key_rotary``, the keys (self-attention:
        one table of positions); cross-attention gives the keys their own positions in
        ``key_rotary`` (tables broadcastable to [B, H, S, hd], e.g. [B, 1, S, hd] per row).
        ``prefix``: self-attention also reads these keys and values [B, H, P, hd] before its
        own (:meth:`prefix_kv`); ``mask`` then covers ``P + L`` keys.
        """
        q, k, v = self.project(x, context)
        if rotary is not None:
            cos, sin = rotary
            q = apply_rotary(q, cos, sin)
            k = apply_rotary(k, *(key_rotary or rotary))
        if prefix is not None:
            k, v = torch.cat([prefix[0], k], 2), torch.cat([prefix[1], v], 2)
        dropout = self.dropout if self.training else 0.0
        out = attend(q, k, v, mask=mask, is_causal=is_causal, dropout=dropout)
        return self.out_proj(merge_heads(out))

    def prefix_kv(self, prefix: Tensor, rotary: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """Self-attention keys (rotated by ``rotary``) and values, each [B, H, P, hd], of
        prefix positions [B, P, d]: another sequence read with this layer's projections."""
        _, k, v = self.project(prefix)
        return apply_rotary(k, *rotary), v
