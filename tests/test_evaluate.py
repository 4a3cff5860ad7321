"""Streaming evaluation equals one-shot evaluation, on any split length."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

import memtx
from memtx.evaluate import evaluate_tokens


def test_streamed_transformer_xl_equals_one_shot() -> None:
    # With a cache as long as the text, Transformer-XL streamed in segments of 8 sees
    # exactly what one pass over all 40 tokens sees.
    fields = dict(vocab_size=50, d_model=32, n_heads=2, n_layers=2, mem_len=64)
    streamed = memtx.build("transformer_xl", segment_len=8, **fields).eval()
    one_shot = memtx.build("transformer_xl", segment_len=64, **fields).eval()
    one_shot.load_state_dict(streamed.state_dict())
    tokens = np.random.default_rng(0).integers(0, 50, size=41).astype(np.uint16)
    result = evaluate_tokens(streamed, tokens, rows=1)
    x = torch.from_numpy(tokens.astype(np.int64))[None]
    logits = one_shot.step(x[:, :-1], one_shot.init_memory(1)).logits
    expected = F.cross_entropy(logits[0], x[0, 1:]).item()
    assert result.tokens == 40
    assert math.isclose(result.loss, expected, rel_tol=1e-5)
    assert math.isclose(result.bpc, expected / math.log(2), rel_tol=1e-5)


def test_eval_restores_training_mode_and_counts_tokens() -> None:
    model = memtx.build(
        "transformer", vocab_size=20, d_model=16, n_heads=2, n_layers=1, segment_len=4
    ).train()
    tokens = np.arange(103, dtype=np.uint16) % 20
    result = evaluate_tokens(model, tokens, rows=3)
    assert model.training
    assert result.tokens == 3 * (103 // 3 - 1)
    assert result.peak_memory_mb > 0 and result.tokens_per_s > 0
