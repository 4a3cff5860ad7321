"""The contract suite: every model, the same behaviours (DESIGN.md rule 8)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import memtx
from memtx.errors import DataError
from memtx.models.protocol import detach_memory, memory_leaves
from memtx.recurrence import rollout
from tests.models.small import SMALL, small_model, tokens

MODELS = list(SMALL)
MEMORY_MODELS = [key for key in MODELS if SMALL[key][0] in ("memformer", "rmt", "armt")]
VOCAB = 32
SEG = 8


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("key", MODELS)
def test_step_shapes_and_memory_shape_unchanged(key: str) -> None:
    model = small_model(key).eval()
    memory = model.init_memory(3)
    before = [(t.shape, t.dtype) for t in memory_leaves(memory)]
    for length in (SEG, 5, 1):  # full, partial and single-token segments
        out = model.step(tokens(3, length), memory)
        assert out.logits.shape == (3, length, VOCAB)
        assert torch.isfinite(out.logits).all()
        assert [(t.shape, t.dtype) for t in memory_leaves(out.memory)] == before
        memory = out.memory


@pytest.mark.parametrize("key", MODELS)
def test_is_a_segment_model(key: str) -> None:
    model = small_model(key)
    assert isinstance(model, memtx.SegmentModel)
    assert model.config.segment_len == SEG


@pytest.mark.parametrize("key", MODELS)
def test_advance_equals_step_memory(key: str) -> None:
    model = small_model(key).eval()
    x, memory = tokens(2, SEG), model.init_memory(2)
    with torch.no_grad():
        a = memory_leaves(model.advance(x, memory))
        b = memory_leaves(model.step(x, memory).memory)
    for left, right in zip(a, b, strict=True):
        torch.testing.assert_close(left, right)


@pytest.mark.parametrize("key", MODELS)
@pytest.mark.parametrize("length", [SEG * 3, SEG * 2 + 3, 5])
def test_any_length_through_the_driver(key: str, length: int) -> None:
    model = small_model(key)
    x = tokens(2, length + 1)
    result = rollout(
        model, x[:, :-1], x[:, 1:], model.init_memory(2), loss_fn=lm_loss, backward=False
    )
    assert result.segments == -(-length // SEG)
    assert torch.isfinite(result.loss)


@pytest.mark.parametrize("key", MODELS)
def test_full_strategy_equals_manual_unrolled_autograd(key: str) -> None:
    model = small_model(key, dropout=0.1).train()
    x = tokens(2, 3 * SEG + 1)
    inputs, targets = x[:, :-1], x[:, 1:]
    torch.manual_seed(5)
    result = rollout(model, inputs, targets, model.init_memory(2), loss_fn=lm_loss)
    driver = grads(model)
    model.zero_grad()
    # The same computation written out by hand, with the driver's per-segment seeds.
    torch.manual_seed(5)
    seed = int(torch.randint(0, 2**62, (1,)).item())
    memory, total = model.init_memory(2), 0.0
    for index in range(3):
        torch.manual_seed(seed + index)
        out = model.step(inputs[:, index * SEG : (index + 1) * SEG], memory)
        total = total + lm_loss(out.logits, targets[:, index * SEG : (index + 1) * SEG])
        memory = out.memory
    total.backward()
    torch.testing.assert_close(result.loss, total.detach(), rtol=1e-6, atol=1e-5)
    manual = grads(model)
    assert driver.keys() == manual.keys()
    for name in driver:
        torch.testing.assert_close(driver[name], manual[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("key", MODELS)
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_mrbp_gradients_equal_full_bptt(key: str, dropout: float) -> None:
    model = small_model(key, dropout=dropout).train()
    x = tokens(2, 4 * SEG + 1)
    inputs, targets = x[:, :-1], x[:, 1:]
    results, gradients = {}, {}
    for strategy in ("full", "mrbp"):
        model.zero_grad()
        torch.manual_seed(11)
        results[strategy] = rollout(
            model, inputs, targets, model.init_memory(2), loss_fn=lm_loss, strategy=strategy
        )
        gradients[strategy] = grads(model)
    torch.testing.assert_close(results["mrbp"].loss, results["full"].loss)
    assert gradients["full"].keys() == gradients["mrbp"].keys()
    worst = max(
        (gradients["full"][n] - gradients["mrbp"][n]).abs().max().item() for n in gradients["full"]
    )
    assert worst <= 1e-5, f"MRBP differs from full BPTT by {worst:.2e}"
    for a, b in zip(memory_leaves(results["full"].memory), memory_leaves(results["mrbp"].memory)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("key", MEMORY_MODELS)
def test_memory_carries_gradient_and_truncation_cuts_it(key: str) -> None:
    model = small_model(key).train()
    assert model.memory_carries_grad
    x = tokens(2, 2 * SEG + 1)
    full, cut = {}, {}
    for strategy, store in (("full", full), ("truncated", cut)):
        model.zero_grad()
        rollout(
            model,
            x[:, :-1],
            x[:, 1:],
            model.init_memory(2),
            loss_fn=lm_loss,
            strategy=strategy,
            truncate=1,
        )
        store.update(grads(model))
    names = full.keys() | cut.keys()  # some parameters get gradient only through memory
    differs = any(
        n not in full or n not in cut or not torch.allclose(full[n], cut[n]) for n in names
    )
    assert differs, "detaching the memory between segments changed no gradient"


@pytest.mark.parametrize("key", MODELS)
def test_truncated_with_window_of_the_rollout_equals_full(key: str) -> None:
    model = small_model(key).train()
    x = tokens(2, 3 * SEG + 1)
    out = {}
    for strategy in ("full", "truncated"):
        model.zero_grad()
        rollout(
            model,
            x[:, :-1],
            x[:, 1:],
            model.init_memory(2),
            loss_fn=lm_loss,
            strategy=strategy,
            truncate=3,
        )
        out[strategy] = grads(model)
    for name in out["full"]:
        torch.testing.assert_close(out["full"][name], out["truncated"][name])


@pytest.mark.parametrize("key", MODELS)
def test_eval_step_is_deterministic(key: str) -> None:
    model = small_model(key, dropout=0.3).eval()
    x, memory = tokens(2, SEG), model.init_memory(2)
    torch.testing.assert_close(model.step(x, memory).logits, model.step(x, memory).logits)


@pytest.mark.parametrize("key", MODELS)
@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.zeros(2, 4), "integer"),
        (torch.full((2, 4), VOCAB), "out of range"),
        (torch.full((2, 4), -1), "out of range"),
        (torch.zeros(2, 0, dtype=torch.long), "empty"),
        (torch.zeros(4, dtype=torch.long), "shape"),
        (torch.zeros(2, SEG + 1, dtype=torch.long), "segment_len"),
        ([[1, 2]], "LongTensor"),
    ],
)
def test_bad_tokens_raise_clear_errors(key: str, bad: object, message: str) -> None:
    model = small_model(key)
    with pytest.raises(DataError, match=message):
        model.step(bad, model.init_memory(2))  # type: ignore[arg-type]


@pytest.mark.parametrize("key", MODELS)
def test_memory_of_wrong_batch_or_other_model_is_rejected(key: str) -> None:
    model = small_model(key)
    x = tokens(2, SEG)
    with pytest.raises(DataError, match="memory"):
        model.step(x, model.init_memory(3))
    other_key = "transformer_xl" if key != "transformer_xl" else "memformer"
    other = small_model(other_key)
    with pytest.raises(DataError, match="memory"):
        model.step(x, other.init_memory(2))


@pytest.mark.parametrize("key", MODELS)
def test_init_memory_rejects_bad_batch(key: str) -> None:
    with pytest.raises(DataError, match="batch_size"):
        small_model(key).init_memory(0)


@pytest.mark.parametrize("key", MODELS)
def test_detached_memory_has_no_graph(key: str) -> None:
    model = small_model(key).train()
    out = model.step(tokens(2, SEG), model.init_memory(2))
    for leaf in memory_leaves(detach_memory(out.memory)):
        assert not leaf.requires_grad
