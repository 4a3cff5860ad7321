"""memtx repro rmt, shrunk to seconds: every row trained, evaluated and tabulated."""

from __future__ import annotations

import json
from pathlib import Path

from memtx.repro import repro_rmt

TINY = [
    "model.d_model=32",
    "model.n_layers=1",
    "model.n_heads=2",
    "task.eval_samples=8",
    "train.eval_every=2",
]


def test_repro_rmt_tiny(tmp_path: Path) -> None:
    path = repro_rmt(
        out_dir=tmp_path / "bench",
        runs_dir=tmp_path / "runs",
        tasks=["copy"],
        variants=["rmt", "armt", "transformer"],
        steps=3,
        stage_steps=1,
        facts_steps=2,
        facts_train_segments=2,
        facts_eval_segments=[2, 4],
        facts_eval_samples=4,
        final_samples=8,
        overrides=TINY,
        echo=lambda _: None,
    )
    text = path.read_text()
    assert "| copy | rmt |" in text and "| copy | armt |" in text
    assert "transformer (no memory)" in text
    assert "| segments | tokens | rmt answer token accuracy" in text  # side by side
    assert "armt answer token accuracy" in text
    data = json.loads((tmp_path / "bench" / "rmt.json").read_text())
    assert len(data["copy_reverse"]) == 3
    assert [(r["model"], r["segments"]) for r in data["facts"]] == [
        ("rmt", 2),
        ("rmt", 4),
        ("armt", 2),
        ("armt", 4),
    ]
    assert all(0 <= r["token_accuracy"] <= 1 for r in data["copy_reverse"] + data["facts"])
