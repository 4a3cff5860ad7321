"""What every kind of run shares around the loop: device, seeds, optimizer, schedules."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from memtx.errors import ConfigError

__all__ = [
    "Schedule",
    "build_optimizer",
    "cosine_schedule",
    "linear_schedule",
    "resolve_device",
    "seed_everything",
    "warmup_cosine",
]

#: ``schedule(step) -> learning rate`` for the optimizer step ``step`` (0-based)
Schedule = Callable[[int], float]


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {name!r} but no CUDA GPU is available here")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(
    model: torch.nn.Module,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.AdamW:
    """AdamW; weight decay only on the weights of linear layers.

    Norms, biases, embeddings and memory parameters (Memformer's slot biases, RMT's
    initial memory) are not decayed: shrinking them changes what the memory holds.
    """
    linear = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (decay if id(param) in linear else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def cosine_schedule(*, lr: float, steps: int, warmup_steps: int, min_lr_ratio: float) -> Schedule:
    """Linear warmup to ``lr`` then cosine decay to ``lr * min_lr_ratio`` at ``steps``."""

    def schedule(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return lr * (step + 1) / warmup_steps
        span = max(steps - warmup_steps, 1)
        progress = min(max(step - warmup_steps, 0) / span, 1.0)
        floor = lr * min_lr_ratio
        return floor + 0.5 * (lr - floor) * (1 + math.cos(math.pi * progress))

    return schedule


class ScheduleSettings(Protocol):
    """The fields of a ``[train]`` / ``[pretrain]`` table the schedule reads."""

    @property
    def lr(self) -> float: ...
    @property
    def steps(self) -> int: ...
    @property
    def warmup_steps(self) -> int: ...
    @property
    def min_lr_ratio(self) -> float: ...


def warmup_cosine(settings: ScheduleSettings) -> Schedule:
    """:func:`cosine_schedule` with a run table's ``lr``, ``steps``, ``warmup_steps``,
    ``min_lr_ratio``."""
    return cosine_schedule(
        lr=settings.lr,
        steps=settings.steps,
        warmup_steps=settings.warmup_steps,
        min_lr_ratio=settings.min_lr_ratio,
    )


def linear_schedule(*, lr: float, steps: int, warmup_steps: int) -> Schedule:
    """Linear warmup over ``warmup_steps`` (>= 1), then linear decay to 0 at ``steps``."""

    def schedule(step: int) -> float:
        if step < warmup_steps:
            scale = (step + 1) / warmup_steps
        else:
            scale = (steps - step) / (steps - warmup_steps)
        return lr * max(scale, 0.0)

    return schedule
