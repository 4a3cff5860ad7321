"""Memformer with static shapes: a fresh memory's shortcut equals the static path.

Every row is encoded over all ``segment_len`` positions (no host sync: see
``tests/test_host_syncs.py``); a memory straight from ``init_memory`` skips the encoder,
known on the host to start every row. Both must compute the same thing.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from memtx.models.memformer import Memformer, MemformerMemory
from memtx.models.protocol import map_memory
from memtx.recurrence import rollout
from tests.models.small import small_model, tokens

SEG = 8


def memformer(**overrides: object) -> Memformer:
    model = small_model("memformer", **overrides)
    assert isinstance(model, Memformer)
    return model


def rebuilt(memory: MemformerMemory) -> MemformerMemory:
    """The same values in new tensors: no mark of freshness, the static path."""
    return map_memory(torch.clone, memory)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


@pytest.mark.parametrize("use_memory", [True, False])
def test_fresh_shortcut_equals_the_static_path(use_memory: bool) -> None:
    model = memformer(use_memory=use_memory).eval()
    x = tokens(3, SEG, seed=4)
    fresh = model.init_memory(3)
    short, static = model.step(x, fresh), model.step(x, rebuilt(fresh))
    torch.testing.assert_close(short.logits, static.logits)
    for a, b in zip(short.memory, static.memory, strict=True):
        torch.testing.assert_close(a, b)
    assert set(short.aux) == set(static.aux)
    for name in short.aux:
        torch.testing.assert_close(short.aux[name], static.aux[name])


@pytest.mark.parametrize("strategy", ["full", "mrbp"])
def test_fresh_shortcut_gives_the_static_paths_gradients(strategy: str) -> None:
    """The terminal state and the null context learn the same either way."""
    model = memformer().train()
    data = tokens(2, 2 * SEG + 1, seed=5)
    grads = []
    for memory in (model.init_memory(2), rebuilt(model.init_memory(2))):
        model.zero_grad()
        rollout(model, data[:, :-1], data[:, 1:], memory, loss_fn=lm_loss, strategy=strategy)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    # The static path's discarded work gives zero gradients where the shortcut gives none.
    for name, param in model.named_parameters():
        zero = torch.zeros_like(param)
        got, want = grads[0].get(name, zero), grads[1].get(name, zero)
        torch.testing.assert_close(got, want, msg=name)


def test_an_edited_fresh_memory_is_read_as_edited() -> None:
    """Writing into init_memory's prev_len in place (a version bump) drops the shortcut."""
    model = memformer().eval()
    x = tokens(2, SEG, seed=6)
    memory = model.init_memory(2)
    before = model.step(x, memory).logits
    memory.prev_tokens.copy_(tokens(2, SEG, seed=7))
    memory.prev_len[0] = SEG  # row 0 now has a previous segment
    after = model.step(x, memory).logits
    torch.testing.assert_close(after[1], before[1])  # row 1 still starts a stream
    assert not torch.allclose(after[0], before[0])
    torch.testing.assert_close(after, model.step(x, rebuilt(memory)).logits)
