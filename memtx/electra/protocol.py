"""A downstream protocol in which pre-training matters and noise is small (TMR, issue 18).

Fine-tuning every parameter on a few hundred examples per class lets a randomly
initialised discriminator catch up with a pre-trained one, and its seed-to-seed spread
(2-4 points in ``benchmarks/tmr.md``) hides any effect replay has. The parts here measure
what pre-training put into the features instead:

- :func:`few_shot`: ``k`` labelled examples per class (16, 64, 256), drawn with a seed,
  the valid and test splits unchanged: with 16 a random init cannot learn the task.
- :func:`linear_probe`: the discriminator frozen, its mean-pooled features computed once,
  a logistic-regression head trained full-batch (deterministic given the seed: the only
  noise left is the pre-training's).
- :func:`paired_difference`: replay minus no replay over paired seeds, with its t-interval.
- :func:`seeds_to_detect`: the power analysis: how many paired seeds a two-sided t-test
  needs to detect a given difference, from the spread measured.
- :func:`accuracy_standard_error`: a test set's own sampling error.
- :func:`examples_to_reach`: sample efficiency, the generated examples a learning curve
  needs to reach a score.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from scipy import stats
from torch import Tensor

from memtx.electra.finetune import pad_batch
from memtx.electra.model import Discriminator
from memtx.electra.tasks import ClassificationTask
from memtx.errors import ConfigError
from memtx.training import BaseSource, LoopConfig, StepOutcome, fit

__all__ = [
    "PairedDifference",
    "ProbeResult",
    "accuracy_standard_error",
    "examples_to_reach",
    "few_shot",
    "linear_probe",
    "mean_interval",
    "paired_difference",
    "pooled_features",
    "seeds_to_detect",
]


def few_shot(task: ClassificationTask, *, per_class: int, seed: int) -> ClassificationTask:
    """``task`` with ``per_class`` training examples of every class, drawn with ``seed``;
    valid and test are unchanged (the same examples for every shot count and seed).

    Raises:
        ConfigError: ``per_class`` < 1, or a class with fewer training examples.
    """
    if per_class < 1:
        raise ConfigError(f"per_class must be >= 1, got {per_class}")
    by_class: dict[int, list[tuple[list[int], int]]] = defaultdict(list)
    for example in task.train:
        by_class[example[1]].append(example)
    rng = random.Random(seed)
    train: list[tuple[list[int], int]] = []
    for label in range(len(task.classes)):
        group = by_class.get(label, [])
        if len(group) < per_class:
            raise ConfigError(
                f"task {task.name!r}: class {task.classes[label]!r} has {len(group)} training "
                f"examples, fewer than per_class={per_class}"
            )
        train += rng.sample(group, per_class)
    return ClassificationTask(task.name, task.classes, train, task.valid, task.test)


@torch.no_grad()
def pooled_features(
    discriminator: Discriminator,
    examples: Sequence[tuple[list[int], int]],
    *,
    pad_id: int,
    batch_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """The frozen discriminator's hidden states mean-pooled over real tokens [N, d] (the
    features fine-tuning's head reads) and the labels [N]."""
    was_training = discriminator.training
    discriminator.eval()
    device = next(discriminator.parameters()).device
    features, labels = [], []
    try:
        for start in range(0, len(examples), batch_size):
            ids, mask, label = pad_batch(
                examples[start : start + batch_size], pad_id=pad_id, device=device
            )
            hidden = discriminator.hidden(ids, key_mask=mask)  # (B, L, d)
            weight = mask.to(hidden.dtype)[..., None]  # (B, L, 1)
            features.append(((hidden * weight).sum(1) / weight.sum(1).clamp_min(1.0)).cpu())
            labels.append(label.cpu())
    finally:
        discriminator.train(was_training)
    return torch.cat(features), torch.cat(labels)


@dataclass(frozen=True)
class ProbeResult:
    """A linear probe's accuracy on one task."""

    task: str
    train_examples: int
    valid_accuracy: float
    test_accuracy: float


def linear_probe(
    discriminator: Discriminator,
    task: ClassificationTask,
    *,
    pad_id: int,
    seed: int = 0,
    steps: int = 300,
    lr: float = 0.05,
    weight_decay: float = 1e-3,
) -> ProbeResult:
    """A logistic-regression head on the frozen discriminator's pooled features.

    Features are standardised with the training split's mean and spread, then the head is
    trained full-batch on the one loop (AdamW at a constant ``lr`` for ``steps`` steps) from
    a zero init: the result is deterministic.
    """
    train_x, train_y = pooled_features(discriminator, task.train, pad_id=pad_id)
    mean, spread = train_x.mean(0), train_x.std(0, unbiased=False).clamp_min(1e-6)

    def standard(x: Tensor) -> Tensor:
        return (x - mean) / spread

    torch.manual_seed(seed)
    head = torch.nn.Linear(train_x.shape[1], len(task.classes))
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    fit(
        _ProbeStep(head),
        _FullBatch(standard(train_x), train_y),
        model=head,
        optimizer=torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay),
        schedule=lambda step: lr,  # constant
        config=LoopConfig(steps=steps, seed=seed, log_every=steps, desc="probe"),
    )

    @torch.no_grad()
    def accuracy(examples: Sequence[tuple[list[int], int]]) -> float:
        x, y = pooled_features(discriminator, examples, pad_id=pad_id)
        return float((head(standard(x)).argmax(-1) == y).float().mean())

    return ProbeResult(task.name, len(task.train), accuracy(task.valid), accuracy(task.test))


