"""memtx: memory-augmented transformers that read sequences of any length segment by segment.

import memtx
model = memtx.build("memformer", vocab_size=256, d_model=256, n_layers=4,
                    n_heads=4, segment_len=128, memory_slots=32)
memory = model.init_memory(batch_size)
out = model.step(tokens, memory)      # out.logits [B, L, V], out.memory
"""

from memtx.config import (
    ARMTConfig,
    DataConfig,
    MemformerConfig,
    ModelConfig,
    RMTConfig,
    RunConfig,
    TrainConfig,
    TransformerConfig,
    TransformerXLConfig,
    load_run_config,
    model_config,
)
from memtx.errors import ConfigError, DataError, MemtxError
from memtx.models import SegmentLM, SegmentModel, StepOutput, build, from_config

__version__ = "0.1.0"

__all__ = [
    "ARMTConfig",
    "ConfigError",
    "DataConfig",
    "DataError",
    "MemformerConfig",
    "MemtxError",
    "ModelConfig",
    "RMTConfig",
    "RunConfig",
    "SegmentLM",
    "SegmentModel",
    "StepOutput",
    "TrainConfig",
    "TransformerConfig",
    "TransformerXLConfig",
    "build",
    "from_config",
    "load_run_config",
    "model_config",
]
