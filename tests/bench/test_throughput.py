"""The throughput benchmark: GPU presets, the peak table, rows per strategy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memtx.bench import throughput

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY = {
    "vocab_size": 32, "d_model": 32, "n_heads": 2, "d_ff": 64, "segment_len": 8,
    "n_layers": 1, "memory_tokens": 4,
}  # fmt: skip


@pytest.mark.parametrize("model", ["transformer", "transformer_xl", "memformer", "rmt", "armt"])
def test_gpu_presets_are_gpt2_small_sized(model: str) -> None:
    name, fields, train = throughput.preset_sizes(CONFIGS / f"{model.replace('_', '-')}-gpu.toml")
    assert name == model
    blocks = (
        (fields["encoder_layers"] + fields["decoder_layers"])
        if model == "memformer"
        else (fields["n_layers"])
    )
    assert (fields["d_model"], fields["n_heads"], blocks) == (768, 12, 12)
    assert fields["segment_len"] == 1024
    assert (train["batch_size"], train["rollout"]) == (16, 4)


def test_peak_table_matches_gpu_names() -> None:
    assert throughput.peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989.4e12
    assert throughput.peak_bf16_flops("NVIDIA H100 PCIe") == 756.0e12
    assert throughput.peak_bf16_flops("NVIDIA H200") == 989.4e12
    assert throughput.peak_bf16_flops("NVIDIA L40S") == 362.05e12  # not the L4's
    assert throughput.peak_bf16_flops("a GPU nobody listed") is None


def test_rows_per_strategy_from_a_preset(capsys: pytest.CaptureFixture[str]) -> None:
    """A preset shrunk by --sizes, two strategies: on CPU no MFU (no known peak), the
    model FLOPs are full BPTT's for both rows, MRBP's hardware FLOPs add its no-grad pass."""
    throughput.main(
        ["--config", str(CONFIGS / "rmt-gpu.toml"), "--sizes", json.dumps(TINY),
         "--batch-size", "2", "--rollout", "2", "--steps", "1", "--warmup", "0",
         "--strategies", "full", "mrbp", "--markdown", "--threads", "1"]
    )  # fmt: skip
    lines = capsys.readouterr().out.strip().splitlines()
    full, mrbp = (json.loads(line) for line in lines[:2])
    assert (full["strategy"], mrbp["strategy"]) == ("full", "mrbp")
    assert full["tokens_per_step"] == 2 * 2 * 8 and full["achieved_tflops"] > 0
    assert full["mfu"] is None and full["peak_memory_mb"] is None
    assert mrbp["flops_per_step"] == full["flops_per_step"]
    assert mrbp["hardware_flops_per_step"] > mrbp["flops_per_step"]
    assert any(line.startswith("| rmt | mrbp |") for line in lines)