class _FullBatch(BaseSource):
    """The probe's loop source: every training feature and label, every step."""

    def __init__(self, features: Tensor, labels: Tensor) -> None:
        self.batch = (features, labels)

    def next_batch(self) -> tuple[Tensor, Tensor]:
        return self.batch

    def validate(self, model: torch.nn.Module, *, device: torch.device) -> dict[str, float]:
        return {}

    def state(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        return {}, {}

    def load_state(self, meta: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        pass


class _ProbeStep:
    """The probe's step function: cross-entropy of the head on the features."""

    def __init__(self, head: torch.nn.Linear) -> None:
        self.head = head

    def __call__(self, batch: tuple[Tensor, Tensor], *, step: int) -> StepOutcome:
        features, labels = batch
        loss = F.cross_entropy(self.head(features), labels)
        loss.backward()
        return StepOutcome(loss=loss.detach(), tokens=int(labels.shape[0]))


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` over paired values: mean, sample spread, and the t-interval's half-width."""

    mean: float
    sd: float
    half_width: float
    n: int
    confidence: float

    @property
    def interval(self) -> tuple[float, float]:
        return self.mean - self.half_width, self.mean + self.half_width


def paired_difference(
    a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95
) -> PairedDifference:
    """``a - b`` paired by position (e.g. by seed) with a two-sided t-interval.

    Raises:
        ConfigError: lengths that differ, or fewer than 2 pairs.
    """
    if len(a) != len(b):
        raise ConfigError(f"paired values must have one length, got {len(a)} and {len(b)}")
    if len(a) < 2:
        raise ConfigError(f"a paired difference needs >= 2 pairs, got {len(a)}")
    return mean_interval([x - y for x, y in zip(a, b)], confidence=confidence)


def mean_interval(values: Sequence[float], *, confidence: float = 0.95) -> PairedDifference:
    """The mean of ``values`` (>= 2) with its two-sided t-interval (for a paired
    difference, the values are the differences)."""
    if len(values) < 2:
        raise ConfigError(f"an interval needs >= 2 values, got {len(values)}")
    n, sd = len(values), statistics.stdev(values)
    t = float(stats.t.ppf(0.5 + confidence / 2, n - 1))
    return PairedDifference(statistics.fmean(values), sd, t * sd / math.sqrt(n), n, confidence)


def seeds_to_detect(
    *, sd: float, effect: float = 1.0, confidence: float = 0.95, power: float = 0.8
) -> int:
    """Paired seeds a two-sided t-test at level ``1 - confidence`` needs to detect a true
    difference ``effect`` with probability ``power``, for paired differences of spread
    ``sd``: the smallest n with n >= ((t_{1-alpha/2, n-1} + t_{power, n-1}) sd / effect)^2.

    Raises:
        ConfigError: ``effect`` <= 0, ``sd`` < 0, or a level or power outside (0, 1).
    """
    if not effect > 0 or sd < 0:
        raise ConfigError(f"effect must be > 0 and sd >= 0, got effect {effect}, sd {sd}")
    if not (0 < confidence < 1 and 0 < power < 1):
        raise ConfigError(f"confidence and power must be in (0, 1), got {confidence}, {power}")
    n = 2
    while True:
        quantiles = stats.t.ppf(0.5 + confidence / 2, n - 1) + stats.t.ppf(power, n - 1)
        if n >= (quantiles * sd / effect) ** 2:
            return n
        n += 1


def accuracy_standard_error(accuracy: float, examples: int) -> float:
    """The standard error of an accuracy measured on ``examples`` independent examples."""
    if examples < 1 or not 0.0 <= accuracy <= 1.0:
        raise ConfigError(
            f"need an accuracy in [0, 1] and examples >= 1, got {accuracy}, {examples}"
        )
    return math.sqrt(accuracy * (1 - accuracy) / examples)


def examples_to_reach(curve: Sequence[tuple[float, float]], target: float) -> float:
    """The generated examples at which a learning curve (examples, score; a higher score
    is better) first reaches ``target``, interpolated linearly between its points; ``inf``
    when it never does."""
    points = sorted(curve)
    if not points:
        raise ConfigError("a learning curve needs at least one point")
    previous: tuple[float, float] | None = None
    for examples, score in points:
        if score >= target:
            if previous is None or previous[1] >= target:
                return float(examples)
            (x0, y0), (x1, y1) = previous, (examples, score)
            return float(x0 + (target - y0) * (x1 - x0) / (y1 - y0))
        previous = (examples, score)
    return math.inf
