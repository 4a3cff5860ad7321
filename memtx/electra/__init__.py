"""ELECTRA pre-training (Clark et al. 2020) with TMR's replay buffer, and its downstream tasks.

- :mod:`memtx.electra.config`: the ``[electra]``, ``[pretrain]``, ``[finetune]`` tables;
- :mod:`memtx.electra.model`: generator and discriminator sharing one embedding;
- :mod:`memtx.electra.data`: random pre-training windows;
- :mod:`memtx.electra.replay`: the prioritized replay buffer (Transformer with Memory Replay);
- :mod:`memtx.electra.step`: the pre-training step function;
- :mod:`memtx.electra.pretrain`: the pre-training run over the one loop;
- :mod:`memtx.electra.evaluate`: held-out RTD, and replay's overhead per step;
- :mod:`memtx.electra.tasks`: downstream classification tasks from the plays;
- :mod:`memtx.electra.finetune`: fine-tuning the discriminator, a recipe over the one loop.

The reproduction that puts them together is :mod:`memtx.repro.tmr`.
"""

from __future__ import annotations

from memtx.electra.config import (
    ElectraConfig,
    ElectraRun,
    FinetuneConfig,
    PretrainConfig,
    load_electra_run,
)
from memtx.electra.data import WindowSampler
from memtx.electra.evaluate import evaluate_rtd, measure_replay_overhead
from memtx.electra.finetune import (
    SequenceClassifier,
    TaskResult,
    evaluate_downstream,
    finetune_task,
)
from memtx.electra.model import Corruption, Discriminator, ElectraModel, Generator
from memtx.electra.pretrain import PretrainResult, load_pretrained, pretrain, pretrain_from_config
from memtx.electra.replay import ReplayBuffer, ReplayConfig, replay_count, rtd_example_stats
from memtx.electra.step import ElectraStep, StepStats, electra_step
from memtx.electra.tasks import ClassificationTask, Speech, build_task, build_tasks, parse_speeches

__all__ = [
    "ClassificationTask",
    "Corruption",
    "Discriminator",
    "ElectraConfig",
    "ElectraModel",
    "ElectraRun",
    "ElectraStep",
    "FinetuneConfig",
    "Generator",
    "PretrainConfig",
    "PretrainResult",
    "ReplayBuffer",
    "ReplayConfig",
    "SequenceClassifier",
    "Speech",
    "StepStats",
    "TaskResult",
    "WindowSampler",
    "build_task",
    "build_tasks",
    "electra_step",
    "evaluate_downstream",
    "evaluate_rtd",
    "finetune_task",
    "load_electra_run",
    "load_pretrained",
    "measure_replay_overhead",
    "parse_speeches",
    "pretrain",
    "pretrain_from_config",
    "replay_count",
    "rtd_example_stats",
]
