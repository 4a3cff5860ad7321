"""Interruption and numerical safety: nothing is lost, nothing is silently trained through."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from memtx.train import NonFiniteError, load_saved_run, prepare_data, train
from tests.helpers import TINY, tiny_run


def _train_steps(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [m["step"] for m in map(json.loads, lines) if m.get("split") == "train"]


def test_sigterm_writes_a_checkpoint_and_the_run_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    sets = [
        a
        for item in [*TINY, "train.steps=400", "train.checkpoint_every=0"]
        for a in ("--set", item)
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "memtx", "train", "--out", str(out), "--no-progress", *sets],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "metrics.jsonl").exists():
        time.sleep(0.2)
    while time.time() < deadline and len(_train_steps(out)) < 3:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "SIGTERM" in stderr and "--resume" in stderr
    from memtx.checkpoint import load_latest

    checkpoint = load_latest(out)
    assert checkpoint is not None
    stopped_at = checkpoint.step
    assert 3 <= stopped_at < 400
    resumed = load_saved_run(out, overrides=[f"train.steps={stopped_at + 2}"])
    train(resumed, out_dir=out, resume=True, progress=False)
    assert _train_steps(out) == list(range(1, stopped_at + 3))


def test_nonfinite_loss_is_named_and_stops(tmp_path: Path, monkeypatch) -> None:
    data = prepare_data(tiny_run().data)
    import memtx.train as train_module

    real = train_module.from_config

    def poisoned(config):
        model = real(config)
        with torch.no_grad():
            model.embed.weight[:] = float("nan")
        return model

    monkeypatch.setattr(train_module, "from_config", poisoned)
    with pytest.raises(NonFiniteError, match="non-finite loss at step 1"):
        train(tiny_run(), out_dir=tmp_path / "stop", data=data, progress=False)
    result = train(
        tiny_run("train.on_nonfinite=skip", "train.steps=3"),
        out_dir=tmp_path / "skip",
        data=data,
        progress=False,
    )
    skipped = [
        json.loads(line)
        for line in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()
        if "skipped" in line
    ]
    assert [s["step"] for s in skipped] == [1, 2, 3]
    assert result.steps == 3
