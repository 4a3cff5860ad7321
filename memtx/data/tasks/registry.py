"""The tasks by name, and :func:`make_task`, which makes one from any two lengths.

A new task joins by one entry in :data:`TASKS` (its class's keyword parameters become the
parameters ``make_task`` accepts for it).
"""

from __future__ import annotations

import inspect
from typing import Any

from memtx.data.tasks.babilong import BabilongTask
from memtx.data.tasks.base import Task, task_lengths
from memtx.data.tasks.facts import FactsTask
from memtx.data.tasks.synthetic import AssociativeTask, CopyTask, ReverseTask
from memtx.errors import ConfigError

__all__ = ["TASKS", "make_task", "task_vocabulary"]

TASKS: dict[str, type[Task]] = {
    cls.name: cls for cls in (CopyTask, ReverseTask, AssociativeTask, FactsTask, BabilongTask)
}


def make_task(
    name: str,
    *,
    total_len: int | None = None,
    segments: int | None = None,
    segment_len: int | None = None,
    seed: int = 0,
    **params: Any,
) -> Task:
    """The task ``name`` with ``total_len`` tokens (= ``segments * segment_len``).

    Example:
        >>> task = make_task("copy", segments=9, segment_len=8, alphabet=8, seed=0)
        >>> batch = task.sample(32)   # inputs/targets [32, 72]

    Args:
        name: one of :data:`TASKS` (``copy``, ``reverse``, ``associative``, ``facts``,
            ``babilong``: the bAbI task in its ``qa`` parameter).
        total_len, segments, segment_len: any two (or ``total_len`` alone: one segment).
        seed: seeds the task's generator.
        params: the task's own parameters (see each task class); others are refused.

    Raises:
        ConfigError: unknown task or parameter, inconsistent lengths, a sequence too short
            for the task, or a question and answer that do not fit in one segment.
    """
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
    cls = TASKS[name]
    common = ("total_len", "segments", "segment_len", "seed")
    known = [p for p in _init_params(cls) if p not in common]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown parameter {unknown[0]!r} for task {name!r} (known: {', '.join(known)})"
        )
    total_len, segments, segment_len = task_lengths(total_len, segments, segment_len)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    return cls(total_len=total_len, segments=segments, segment_len=segment_len, seed=seed, **params)


def _init_params(cls: type) -> list[str]:
    return list(inspect.signature(cls).parameters)


def task_vocabulary(name: str, **params: Any) -> tuple[str, ...]:
    """The sentences task ``name`` writes as text (``facts``, ``babilong``), for a BPE
    tokenizer trained for it to learn their words; empty for the byte-level tasks.
    ``params`` are the task's own (those its ``vocabulary`` does not take are ignored)."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
    vocabulary = getattr(TASKS[name], "vocabulary", None)
    if vocabulary is None:
        return ()
    wanted = inspect.signature(vocabulary).parameters
    return tuple(vocabulary(**{k: v for k, v in params.items() if k in wanted}))
