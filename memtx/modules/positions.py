"""Positions: rotary embeddings (relative by construction) and sinusoids for Transformer-XL."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def sinusoid(positions: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of (float) positions.

    Args:
        positions: [N] positions or distances.
        dim: embedding width (even).

    Returns:
        [N, dim] with sin in the first half and cos in the second (Vaswani et al.).
    """
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, device=positions.device) / dim))
    angles = positions.float()[:, None] * inv_freq[None, :]  # (N, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al.): q.k depends only on the distance of positions.

    Our segment models restart positions at 0 every segment, so a segment is processed the
    same wherever it sits in the stream; rotary makes that a relative scheme for free.
    """

    inv_freq: Tensor

    def __init__(self, head_dim: int, *, base: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._tables: tuple[Tensor, Tensor] | None = None  # cos, sin of positions 0.. (span)

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """cos and sin tables, each [N, head_dim], for integer ``positions`` [N]."""
        angles = positions.to(self.inv_freq.dtype)[:, None] * self.inv_freq[None, :]
        angles = torch.cat([angles, angles], dim=-1)  # (N, hd)
        return angles.cos(), angles.sin()

    def span(self, start: int, n: int) -> tuple[Tensor, Tensor]:
        """The tables of positions ``start .. start + n - 1``, each [n, head_dim].

        Equal to ``self(torch.arange(start, start + n))``, sliced from tables kept for the
        longest span asked so far (grown by doubling, remade on a change of device or dtype), so
        decoding a token costs two slices instead of computing its angles.
        """
        end = start + n
        device = self.inv_freq.device
        tables = self._tables
        if (
            tables is None
            or tables[0].shape[0] < end
            or tables[0].device != device
            or tables[0].dtype != self.inv_freq.dtype
        ):
            length = max(end, 2 * (0 if self._tables is None else self._tables[0].shape[0]), 64)
            tables = self._tables = self(torch.arange(length, device=device))
        cos, sin = tables
        return cos[start:end], sin[start:end]


def previous_segment_rotary(
    rotary: RotaryEmbedding, prev_len: Tensor, *, span: int, offset: int = 0
) -> tuple[Tensor, Tensor]:
    """Tables [B, 1, span, hd] for a previous segment's positions ``j`` (per row, of
    length ``prev_len`` [B], right-padded to ``span``) at ``offset - prev_len + j``: its
    last position sits just before ``offset``, where the current segment starts."""
    steps = torch.arange(span, device=prev_len.device)  # (S,)
    positions = steps[None, :] + (offset - prev_len)[:, None]  # (B, S)
    cos, sin = rotary(positions.reshape(-1))  # (B*S, hd) each
    shape = (prev_len.shape[0], 1, span, cos.shape[-1])
    return cos.view(shape), sin.view(shape)


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` [..., hd] by tables ``cos``, ``sin`` that broadcast to it."""
    if cos.dtype != x.dtype:
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` [B, H, N, hd] by the tables from :class:`RotaryEmbedding` ([N, hd])."""
    return rotate(x, cos, sin)
