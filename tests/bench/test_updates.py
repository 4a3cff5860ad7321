"""Every memtx training step a benchmark times is the loop's update (clip + AdamW)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

import memtx.training
from memtx.bench.common import GRAD_CLIP
from memtx.bench.mrbp import BenchModel, run_worker
from memtx.bench.peers_rows import ROWS, PeerSizes, make_trainer
from memtx.bench.throughput import measure_training
from memtx.config import TrainConfig


@pytest.fixture
def updates(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The clip of every ``memtx.training.apply_update`` call (the real update still runs)."""
    clips: list[float] = []
    real = memtx.training.apply_update

    def counted(model: Any, optimizer: Any, *, grad_clip: float, loss: float = 0.0) -> float:
        clips.append(grad_clip)
        return real(model, optimizer, grad_clip=grad_clip, loss=loss)

    monkeypatch.setattr(memtx.training, "apply_update", counted)
    monkeypatch.setattr("memtx.bench.throughput.apply_update", counted)
    return clips


def test_the_clip_is_that_of_memtx_train() -> None:
    assert GRAD_CLIP == TrainConfig().grad_clip > 0


def test_throughput_steps_go_through_apply_update(updates: list[float]) -> None:
    torch.set_num_threads(1)
    tiny = {"d_model": 32, "n_heads": 2, "d_ff": 64, "segment_len": 8, "n_layers": 1}
    result = measure_training(
        model_name="rmt", rollout_len=2, batch_size=2, steps=2, warmup=1,
        peak_flops=1e12, overrides={**tiny, "memory_tokens": 4},
    )  # fmt: skip
    assert updates == [GRAD_CLIP] * 4  # warmup, the FLOP-counted step, two timed
    assert result["tokens_per_s"] > 0 and result["flops_per_step"] > 0
    assert 0 < result["mfu"] < 1


def test_mrbp_worker_steps_go_through_apply_update(updates: list[float]) -> None:
    sizes = BenchModel(
        d_model=32, n_heads=2, d_ff=64, encoder_layers=1, decoder_layers=1,
        memory_slots=4, segment_len=8, batch_size=2,
    )  # fmt: skip
    for strategy in ("full", "checkpoint", "mrbp"):
        row = run_worker(
            strategy=strategy, rollout=2, sizes=sizes, steps=1, warmup=1, device="cpu", threads=1
        )
        assert row["status"] == "ok" and math.isfinite(row["loss"])
    assert updates == [GRAD_CLIP] * 6


def test_memtx_peer_rows_go_through_apply_update(updates: list[float]) -> None:
    torch.set_num_threads(1)
    sizes = PeerSizes(
        d_model=32, n_heads=2, d_ff=64, segment_len=8, batch_size=2, rollout=2,
        encoder_layers=1, decoder_layers=1, memory_slots=4, rmt_layers=1, memory_tokens=4,
    )  # fmt: skip
    memtx_rows = [row for row, spec in ROWS.items() if spec.package is None]
    for row in memtx_rows:
        make_trainer(row, sizes).step()
    assert updates == [GRAD_CLIP] * len(memtx_rows) and len(memtx_rows) == 3
