"""Two processes with torchrun and gloo on this CPU train exactly like one process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from memtx.train import load_saved_run, train
from tests.helpers import TINY

pytestmark = pytest.mark.distributed

SETS = [
    *[s for s in TINY if not s.startswith("model.dropout")],
    "model.dropout=0.0",
    "train.steps=4",
    "train.checkpoint_every=2",
]
WORKER = Path(__file__).with_name("worker.py")


def _torchrun(out: Path, *sets: str) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node=2", str(WORKER), str(out), *sets],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def _losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [m["loss"] for m in map(json.loads, lines) if m.get("split") == "train"]


def test_two_processes_equal_one_and_resume_in_one(tmp_path: Path) -> None:
    two = tmp_path / "two"
    _torchrun(two, *SETS)
    rank0 = load_file(str(tmp_path / "two-rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "two-rank1.safetensors"))
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"ranks differ in {name}"

    from memtx.config import load_run_config

    one = train(load_run_config(None, overrides=SETS), out_dir=tmp_path / "one", progress=False)
    assert len(_losses(two)) == 4
    torch.testing.assert_close(
        torch.tensor(_losses(two)), torch.tensor(_losses(tmp_path / "one")), rtol=1e-5, atol=1e-6
    )
    for name, value in one.model.state_dict().items():
        torch.testing.assert_close(
            rank0[name], value, rtol=1e-3, atol=1e-5
        )  # Adam amplifies float noise

    # The 2-process checkpoint resumes in 1 process and continues like the 1-process run.
    shutil.copytree(tmp_path / "one", tmp_path / "one-longer")
    longer = load_saved_run(tmp_path / "one-longer", overrides=["train.steps=6"])
    train(longer, out_dir=tmp_path / "one-longer", resume=True, progress=False)
    resumed = load_saved_run(two, overrides=["train.steps=6"])
    train(resumed, out_dir=two, resume=True, progress=False)
    torch.testing.assert_close(
        torch.tensor(_losses(two)),
        torch.tensor(_losses(tmp_path / "one-longer")),
        rtol=1e-5,
        atol=1e-6,
    )


def test_fsdp2_equals_one_process_and_its_checkpoint_loads_in_one(tmp_path: Path) -> None:
    from memtx.config import load_run_config

    sets = [
        *SETS,
        "model.name=memformer",
        "model.encoder_layers=1",
        "model.decoder_layers=1",
        "model.memory_slots=4",
        "train.strategy=mrbp",
    ]
    sets = [s for s in sets if not s.startswith(("model.mem_len", "model.n_layers"))]
    two = tmp_path / "fsdp"
    _torchrun(two, *sets, "train.fsdp=true")
    train(load_run_config(None, overrides=sets), out_dir=tmp_path / "one", progress=False)
    torch.testing.assert_close(
        torch.tensor(_losses(two)), torch.tensor(_losses(tmp_path / "one")), rtol=1e-5, atol=1e-6
    )
    resumed = load_saved_run(two, overrides=["train.steps=6", "train.fsdp=false"])
    result = train(resumed, out_dir=two, resume=True, progress=False)
    assert result.steps == 6 and len(_losses(two)) == 6


def test_armt_two_processes_equal_one(tmp_path: Path) -> None:
    """ARMT's state (A, z per layer, batch dim 1) is split across ranks like any memory."""
    from memtx.config import load_run_config

    sets = [s for s in SETS if not s.startswith(("model.name", "model.mem_len"))]
    sets += ["model.name=armt", "model.memory_tokens=4", "model.d_mem=8", "train.strategy=mrbp"]
    two = tmp_path / "armt"
    _torchrun(two, *sets)
    train(load_run_config(None, overrides=sets), out_dir=tmp_path / "one", progress=False)
    assert len(_losses(two)) == 4
    torch.testing.assert_close(
        torch.tensor(_losses(two)), torch.tensor(_losses(tmp_path / "one")), rtol=1e-5, atol=1e-6
    )
