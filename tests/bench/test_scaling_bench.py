"""memtx bench scaling on tiny lengths: every point measured in its own process."""

from __future__ import annotations

from pathlib import Path

import pytest

from memtx.bench.scaling import run_scaling_benchmark


@pytest.mark.slow
def test_scaling_table_and_plot(tmp_path: Path) -> None:
    rows = run_scaling_benchmark(
        out_dir=tmp_path,
        models=["memformer", "armt", "transformer_full"],
        lengths=[256, 512],
        full_attention_max=256,
        threads=1,
        progress=False,
    )
    assert [(r["model"], r["length"]) for r in rows] == [
        ("memformer", 256),
        ("memformer", 512),
        ("armt", 256),
        ("armt", 512),
        ("transformer_full", 256),
        ("transformer_full", 512),
    ]
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 5 and all(r["us_per_token"] > 0 and r["peak_mb"] > 0 for r in ok)
    assert rows[-1]["status"].startswith("skipped")
    text = (tmp_path / "scaling.md").read_text()
    assert "| armt | 256 |" in text and "memformer" in text
    assert f"--out-dir {tmp_path} --models memformer armt transformer_full" in text
    assert (tmp_path / "scaling.png").stat().st_size > 1000
