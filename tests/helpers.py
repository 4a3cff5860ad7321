"""Small run configs shared by the training, evaluation and CLI tests."""

from __future__ import annotations

from memtx.config import RunConfig, load_run_config

TINY = [
    "model.name=transformer_xl",
    "model.d_model=32",
    "model.n_layers=2",
    "model.n_heads=2",
    "model.segment_len=16",
    "model.mem_len=16",
    "model.dropout=0.1",
    "train.batch_size=4",
    "train.rollout=2",
    "train.steps=8",
    "train.warmup_steps=2",
    "train.lr=3e-3",
    "train.log_every=1",
    "train.eval_tokens=2000",
    "train.checkpoint_every=4",
]


def tiny_run(*extra: str) -> RunConfig:
    """TINY with ``extra`` applied; choosing another model drops Transformer-XL's mem_len."""
    base = TINY
    if any(item.startswith("model.name=") for item in extra):
        base = [item for item in TINY if not item.startswith(("model.name", "model.mem_len"))]
    return load_run_config(None, overrides=[*base, *extra])
