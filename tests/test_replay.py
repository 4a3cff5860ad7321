"""The prioritized replay buffer: sampling, weights, priorities, eviction, exact save/load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from memtx.electra.replay import ReplayBuffer, ReplayConfig, replay_count, rtd_example_stats
from memtx.errors import ConfigError, DataError

LENGTH = 6


def _examples(count: int, *, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.arange(offset, offset + count)[:, None].repeat(1, LENGTH)  # row k holds k
    labels = (ids + torch.arange(LENGTH)) % 3 == 0
    return ids, labels


def _filled(priorities: list[float], **fields: object) -> ReplayBuffer:
    """A buffer whose examples have exactly ``priorities`` (grad_norm kind, eps ~ 0)."""
    config = ReplayConfig(capacity=len(priorities), eps=1e-12, **fields)  # type: ignore[arg-type]
    buffer = ReplayBuffer(config, example_len=LENGTH)
    ids, labels = _examples(len(priorities))
    grad = torch.tensor(priorities, dtype=torch.float64) - 1e-12
    buffer.add(ids=ids, labels=labels, losses=torch.zeros(len(priorities)), grad_norms=grad)
    return buffer


def test_sampling_frequencies_follow_priorities() -> None:
    priorities = [0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 8.0]
    buffer = _filled(priorities, seed=7)
    draws = 40_000
    sample = buffer.sample(draws, beta=0.5)
    counts = torch.bincount(sample.indices, minlength=len(priorities)).double()
    # The rows store their own index, so the ids came from the slots drawn.
    assert torch.equal(sample.ids[:, 0], sample.indices)
    expected = torch.tensor(priorities, dtype=torch.float64) / sum(priorities) * draws
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    # Chi-square with 7 degrees of freedom: P(chi2 > 24.32) = 0.001.
    assert chi2 < 24.32, f"chi-square {chi2:.1f} against the priorities"
    uniform = torch.full_like(expected, draws / len(priorities))
    assert float(((counts - uniform) ** 2 / uniform).sum()) > 1000  # the test has power


def test_alpha_sharpens_or_flattens_the_distribution() -> None:
    flat = _filled([1.0, 4.0], alpha=0.0).probabilities()
    assert torch.allclose(flat, torch.tensor([0.5, 0.5], dtype=torch.float64))
    sharp = _filled([1.0, 4.0], alpha=2.0).probabilities()
    assert torch.allclose(sharp, torch.tensor([1 / 17, 16 / 17], dtype=torch.float64))


def test_importance_weights_exact_formula() -> None:
    priorities = [0.25, 1.0, 2.0, 4.75]
    buffer = _filled(priorities, alpha=1.0)
    beta = 0.6
    total, count = sum(priorities), len(priorities)
    probs = [p / total for p in priorities]
    raw = [(count * q) ** -beta for q in probs]  # PER: (N P(i))^-beta ...
    expected = [w / max(raw) for w in raw]  # ... normalized by the largest weight
    got = buffer.importance_weights(torch.arange(count), beta=beta)
    assert torch.allclose(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-12)
    assert got.max().item() == pytest.approx(1.0)  # the least likely example has weight 1
    sample = buffer.sample(50, beta=beta)
    assert torch.allclose(sample.weights.double(), got[sample.indices], rtol=1e-6)
    assert torch.allclose(
        sample.probabilities, torch.tensor(probs, dtype=torch.float64)[sample.indices]
    )


def test_grad_norm_proxy_is_the_norm_of_dloss_dlogits() -> None:
    logits = torch.randn(3, 5, requires_grad=True)
    labels = torch.rand(3, 5) < 0.3
    scored = torch.ones(3, 5, dtype=torch.bool)
    scored[2, 3:] = False  # padding does not count
    loss, grad_norm = rtd_example_stats(logits, labels, scored)
    count = scored.sum(-1).double()
    (loss * count.float()).sum().backward()  # the summed BCE of each example
    expected = logits.grad.double().norm(dim=-1) / count.sqrt()  # type: ignore[union-attr]
    assert torch.allclose(grad_norm.double(), expected, atol=1e-6)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    assert loss[2].item() == pytest.approx(
        bce(logits[2, :3], labels[2, :3].float()).item(), rel=1e-6
    )


def test_loss_change_priority_and_max_priority_for_new_examples() -> None:
    config = ReplayConfig(capacity=4, priority="loss_change", eps=0.01)
    buffer = ReplayBuffer(config, example_len=LENGTH)
    ids, labels = _examples(2)
    buffer.add(ids=ids, labels=labels, losses=torch.tensor([0.7, 0.2]), grad_norms=torch.ones(2))
    assert buffer.priorities[:2].tolist() == [1.0, 1.0]  # no previous loss: the max (1 empty)
    buffer.update(torch.tensor([0, 1]), losses=torch.tensor([0.4, 0.9]), grad_norms=torch.ones(2))
    assert buffer.priorities[:2].tolist() == pytest.approx([0.3 + 0.01, 0.7 + 0.01])
    assert buffer.last_loss[:2].tolist() == pytest.approx([0.4, 0.9])
    more_ids, more_labels = _examples(1, offset=2)
    buffer.add(ids=more_ids, labels=more_labels, losses=torch.zeros(1), grad_norms=torch.ones(1))
    assert buffer.priorities[2].item() == 1.0  # still the largest ever seen


def test_grad_norm_priority_refreshes_from_the_replay_step() -> None:
    buffer = _filled([1.0, 2.0, 3.0])
    buffer.update(torch.tensor([2]), losses=torch.tensor([0.1]), grad_norms=torch.tensor([0.05]))
    assert buffer.priorities[2].item() == pytest.approx(0.05)


def test_oldest_eviction_overwrites_in_insertion_order() -> None:
    buffer = ReplayBuffer(ReplayConfig(capacity=4, eviction="oldest"), example_len=LENGTH)
    for start in range(0, 7, 1):
        ids, labels = _examples(1, offset=start)
        buffer.add(ids=ids, labels=labels, losses=torch.zeros(1), grad_norms=torch.rand(1))
    assert len(buffer) == 4
    assert sorted(buffer.ids[:, 0].tolist()) == [3, 4, 5, 6]  # the four newest survive


def test_lowest_eviction_keeps_high_priority_examples() -> None:
    buffer = ReplayBuffer(ReplayConfig(capacity=4, eviction="lowest", eps=1e-9), example_len=LENGTH)
    ids, labels = _examples(4)
    buffer.add(
        ids=ids, labels=labels, losses=torch.zeros(4), grad_norms=torch.tensor([0.9, 0.1, 0.5, 0.2])
    )
    new_ids, new_labels = _examples(2, offset=10)
    slots = buffer.add(
        ids=new_ids, labels=new_labels, losses=torch.zeros(2), grad_norms=torch.tensor([0.3, 0.3])
    )
    assert sorted(slots.tolist()) == [1, 3]  # the two lowest priorities were replaced
    assert sorted(buffer.ids[:, 0].tolist()) == [0, 2, 10, 11]


def test_more_examples_than_capacity_keeps_the_last_ones() -> None:
    buffer = ReplayBuffer(ReplayConfig(capacity=3), example_len=LENGTH)
    ids, labels = _examples(5)
    slots = buffer.add(ids=ids, labels=labels, losses=torch.zeros(5), grad_norms=torch.ones(5))
    assert slots[:2].tolist() == [-1, -1]
    assert sorted(buffer.ids[:, 0].tolist()) == [2, 3, 4]


def test_save_and_load_round_trip_exactly(tmp_path: Path) -> None:
    torch.manual_seed(3)
    config = ReplayConfig(capacity=16, priority="loss_change", seed=5)
    buffer = ReplayBuffer(config, example_len=LENGTH)
    for step in range(5):
        ids = torch.randint(0, 258, (6, LENGTH))
        labels = torch.rand(6, LENGTH) < 0.2
        buffer.add(ids=ids, labels=labels, losses=torch.rand(6), grad_norms=torch.rand(6))
        drawn = buffer.sample(4)
        buffer.update(drawn.indices, losses=torch.rand(4), grad_norms=torch.rand(4))
        assert step < 2 or len(buffer) == 16
    buffer.save(tmp_path / "buffer")
    restored = ReplayBuffer.load(tmp_path / "buffer")
    tensors, meta = buffer.state_dict()
    tensors_back, meta_back = restored.state_dict()
    assert meta == meta_back
    for name, value in tensors.items():
        assert torch.equal(value, tensors_back[name]), name
    # Same state, same sampling sequence: from the buffers' own generators ...
    for _ in range(3):
        a, b = buffer.sample(8, beta=0.7), restored.sample(8, beta=0.7)
        assert torch.equal(a.indices, b.indices) and torch.equal(a.weights, b.weights)
        assert torch.equal(a.ids, b.ids) and torch.equal(a.labels, b.labels)
    # ... and from equal explicit generators.
    first = buffer.sample(8, generator=torch.Generator().manual_seed(11))
    second = restored.sample(8, generator=torch.Generator().manual_seed(11))
    assert torch.equal(first.indices, second.indices)


def test_loading_a_state_of_another_shape_fails_clearly() -> None:
    tensors, meta = _filled([1.0, 2.0]).state_dict()
    other = ReplayBuffer(ReplayConfig(capacity=3), example_len=LENGTH)
    with pytest.raises(DataError, match="capacity 2 x 6 tokens, this buffer 3 x 6"):
        other.load_state_dict(tensors, meta)


def test_empty_buffer_cannot_sample() -> None:
    buffer = ReplayBuffer(ReplayConfig(capacity=2), example_len=LENGTH)
    with pytest.raises(DataError, match="empty"):
        buffer.sample(1)


def test_replay_count_keeps_the_ratio() -> None:
    assert replay_count(32, 0.0) == 0
    assert replay_count(32, 0.2) == 8  # 8 / 40 = 0.2 of the discriminator batch
    assert replay_count(36, 0.1) == 4
    assert replay_count(32, 0.1) == 3  # 3 / 35 <= 0.1; 4 / 36 would be more
    for fresh in range(1, 70):
        for ratio in (0.05, 0.1, 0.2, 0.25, 0.5):
            if fresh * ratio / (1 - ratio) < 1:
                continue
            count = replay_count(fresh, ratio)
            assert count / (fresh + count) <= ratio + 1e-12
            assert (count + 1) / (fresh + count + 1) > ratio  # the most that fit


def test_a_ratio_too_small_to_replay_anything_is_refused() -> None:
    with pytest.raises(ConfigError, match="at least 1/33"):
        replay_count(32, 0.02)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"capacity": 0}, r"^replay\.capacity must be >= 1, got 0$"),
        ({"ratio": 1.0}, r"^replay\.ratio must be in \[0\.0, 1\.0\), got 1\.0$"),
        ({"ratio": -0.1}, r"^replay\.ratio must be in \[0\.0, 1\.0\), got -0\.1$"),
        ({"priority": "entropy"}, r"^replay\.priority must be one of grad_norm, loss_change"),
        ({"eviction": "random"}, r"^replay\.eviction must be one of oldest, lowest"),
        ({"capacity": "big"}, r"^replay\.capacity must be int, got 'big'$"),
    ],
)
def test_bad_replay_configs(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        ReplayConfig(**fields)
    assert "\n" not in str(info.value)
