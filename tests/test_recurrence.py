"""The driver: segmentation, strategies, and agreement with one autograd pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from memtx.errors import ConfigError, DataError
from memtx.recurrence import rollout, split_segments, stream
from tests.models.small import small_model


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")


def test_split_segments_covers_any_length() -> None:
    x = torch.arange(21).view(1, 21)
    parts = split_segments(x, 8)
    assert [p.shape[1] for p in parts] == [8, 8, 5]
    assert torch.equal(torch.cat(parts, dim=1), x)


def test_full_equals_one_autograd_pass_over_concatenated_segments() -> None:
    # A transformer without memory over 3 segments is one batched pass over [B*3, L].
    model = small_model("transformer").train()
    x = torch.randint(0, 32, (2, 3 * 8 + 1))
    inputs, targets = x[:, :-1], x[:, 1:]
    result = rollout(model, inputs, targets, model.init_memory(2), loss_fn=lm_loss)
    driver = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    flat_in, flat_tg = inputs.reshape(6, 8), targets.reshape(6, 8)
    one = lm_loss(model.step(flat_in, model.init_memory(6)).logits, flat_tg)
    one.backward()
    torch.testing.assert_close(result.loss, one.detach())
    for name, param in model.named_parameters():
        torch.testing.assert_close(driver[name], param.grad, rtol=1e-5, atol=1e-6)


def test_stream_equals_rollout_without_backward() -> None:
    model = small_model("transformer_xl").eval()
    x = torch.randint(0, 32, (2, 30))
    inputs, targets = x[:, :-1], x[:, 1:]
    walked = list(stream(model, inputs, model.init_memory(2)))
    assert [start for start, _ in walked] == [0, 8, 16, 24]
    assert not any(out.logits.requires_grad for _, out in walked)
    loss_a = sum(
        lm_loss(out.logits, targets[:, start : start + out.logits.shape[1]])
        for start, out in walked
    )
    loss_b = rollout(
        model, x[:, :-1], x[:, 1:], model.init_memory(2), loss_fn=lm_loss, backward=False
    ).loss
    torch.testing.assert_close(loss_a, loss_b)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"strategy": "bptt"}, ConfigError, "unknown gradient strategy 'bptt'"),
        ({"strategy": "truncated", "truncate": 0}, ConfigError, "truncate must be"),
    ],
)
def test_bad_strategy(kwargs: dict, error: type, message: str) -> None:
    model = small_model("transformer")
    x = torch.randint(0, 32, (2, 9))
    with pytest.raises(error, match=message):
        rollout(model, x[:, :-1], x[:, 1:], model.init_memory(2), loss_fn=lm_loss, **kwargs)


def test_mismatched_targets_and_empty_inputs() -> None:
    model = small_model("transformer")
    x = torch.randint(0, 32, (2, 9))
    with pytest.raises(DataError, match="targets must have the inputs' shape"):
        rollout(model, x, x[:, 1:], model.init_memory(2), loss_fn=lm_loss)
    empty = torch.zeros(2, 0, dtype=torch.long)
    with pytest.raises(DataError, match="non-empty"):
        rollout(model, empty, empty, model.init_memory(2), loss_fn=lm_loss)


@pytest.mark.parametrize("strategy", ["full", "mrbp"])
def test_check_memory_names_the_segment_with_a_nonfinite_memory(strategy: str) -> None:
    from memtx.recurrence import NonFiniteMemoryError

    model = small_model("rmt").train()
    x = torch.randint(0, 32, (2, 3 * 8 + 1))
    with torch.no_grad():  # poison one token: the memory goes bad at the segment holding it
        model.embed.weight[5] = float("nan")
    x[:, :16] = 1
    x[:, 17] = 5  # in the third segment (positions 16..23)
    with pytest.raises(NonFiniteMemoryError, match="after segment 2"):
        rollout(
            model,
            x[:, :-1],
            x[:, 1:],
            model.init_memory(2),
            loss_fn=lm_loss,
            strategy=strategy,
            check_memory=True,
        )
