"""Memformer's evaluation-time diagnostics: each equals the path it claims to be."""

from __future__ import annotations

import pytest
import torch

from memtx.errors import ConfigError
from memtx.models.memformer import Memformer
from tests.models.small import small_model, tokens

SEG = 8


def memformer(**overrides: object) -> Memformer:
    model = small_model("memformer", **overrides).eval()
    assert isinstance(model, Memformer)
    return model


def stream_logits(model: Memformer, segments: list[torch.Tensor]) -> list[torch.Tensor]:
    """Logits of each segment, read in order from a fresh memory."""
    memory = model.init_memory(segments[0].shape[0])
    outputs = []
    with torch.no_grad():
        for segment in segments:
            out = model.step(segment, memory)
            outputs.append(out.logits)
            memory = out.memory
    return outputs


SEGMENTS = [tokens(3, SEG, seed=seed) for seed in range(10, 15)]
READS = ["cross", "joint"]  # model.context_attention


@pytest.mark.parametrize("read", READS)
def test_no_reader_equals_the_no_memory_model_with_the_same_weights(read: str) -> None:
    model = memformer(context_attention=read)
    ablation = memformer(use_memory=False, context_attention=read)
    missing, unexpected = ablation.load_state_dict(model.state_dict(), strict=False)
    assert not missing  # every weight of the ablation comes from the trained model
    assert unexpected  # the reader, writer and slot bias are what it lacks
    model.set_diagnostic("no_reader")
    for ours, theirs in zip(stream_logits(model, SEGMENTS), stream_logits(ablation, SEGMENTS)):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("read", READS)
def test_context_masked_predicts_each_segment_from_itself_alone(read: str) -> None:
    model = memformer(context_attention=read)
    full = stream_logits(model, SEGMENTS)
    model.set_diagnostic("context_masked")
    masked = stream_logits(model, SEGMENTS)
    for segment, logits in zip(SEGMENTS, masked):
        alone = stream_logits(model, [segment])[0]
        torch.testing.assert_close(logits, alone, rtol=0, atol=1e-6)
    # The first segment has no history either way; later ones lose it.
    torch.testing.assert_close(masked[0], full[0], rtol=0, atol=1e-6)
    assert all((m - f).abs().max() > 1e-3 for m, f in zip(masked[1:], full[1:]))


@pytest.mark.parametrize("read", READS)
def test_memory_reset_keeps_only_the_previous_segment(read: str) -> None:
    model = memformer(context_attention=read)
    full = stream_logits(model, SEGMENTS)
    model.set_diagnostic("memory_reset")
    reset = stream_logits(model, SEGMENTS)
    model.set_diagnostic("none")
    for t in range(1, len(SEGMENTS)):
        pair = stream_logits(model, SEGMENTS[t - 1 : t + 1])[1]  # (previous, this) only
        torch.testing.assert_close(reset[t], pair, rtol=0, atol=1e-6)
    # Up to the second segment nothing was carried yet; from the third the slots matter.
    torch.testing.assert_close(reset[1], full[1], rtol=0, atol=1e-6)
    assert (reset[3] - full[3]).abs().max() > 1e-5


@pytest.mark.parametrize("read", READS)
def test_diagnostics_reach_cached_generation_too(read: str) -> None:
    model = memformer(context_attention=read)
    model.set_diagnostic("context_masked")
    memory = model.init_memory(3)
    with torch.no_grad():
        memory = model.step(SEGMENTS[0], memory).memory
        state = model.begin_decode(memory)
        cached, _ = model.decode(SEGMENTS[1], state)
    alone = stream_logits(model, [SEGMENTS[1]])[0]
    torch.testing.assert_close(cached, alone, rtol=0, atol=1e-5)


def test_unknown_or_impossible_diagnostics_are_refused() -> None:
    with pytest.raises(ConfigError, match="diagnostic must be one of"):
        memformer().set_diagnostic("half")
    with pytest.raises(ConfigError, match="needs a model with memory"):
        memformer(use_memory=False).set_diagnostic("memory_reset")
    memformer(use_memory=False).set_diagnostic("context_masked")  # H still exists there
