"""TMR's downstream protocol: few-shot splits, linear probes, paired intervals, power."""

from __future__ import annotations

import math
import random

import pytest
import torch
from scipy import stats

from memtx.electra import ClassificationTask, ElectraConfig, ElectraModel
from memtx.electra.protocol import (
    accuracy_standard_error,
    examples_to_reach,
    few_shot,
    linear_probe,
    mean_interval,
    paired_difference,
    pooled_features,
    seeds_to_detect,
)
from memtx.errors import ConfigError


def toy_task(per_class: int = 40) -> ClassificationTask:
    """Class k: sequences of letter 'a' + k, of several lengths (right padding)."""
    examples = [([97 + k] * (4 + i % 9), k) for i in range(per_class) for k in range(3)]
    held_out = [([97 + k] * (3 + i % 7), k) for i in range(10) for k in range(3)]
    return ClassificationTask("toy", ["a", "b", "c"], examples, held_out, held_out)


def tiny_discriminator():
    torch.manual_seed(0)
    config = ElectraConfig(
        seq_len=16, d_model=32, n_layers=1, n_heads=2,
        generator_d_model=16, generator_layers=1, generator_heads=1,
    )  # fmt: skip
    return ElectraModel(config).discriminator


def test_few_shot_keeps_k_per_class_and_the_held_out_splits() -> None:
    task = toy_task()
    small = few_shot(task, per_class=5, seed=1)
    assert sorted(label for _, label in small.train) == [0] * 5 + [1] * 5 + [2] * 5
    assert all(example in task.train for example in small.train)
    assert small.valid is task.valid and small.test is task.test
    assert few_shot(task, per_class=5, seed=1).train == small.train
    assert few_shot(task, per_class=5, seed=2).train != small.train


@pytest.mark.parametrize("per_class", [0, 41])
def test_few_shot_refuses_impossible_counts(per_class: int) -> None:
    with pytest.raises(ConfigError, match="per_class"):
        few_shot(toy_task(), per_class=per_class, seed=0)


def test_pooled_features_are_the_mean_over_real_tokens_only() -> None:
    discriminator = tiny_discriminator()
    examples = [([97, 98, 99], 0), ([97] * 7, 1)]
    features, labels = pooled_features(discriminator, examples, pad_id=256)
    with torch.no_grad():
        alone = discriminator.hidden(torch.tensor([[97, 98, 99]])).mean(1)[0]
    assert torch.allclose(features[0], alone, atol=1e-5) and labels.tolist() == [0, 1]


def test_a_linear_probe_on_frozen_features_separates_a_separable_task() -> None:
    discriminator = tiny_discriminator()
    before = {k: v.clone() for k, v in discriminator.state_dict().items()}
    result = linear_probe(discriminator, toy_task(), pad_id=256)
    assert result.test_accuracy > 0.9 and result.train_examples == 120
    assert all(torch.equal(v, before[k]) for k, v in discriminator.state_dict().items())
    again = linear_probe(discriminator, toy_task(), pad_id=256)
    assert again == result  # deterministic: no fine-tuning noise


def test_paired_difference_is_the_t_interval_of_the_differences() -> None:
    a, b = [71.0, 73.5, 70.2, 72.8], [70.0, 71.0, 70.5, 71.3]
    result = paired_difference(a, b)
    differences = [x - y for x, y in zip(a, b)]
    mean = sum(differences) / 4
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / 3)
    assert math.isclose(result.mean, mean) and math.isclose(result.sd, sd)
    assert math.isclose(result.half_width, 3.182446305284263 * sd / 2, rel_tol=1e-9)
    assert mean_interval(differences) == result  # a paired difference is its differences' mean
    with pytest.raises(ConfigError, match="one length"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ConfigError, match=">= 2 pairs"):
        paired_difference([1.0], [1.0])


def test_seeds_to_detect_matches_a_simulated_power() -> None:
    # sd 2.7 points (play, 10 seeds): detecting 1 point at 95% with power 0.8.
    n = seeds_to_detect(sd=2.7, effect=1.0)
    assert seeds_to_detect(sd=2.7, effect=2.0) < n < seeds_to_detect(sd=3.9, effect=1.0)
    rng = random.Random(0)
    hits = 0
    for _ in range(2000):
        diffs = [rng.gauss(1.0, 2.7) for _ in range(n)]
        hits += stats.ttest_1samp(diffs, 0.0).pvalue < 0.05
    assert 0.77 <= hits / 2000 <= 0.86  # power 0.8 at n; one seed fewer falls short
    with pytest.raises(ConfigError, match="effect must be > 0"):
        seeds_to_detect(sd=1.0, effect=0.0)


def test_accuracy_standard_error() -> None:
    assert math.isclose(accuracy_standard_error(0.7, 2100), math.sqrt(0.21 / 2100))
    with pytest.raises(ConfigError):
        accuracy_standard_error(1.5, 10)


def test_examples_to_reach_interpolates_and_says_never() -> None:
    curve = [(1000, 0.60), (2000, 0.70), (4000, 0.74)]
    assert math.isclose(examples_to_reach(curve, 0.65), 1500.0)
    assert examples_to_reach(curve, 0.5) == 1000.0
    assert examples_to_reach(curve, 0.74) == 4000.0
    assert examples_to_reach(curve, 0.8) == math.inf
