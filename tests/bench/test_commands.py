"""The ``python -m memtx.bench.*`` commands at tiny sizes (the CLI verbs: tests/cli)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memtx.bench import peers, throughput

TINY = {"d_model": 32, "n_heads": 2, "d_ff": 64, "segment_len": 8, "n_layers": 1}


def test_throughput_command(capsys: pytest.CaptureFixture[str]) -> None:
    sizes = json.dumps({**TINY, "memory_tokens": 4})
    throughput.main(
        ["--model", "rmt", "--sizes", sizes, "--steps", "1", "--warmup", "0",
         "--batch-size", "2", "--rollout", "2", "--peak-tflops", "1"]
    )  # fmt: skip
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["model"] == "rmt" and result["tokens_per_step"] == 2 * 2 * 8
    assert result["tokens_per_s"] > 0 and 0 < result["mfu"] < 1


def test_paired_throughput_alternates_models_in_one_process(
    capsys: pytest.CaptureFixture[str],
) -> None:
    sizes = json.dumps({**TINY, "memory_tokens": 4})  # shared by both: d_mem stays 64
    throughput.main(
        ["--paired", "armt", "rmt", "--sizes", sizes, "--steps", "2", "--warmup", "1",
         "--batch-size", "2", "--rollout", "2", "--threads", "1"]
    )  # fmt: skip
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = result["models"]
    assert set(rows) == {"armt", "rmt"} and result["relative_to"] == "rmt"
    assert rows["rmt"]["ratio"] == 1.0 and rows["armt"]["ratio"] > 0
    # ARMT's state: A [1, 1, 2 * 3 * 64, 32] and z [1, 1, 384] in float32, and the reset flag
    assert rows["armt"]["state_kb_per_stream"] == (384 * 32 + 384) * 4 / 1024 + 1 / 1024
    assert rows["rmt"]["state_kb_per_stream"] == (4 * 32 * 4 + 1) / 1024


def test_paired_presets_run_each_with_its_own_batch_and_rollout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = "d_model = 32\nn_heads = 2\nsegment_len = 8\n"
    (tmp_path / "mf.toml").write_text(
        '[model]\nname = "memformer"\nencoder_layers = 1\ndecoder_layers = 1\n'
        f'memory_slots = 2\n{common}[train]\nbatch_size = 2\nrollout = 4\nstrategy = "mrbp"\n'
    )
    (tmp_path / "xl.toml").write_text(
        f'[model]\nname = "transformer_xl"\nn_layers = 1\nmem_len = 8\n{common}'
        "[train]\nbatch_size = 4\nrollout = 2\n"
    )
    throughput.main(
        ["--paired-presets", str(tmp_path / "mf.toml"), str(tmp_path / "xl.toml"),
         "--steps", "2", "--warmup", "1", "--threads", "1"]
    )  # fmt: skip
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = result["models"]
    assert set(rows) == {"mf", "xl"} and result["relative_to"] == "xl"
    assert rows["mf"]["tokens_per_step"] == rows["xl"]["tokens_per_step"] == 2 * 4 * 8
    assert rows["xl"]["ratio"] == 1.0 and rows["mf"]["ratio"] > 0
    assert rows["mf"]["tokens_per_s"] > 0


def test_peers_profile_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sizes = {
        "d_model": 32, "n_heads": 2, "d_ff": 64, "segment_len": 8, "batch_size": 2,
        "rollout": 2, "rmt_layers": 1, "memory_tokens": 4,
    }  # fmt: skip
    args = ["--profile", "memtx-rmt-full", "--sizes", json.dumps(sizes), "--warmup", "0"]
    assert peers.main([*args, "--out-dir", str(tmp_path)]) == 0
    path = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert path == tmp_path / "profile-memtx-rmt-full.md"
    assert "python -m memtx.bench.peers --profile memtx-rmt-full" in path.read_text()
