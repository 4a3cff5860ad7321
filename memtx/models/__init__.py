"""Model registry: ``build(name, **fields)`` makes any model from its validated config."""

from __future__ import annotations

import importlib
from typing import Any

from memtx.config import ModelConfig, model_config
from memtx.models.protocol import Memory, SegmentLM, SegmentModel, StepOutput

# name -> (module, class); imported on first use so optional backbones cost nothing.
_MODELS: dict[str, tuple[str, str]] = {
    "transformer": ("memtx.models.transformer", "Transformer"),
    "transformer_xl": ("memtx.models.transformer_xl", "TransformerXL"),
    "memformer": ("memtx.models.memformer", "Memformer"),
    "rmt": ("memtx.models.rmt", "RMT"),
    "armt": ("memtx.models.armt", "ARMT"),
}


def from_config(config: ModelConfig) -> SegmentLM:
    """The model described by ``config`` (randomly initialised)."""
    module_name, class_name = _MODELS[config.name]
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(config)


def build(name: str, **fields: Any) -> SegmentLM:
    """Build model ``name`` ("transformer", "transformer_xl", "memformer", "rmt", "armt").

    Example:
        >>> model = build("transformer_xl", d_model=64, n_heads=2, n_layers=2, mem_len=32)

    Raises:
        ConfigError: unknown name, unknown field (named), wrong type or value.
    """
    return from_config(model_config(name, **fields))


__all__ = ["Memory", "SegmentLM", "SegmentModel", "StepOutput", "build", "from_config"]
