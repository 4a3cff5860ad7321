"""memtx inspect: the writer's retention and writing on a real document."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from memtx.errors import ConfigError, DataError
from memtx.inspect import ARMTReport, inspect_memory
from memtx.train import train
from tests.helpers import tiny_run

MEMFORMER = [
    "model.name=memformer",
    "model.encoder_layers=1",
    "model.decoder_layers=1",
    "model.memory_slots=4",
    "model.n_layers=2",
    "train.steps=2",
]


def test_inspect_reports_retention_and_writes_pngs(tmp_path: Path) -> None:
    run = tiny_run(*MEMFORMER)
    train(run, out_dir=tmp_path / "run", progress=False)
    report = inspect_memory(tmp_path / "run", max_segments=6)
    assert report.retention.shape == (6, 4)
    assert np.all((report.retention >= 0) & (report.retention <= 1 + 1e-6))
    # With no previous segment the writer only keeps: retention 1 at segment 0.
    np.testing.assert_allclose(report.retention[0], 1.0, atol=1e-6)
    assert len(report.top_tokens) == 4 and all(report.top_tokens)
    assert report.bias_norms.shape == (4,)
    for path in report.files:
        assert path.stat().st_size > 0
    assert "retention" in report.summary()
    with pytest.raises(DataError, match="--document"):
        inspect_memory(tmp_path / "run", document=10_000)


def test_inspect_refuses_other_models(tmp_path: Path) -> None:
    train(tiny_run("train.steps=1"), out_dir=tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="needs a Memformer"):
        inspect_memory(tmp_path / "run")


ARMT = [
    "model.name=armt",
    "model.memory_tokens=4",
    "model.d_mem=4",
    "train.steps=2",
]


def test_inspect_reports_armt_state_per_layer_and_segment(tmp_path: Path) -> None:
    train(tiny_run(*ARMT), out_dir=tmp_path / "run", progress=False)
    report = inspect_memory(tmp_path / "run", max_segments=5, out_dir=tmp_path / "report")
    assert isinstance(report, ARMTReport)
    assert report.a_norms.shape == report.write_gate.shape == report.correction.shape == (5, 2)
    assert np.all(report.a_norms > 0) and np.all(np.diff(report.a_norms[:2], axis=0) != 0)
    assert np.all((report.write_gate > 0) & (report.write_gate < 1))
    np.testing.assert_allclose(report.correction[0], 1.0)  # the first segment adds its keys
    assert np.all((report.correction >= 0) & (report.correction <= 1))
    assert {p.name for p in report.files} == {"armt.png", "memory.txt", "memory.json"}
    assert all(p.stat().st_size > 0 for p in report.files)
    assert "layer 1: |A|" in report.summary()
