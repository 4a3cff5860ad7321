"""Training, for every kind of run: one run folder lifecycle and one loop.

- :mod:`memtx.training.run`: :class:`RunFolder` (create-or-resume check, config,
  metrics with torn-line recovery, checkpoints of named parts) and the :class:`Part`
  protocol for what a checkpoint holds;
- :mod:`memtx.training.loop`: :func:`fit`, the one optimizer loop, over a step function
  and a :class:`Source`;
- :mod:`memtx.training.optim`: device, seeds, AdamW, learning-rate schedules;
- :mod:`memtx.training.sources`: text streams and task curricula for language-model
  training (ELECTRA's windows live in :mod:`memtx.electra.data`).

The recipes over it: :mod:`memtx.train` (language models and tasks),
:mod:`memtx.electra.pretrain` (ELECTRA with replay), :mod:`memtx.electra.finetune`.
"""

from __future__ import annotations

from memtx.training.loop import (
    BaseSource,
    FitResult,
    LoopConfig,
    LoopSettings,
    NonFiniteError,
    Source,
    StepFn,
    StepOutcome,
    TrainingInterrupted,
    apply_update,
    fit,
)
from memtx.training.optim import (
    Schedule,
    build_optimizer,
    cosine_schedule,
    linear_schedule,
    resolve_device,
    seed_everything,
    warmup_cosine,
)
from memtx.training.run import (
    OptimizerPart,
    Part,
    RngPart,
    RunFolder,
    RunStart,
    free_dir,
    load_weights,
    read_run_config,
    start_run,
)

__all__ = [
    "BaseSource",
    "LoopSettings",
    "RunStart",
    "start_run",
    "warmup_cosine",
    "FitResult",
    "LoopConfig",
    "NonFiniteError",
    "OptimizerPart",
    "Part",
    "RngPart",
    "RunFolder",
    "Schedule",
    "Source",
    "StepFn",
    "StepOutcome",
    "TrainingInterrupted",
    "apply_update",
    "build_optimizer",
    "cosine_schedule",
    "fit",
    "free_dir",
    "linear_schedule",
    "load_weights",
    "read_run_config",
    "resolve_device",
    "seed_everything",
]
