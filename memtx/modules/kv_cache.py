"""A layer's self-attention key/value cache, in buffers written in place.

Decoding a token appends one position's keys and values; with ``torch.cat`` that copies
the whole cache for every token (O(n) per token, an allocation per layer). A
:class:`KVCache` preallocates buffers (to the segment's length where it is known, else
grown by doubling) and writes the new positions into them.

A cache is still a value: a :class:`KVCache` means the first ``length`` positions of its
buffers, and a position once written is never written again. The buffers are shared by
every cache grown from the same first one, together with a count of the positions any of
them has written; a cache whose ``length`` is that count (the usual case: each state is
decoded from once) grows in place, one left behind (a state decoded from a second time,
a branch) copies its positions into new buffers first. So call order never changes what a
cache holds.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["KVCache"]


class KVCache(NamedTuple):
    """One layer's keys and values of ``length`` positions.

    Attributes:
        keys: [B, H, capacity, hd] buffer; positions ``[0, length)`` are this cache's.
        values: [B, H, capacity, hd] buffer, likewise.
        length: how many positions the cache holds.
        written: one count shared by every cache on these buffers: the positions written.
    """

    keys: Tensor
    values: Tensor
    length: int
    written: list[int]

    @staticmethod
    def empty(like: Tensor, *, capacity: int) -> KVCache:
        """A cache of no positions for keys shaped like ``like`` [B, H, n, hd]."""
        b, h, _, hd = like.shape
        keys = like.new_empty(b, h, capacity, hd)
        return KVCache(keys, torch.empty_like(keys), 0, [0])

    def past(self) -> tuple[Tensor, Tensor]:
        """The keys and values held, each [B, H, length, hd] (views of the buffers)."""
        return self.keys[:, :, : self.length], self.values[:, :, : self.length]

    def append(self, keys: Tensor, values: Tensor) -> KVCache:
        """The cache with ``keys``, ``values`` [B, H, n, hd] appended; ``self`` is unchanged."""
        n = keys.shape[2]
        end = self.length + n
        key_buffer, value_buffer, written = self.keys, self.values, self.written
        capacity = key_buffer.shape[2]
        if written[0] != self.length or end > capacity:
            # A branch (these buffers hold more than this cache) or a full buffer: copy.
            capacity = capacity if end <= capacity else max(end, 2 * capacity)
            key_buffer = _grown(key_buffer, self.length, capacity)
            value_buffer = _grown(value_buffer, self.length, capacity)
            written = [self.length]
        key_buffer[:, :, self.length : end] = keys
        value_buffer[:, :, self.length : end] = values
        written[0] = end
        return KVCache(key_buffer, value_buffer, end, written)


def _grown(buffer: Tensor, length: int, capacity: int) -> Tensor:
    """A new [B, H, capacity, hd] buffer holding the first ``length`` positions of ``buffer``."""
    b, h, _, hd = buffer.shape
    grown = buffer.new_empty(b, h, capacity, hd)
    grown[:, :, :length] = buffer[:, :, :length]
    return grown
