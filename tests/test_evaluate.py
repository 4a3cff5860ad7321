"""Streaming evaluation equals one-shot evaluation, on any split length."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import memtx
from memtx.data.tasks import Task, make_task
from memtx.errors import DataError
from memtx.evaluate import evaluate_task, evaluate_tokens
from memtx.models.protocol import SegmentModel


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


def test_bits_by_position_are_the_per_position_means_of_the_one_shot_losses() -> None:
    """Position i's figure is the mean loss (in bits) of every token at offset i of a
    segment, the last segment shorter; their token-weighted mean is ``bits_per_token``."""
    fields = dict(vocab_size=50, d_model=32, n_heads=2, n_layers=2, mem_len=64)
    streamed = memtx.build("transformer_xl", segment_len=8, **fields).eval()
    one_shot = memtx.build("transformer_xl", segment_len=64, **fields).eval()
    one_shot.load_state_dict(streamed.state_dict())
    tokens = np.random.default_rng(1).integers(0, 50, size=2 * 21 + 2).astype(np.uint16)
    result = evaluate_tokens(streamed, tokens, rows=2)  # 2 rows of 21 targets: 8 + 8 + 5
    grid = torch.from_numpy(tokens.astype(np.int64))[: 2 * 22].view(2, 22)
    logits = one_shot.step(grid[:, :-1], one_shot.init_memory(2)).logits
    losses = F.cross_entropy(logits.transpose(1, 2), grid[:, 1:], reduction="none") / math.log(2)
    offsets = torch.arange(21) % 8
    expected = [losses[:, offsets == i].mean().item() for i in range(8)]
    assert result.bits_by_position == pytest.approx(expected, rel=1e-5)
    weights = [(offsets == i).sum().item() for i in range(8)]
    mean = sum(b * w for b, w in zip(result.bits_by_position, weights, strict=True)) / 21
    assert mean == pytest.approx(result.bits_per_token, rel=1e-6)


def test_eval_restores_training_mode_and_counts_tokens() -> None:
    model = memtx.build(
        "transformer", vocab_size=20, d_model=16, n_heads=2, n_layers=1, segment_len=4
    ).train()
    tokens = np.arange(103, dtype=np.uint16) % 20
    result = evaluate_tokens(model, tokens, rows=3)
    assert model.training
    assert result.tokens == 3 * (103 // 3 - 1)
    assert result.peak_memory_mb > 0 and result.tokens_per_s > 0


def _hand_walked_task_scores(
    model: SegmentModel, task: Task, *, samples: int, seed: int, batch_size: int
) -> dict[str, float]:
    """The segment loop ``evaluate_task`` replaced, written out by hand: the reference."""
    generator = torch.Generator().manual_seed(seed)
    segment_len = model.config.segment_len
    loss_sum, right, scored, exact, rows = 0.0, 0, 0, 0, 0
    with torch.no_grad():
        for first in range(0, samples, batch_size):
            sample = task.sample(min(batch_size, samples - first), generator=generator)
            memory = model.init_memory(sample.inputs.shape[0])
            wrong = torch.zeros(sample.inputs.shape[0], dtype=torch.long)
            for offset in range(0, sample.inputs.shape[1], segment_len):
                out = model.step(sample.inputs[:, offset : offset + segment_len], memory)
                memory = out.memory
                y = sample.targets[:, offset : offset + segment_len]
                mask = y != -100
                if not mask.any():
                    continue
                logits = out.logits.float()
                loss_sum += float(F.cross_entropy(logits[mask], y[mask], reduction="sum"))
                hits = (logits.argmax(-1) == y) & mask
                right += int(hits.sum())
                scored += int(mask.sum())
                wrong += (mask & ~hits).sum(1)
            exact += int((wrong == 0).sum())
            rows += sample.inputs.shape[0]
    return {
        "loss": loss_sum / max(scored, 1),
        "token_accuracy": right / max(scored, 1),
        "exact_match": exact / max(rows, 1),
    }


@pytest.mark.parametrize("name", ["memformer", "rmt", "armt"])
def test_evaluate_task_equals_the_hand_written_segment_walk(name: str) -> None:
    torch.manual_seed(0)
    fields = {"memformer": dict(memory_slots=4, encoder_layers=1, decoder_layers=1)}.get(
        name, dict(memory_tokens=2, n_layers=1)
    )
    model = memtx.build(
        name, vocab_size=256, d_model=16, n_heads=2, segment_len=8, dropout=0.0, **fields
    ).train()
    task = make_task("copy", segments=3, segment_len=8, alphabet=4, source_len=4, seed=0)
    metrics = evaluate_task(model, task, samples=7, device="cpu", seed=3, batch_size=3)
    assert model.training  # the mode is restored
    model.eval()
    expected = _hand_walked_task_scores(model, task, samples=7, seed=3, batch_size=3)
    assert metrics.keys() == expected.keys()
    for key in expected:
        assert math.isclose(metrics[key], expected[key], rel_tol=1e-6, abs_tol=1e-9), key
    assert 0.0 <= metrics["token_accuracy"] <= 1.0 and 0.0 <= metrics["exact_match"] <= 1.0


def _haystack_model_and_task():
    """A tiny RMT and 5-segment qa1 haystacks of 64 bytes a segment."""
    torch.manual_seed(0)
    model = memtx.build(
        "rmt", vocab_size=256, d_model=32, n_layers=1, n_heads=2, segment_len=64, memory_tokens=2
    )
    text = (b"The quick fox ran. A dog sat down! Was it here? " * 400)[:16000]
    noise = np.frombuffer(text, dtype=np.uint8)
    task = make_task("babilong", segments=5, segment_len=64, seed=0, qa="qa1", noise=noise)
    return model, task


def test_haystacks_streamed_in_chunks_score_as_evaluate_task() -> None:
    from memtx.evaluate import evaluate_haystacks

    model, task = _haystack_model_and_task()
    whole = evaluate_task(model, task, samples=10, device="cpu", seed=3, batch_size=4)
    for chunk in (1, 2, 64):
        streamed = evaluate_haystacks(
            model, task, samples=10, device="cpu", seed=3, batch_size=4, chunk_segments=chunk
        )
        assert streamed["tokens"] == 10 * 5 * 64 and streamed["tokens_per_s"] > 0
        for key in ("loss", "token_accuracy", "exact_match"):
            assert streamed[key] == pytest.approx(whole[key], abs=1e-9)
    with pytest.raises(DataError, match="chunk_segments must be >= 1"):
        evaluate_haystacks(model, task, samples=1, device="cpu", seed=0, chunk_segments=0)


def test_haystacks_by_distance_split_the_same_rows_by_their_facts_segment() -> None:
    from memtx.evaluate import evaluate_haystacks

    model, task = _haystack_model_and_task()
    kwargs = {"samples": 24, "device": "cpu", "seed": 3, "batch_size": 5}
    plain = evaluate_haystacks(model, task, **kwargs)
    split = evaluate_haystacks(model, task, **kwargs, by_distance=True)
    for key in ("loss", "token_accuracy", "exact_match"):
        assert split[key] == pytest.approx(plain[key], abs=1e-12)
    # each row's distance by hand: the question's segment minus its supporting fact's
    generator, expected = torch.Generator().manual_seed(3), {}
    for first in range(0, 24, 5):
        _, spans, support = task.support_rows(min(5, 24 - first), generator)
        for d in (spans[:, 0] // 64 - support // 64).tolist():
            expected[d] = expected.get(d, 0) + 1
    assert len(expected) > 1  # the facts fall in several segments
    assert {k: v for k, v in split.items() if k.startswith("samples_back_")} == {
        f"samples_back_{d}": float(n) for d, n in expected.items()
    }
    mean = sum(split[f"exact_match_back_{d}"] * n for d, n in expected.items()) / 24
    assert mean == pytest.approx(plain["exact_match"])
    copy = make_task("copy", segments=3, segment_len=8, alphabet=4, source_len=4, seed=0)
    with pytest.raises(DataError, match="by_distance needs a task that says where"):
        evaluate_haystacks(model, copy, samples=1, device="cpu", seed=0, by_distance=True)
