"""Tiny configs of every model, for the contract suite and other fast tests."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
import torch

import memtx

COMMON: dict[str, Any] = {"vocab_size": 32, "d_model": 32, "n_heads": 2, "segment_len": 8}

SMALL: dict[str, tuple[str, dict[str, Any]]] = {
    "transformer": ("transformer", {**COMMON, "n_layers": 2}),
    "transformer_xl": ("transformer_xl", {**COMMON, "n_layers": 2, "mem_len": 8}),
    "memformer": (
        "memformer",
        {**COMMON, "encoder_layers": 1, "decoder_layers": 2, "memory_slots": 4},
    ),
    "memformer_positions": (
        "memformer",
        {
            **COMMON,
            "encoder_layers": 1,
            "decoder_layers": 2,
            "memory_slots": 4,
            "context_positions": True,
        },
    ),
    "memformer_joint": (
        "memformer",
        {
            **COMMON,
            "encoder_layers": 1,
            "decoder_layers": 2,
            "memory_slots": 4,
            "context_attention": "joint",
        },
    ),
    "memformer_layered": (
        "memformer",
        {
            **COMMON,
            "encoder_layers": 1,
            "decoder_layers": 2,
            "memory_slots": 4,
            "context_attention": "joint",
            "context_depth": "layered",
        },
    ),
    # a head of its own and the width-aware init (builtin backbone and TiedLM paths)
    "transformer_untied": (
        "transformer",
        {**COMMON, "n_layers": 2, "tie_embeddings": False, "init": "fan_in"},
    ),
    "rmt": ("rmt", {**COMMON, "n_layers": 2, "memory_tokens": 4}),
    "rmt_untied": (
        "rmt",
        {**COMMON, "n_layers": 2, "memory_tokens": 4, "tie_embeddings": False, "init": "fan_in"},
    ),
    "rmt_gate": ("rmt", {**COMMON, "n_layers": 2, "memory_tokens": 4, "write_gate": True}),
    "rmt_scaled": (
        "rmt",
        {**COMMON, "n_layers": 2, "memory_tokens": 4, "memory_scale": "embedding"},
    ),
    "rmt_hf": ("rmt", {**COMMON, "n_layers": 2, "memory_tokens": 4, "backbone": "hf"}),
    "armt": ("armt", {**COMMON, "n_layers": 2, "memory_tokens": 4, "d_mem": 4}),
    "armt_bounded": (
        "armt",
        {
            **COMMON,
            "n_layers": 2,
            "memory_tokens": 4,
            "d_mem": 4,
            "write_rule": "bounded",
            "read_floor": True,
        },
    ),
    "armt_hf": (
        "armt",
        {**COMMON, "n_layers": 2, "memory_tokens": 4, "d_mem": 4, "backbone": "hf"},
    ),
}

HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None


def tokens(batch: int, length: int, *, seed: int = 1) -> torch.Tensor:
    """Seeded random token ids [batch, length] of the tiny models' vocabulary."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, COMMON["vocab_size"], (batch, length), generator=gen)


def small_model(key: str, **overrides: Any) -> memtx.SegmentLM:
    """Build the tiny model ``key`` (skips when an optional backbone is missing)."""
    name, fields = SMALL[key]
    if fields.get("backbone") == "hf" and not HAS_TRANSFORMERS:
        pytest.skip("transformers is not installed (pip install memtx[hf])")
    return unzeroed(memtx.build(name, **{**fields, **overrides}))


def unzeroed(model: memtx.SegmentLM) -> memtx.SegmentLM:
    """``model`` with its zero-initialised matrices made random, as training would make them.

    Memformer's decoder starts with its cross-attention output at zero (it ignores H at
    init); equivalence tests must see every path carry signal and gradient.
    """
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2 and not param.any():
                param.normal_(std=0.02)
    return model
