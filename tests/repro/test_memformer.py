"""memtx repro memformer, shrunk to seconds: every model trained, measured and tabulated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memtx.errors import ConfigError
from memtx.repro.memformer import repro_memformer

TINY = ["model.d_model=32", "train.warmup_steps=1"]


@pytest.mark.slow
def test_repro_memformer_tiny(tmp_path: Path) -> None:
    kwargs = dict(
        out_dir=tmp_path / "bench",
        runs_dir=tmp_path / "runs",
        caches=[16],
        steps=2,
        eval_tokens=1000,
        infer_tokens=256,
        infer_rows=2,
        threads=1,
        overrides=TINY,
        echo=lambda _: None,
    )
    path = repro_memformer(**kwargs)  # type: ignore[arg-type]
    text = path.read_text()
    for label in ("Memformer (16 slots)", "transformer, no memory", "Transformer-XL, cache 16"):
        assert f"| {label} |" in text
    assert "Against the best Transformer-XL" in text
    assert (tmp_path / "bench" / "memformer.png").stat().st_size > 0
    results = json.loads((tmp_path / "bench" / "memformer.json").read_text())
    rows = {r["model"]: r for r in results["rows"]}
    assert all(r["status"] == "ok" for r in rows.values()), rows
    # The carried state is exact: Transformer-XL keeps 16 hidden states per layer (4 layers of
    # width 32, fp32); Memformer 16 slots of width 32 plus the last segment's 64 token ids.
    assert rows["transformer_xl_16"]["state_mb_per_stream"] * 2**20 == pytest.approx(
        4 * 16 * 32 * 4, abs=16
    )
    assert rows["memformer"]["state_mb_per_stream"] * 2**20 == pytest.approx(
        16 * 32 * 4 + 64 * 8, abs=16
    )
    assert rows["transformer"]["state_mb_per_stream"] == 0
    # More cache, more FLOPs per token than the transformer without memory.
    assert rows["transformer_xl_16"]["flops_per_token"] > rows["transformer"]["flops_per_token"]
    # A second call reuses the trained models (an interrupted reproduction resumes).
    checkpoint = sorted((tmp_path / "runs" / "memformer").rglob("*.safetensors"))[0]
    before = checkpoint.stat().st_mtime_ns
    repro_memformer(**kwargs)  # type: ignore[arg-type]
    assert checkpoint.stat().st_mtime_ns == before


def test_bad_caches_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="caches must be"):
        repro_memformer(out_dir=tmp_path, runs_dir=tmp_path, caches=[0])
