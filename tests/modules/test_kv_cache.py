"""The in-place KV cache is a value: growing it never changes another cache's positions."""

from __future__ import annotations

import torch

from memtx.modules import KVCache, RotaryEmbedding


def _kv(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, n, 4, generator=g), torch.randn(2, 3, n, 4, generator=g)


def test_append_equals_cat_and_grows_in_place() -> None:
    k1, v1 = _kv(2, 0)
    k2, v2 = _kv(1, 1)
    cache = KVCache.empty(k1, capacity=8).append(k1, v1)
    grown = cache.append(k2, v2)
    assert grown.keys is cache.keys  # written in place: no copy per token
    keys, values = grown.past()
    assert torch.equal(keys, torch.cat([k1, k2], 2))
    assert torch.equal(values, torch.cat([v1, v2], 2))


def test_a_branch_copies_and_leaves_the_other_cache_unchanged() -> None:
    k1, v1 = _kv(2, 0)
    cache = KVCache.empty(k1, capacity=8).append(k1, v1)
    (ka, va), (kb, vb) = _kv(1, 1), _kv(1, 2)
    first = cache.append(ka, va)
    second = cache.append(kb, vb)  # the same state decoded from twice
    assert second.keys is not first.keys
    assert torch.equal(first.past()[0], torch.cat([k1, ka], 2))
    assert torch.equal(second.past()[0], torch.cat([k1, kb], 2))
    assert torch.equal(second.past()[1], torch.cat([v1, vb], 2))


def test_a_full_buffer_grows() -> None:
    k1, v1 = _kv(3, 0)
    k2, v2 = _kv(4, 1)
    cache = KVCache.empty(k1, capacity=3).append(k1, v1).append(k2, v2)
    assert cache.keys.shape[2] >= 7
    assert torch.equal(cache.past()[0], torch.cat([k1, k2], 2))


def test_rotary_span_equals_the_tables_of_those_positions() -> None:
    rotary = RotaryEmbedding(8)
    for start, n in [(0, 1), (5, 3), (100, 40), (3, 1)]:
        expected = rotary(torch.arange(start, start + n))
        for got, want in zip(rotary.span(start, n), expected, strict=True):
            assert torch.equal(got, want)
