"""The generation and snapshot benchmarks run, small, and report what they claim."""

from __future__ import annotations

from pathlib import Path

from memtx.bench.generation import measure_ceiling, measure_interleaved
from memtx.bench.snapshots import measure_sizes
from memtx.config import load_run_config


def test_interleaved_generation_reports_both_rates() -> None:
    result = measure_interleaved(config="configs/demo.toml", position=64, window=32, rounds=1)
    assert result["fresh_tokens_per_s"] > 0 and result["long_tokens_per_s"] > 0
    assert set(result["rss_mb"]) == {"after_window", "after_all"}


def test_the_matmul_ceiling_is_above_generation_and_counts_every_weight() -> None:
    result = measure_ceiling(config="configs/demo.toml", tokens=32, rounds=1)
    model = load_run_config(Path("configs/demo.toml")).model
    d, layers = model.d_model, model.n_layers
    # per block q/k/v (d x 3d), out (d x d), FFN (d x 4d, 4d x d); the tied head d x 256
    floats = layers * (d * 3 * d + d * d + 2 * d * 4 * d) + d * 256
    assert result["matmul_weights_mb"] == round(floats * 4 / 1e6, 2)
    # Generation does the same products and everything else: it cannot be faster.
    assert result["ceiling_over_generation"] > 1.0


def test_snapshot_sizes_are_those_of_the_files(tmp_path: Path) -> None:
    rows = {row["model"]: row for row in measure_sizes(tokens=1000, folder=tmp_path)}
    assert set(rows) == {"transformer", "transformer_xl", "memformer", "rmt", "armt"}
    for name, row in rows.items():
        assert row["snapshot_file_kb"] == round((tmp_path / f"{name}.mem").stat().st_size / 1024, 1)
        assert row["snapshot_file_kb"] >= row["memory_kb"]
    assert rows["transformer_xl"]["memory_kb"] == rows["transformer_xl"]["transformer_xl_cache_kb"]
