"""Configuration: one frozen, typed, validated dataclass per model, plus training and data.

Every config checks its own fields on creation and raises :class:`ConfigError` with a
one-line message that names the field (``ConfigError: model.segment_len must be >= 1,
got 0``). Run configs are read from TOML presets (``configs/*.toml``) and overridden with
``--set section.key=value``; unknown keys and wrongly typed values are errors, never
silently ignored.

Modules: :mod:`memtx.config.checks` (the :class:`Checked` base), :mod:`memtx.config.models`
(one dataclass per model), :mod:`memtx.config.run` (``[train]``, ``[data]``, ``[task]``
and :class:`RunConfig`), :mod:`memtx.config.loading` (the one loader, used by every
kind of run).
"""

from __future__ import annotations

from memtx.config.checks import Checked, construct, section_tables
from memtx.config.loading import load_config_tables, load_run_config, parse_overrides
from memtx.config.models import (
    MODEL_CONFIGS,
    ARMTConfig,
    MemformerConfig,
    ModelConfig,
    RMTConfig,
    TransformerConfig,
    TransformerXLConfig,
    model_config,
)
from memtx.config.run import SECTIONS, DataConfig, RunConfig, TaskConfig, TrainConfig

__all__ = [
    "ARMTConfig",
    "MODEL_CONFIGS",
    "SECTIONS",
    "Checked",
    "DataConfig",
    "MemformerConfig",
    "ModelConfig",
    "RMTConfig",
    "RunConfig",
    "TaskConfig",
    "TrainConfig",
    "TransformerConfig",
    "TransformerXLConfig",
    "construct",
    "load_config_tables",
    "load_run_config",
    "model_config",
    "parse_overrides",
    "section_tables",
]
