"""``memtx bench mrbp`` on a tiny Memformer: three files, six rows, sane numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from memtx.bench.mrbp import (
    STRATEGIES,
    BenchModel,
    estimate_memory_gb,
    main,
    run_mrbp_benchmark,
)

TINY = {
    "d_model": 32,
    "n_heads": 2,
    "d_ff": 64,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "memory_slots": 4,
    "segment_len": 8,
    "batch_size": 2,
}


@pytest.mark.slow
def test_tiny_run_writes_table_plot_and_json(tmp_path: Path) -> None:
    rows = run_mrbp_benchmark(
        out_dir=tmp_path,
        rollouts=(1, 2),
        steps=1,
        warmup=0,
        jobs=2,
        threads=1,
        progress=False,
        **TINY,
    )
    assert [(row["strategy"], row["rollout"]) for row in rows] == [
        (strategy, rollout) for strategy in STRATEGIES for rollout in (1, 2)
    ]
    for row in rows:
        assert row["status"] == "ok", row
        assert row["time_per_step_s"] > 0
        assert math.isfinite(row["loss"]) and row["loss"] > 0
        assert row["rss_peak_mb"] >= row["rss_baseline_mb"] > 0
        assert row["peak_mb"] >= 0
        assert row["speed_vs_full"] > 0
    full = [row for row in rows if row["strategy"] == "full"]
    assert all(row["speed_vs_full"] == 1.0 for row in full)
    # Same seed, same data, same model: every strategy computes the same loss.
    for rollout in (1, 2):
        losses = [row["loss"] for row in rows if row["rollout"] == rollout]
        assert max(losses) - min(losses) < 1e-4 * max(losses)

    table = (tmp_path / "mrbp.md").read_text()
    assert "| strategy | rollout | peak MB |" in table
    assert len([line for line in table.splitlines() if line.startswith("| ")]) == 1 + 6
    png = (tmp_path / "mrbp.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    saved = json.loads((tmp_path / "mrbp.json").read_text())
    assert saved["config"]["d_model"] == 32 and len(saved["results"]) == 6


def test_runaway_configurations_are_skipped(tmp_path: Path) -> None:
    rows = run_mrbp_benchmark(
        out_dir=tmp_path, rollouts=(1,), strategies=("full",), max_mem_gb=0.0,
        progress=False, **TINY,
    )  # fmt: skip
    assert rows[0]["status"].startswith("skipped (estimated")
    assert "skipped" in (tmp_path / "mrbp.md").read_text()


def test_estimate_orders_the_strategies() -> None:
    sizes = BenchModel()
    full, ckpt, mrbp = (estimate_memory_gb(s, 16, sizes) for s in ("full", "checkpoint", "mrbp"))
    assert full > ckpt > mrbp > 0
    assert estimate_memory_gb("full", 32, sizes) > 1.9 * estimate_memory_gb("full", 16, sizes) - 1


def test_bad_arguments_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="strategy"):
        run_mrbp_benchmark(out_dir=tmp_path, strategies=("nope",), progress=False)
    with pytest.raises(ValueError, match="rollouts"):
        run_mrbp_benchmark(out_dir=tmp_path, rollouts=(0,), progress=False)


def test_module_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--worker" in out and "--rollouts" in out and "--max-mem-gb" in out
