"""Checkpoints: atomic, verified, pruned, and never unpickled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from memtx.checkpoint import (
    CheckpointError,
    checkpoint_dirs,
    join_optimizer_state,
    load_latest,
    save_checkpoint,
    split_optimizer_state,
    verify_checkpoint,
)


def _save(run: Path, step: int, value: float, keep: int = 3) -> Path:
    return save_checkpoint(
        run,
        step=step,
        model_state={"w": torch.full((4,), value)},
        state={"s": torch.arange(3)},
        meta={"note": "x"},
        keep=keep,
    )


def test_round_trip_and_keep_last_k(tmp_path: Path) -> None:
    for step in range(1, 6):
        _save(tmp_path, step, float(step), keep=2)
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-00000004", "step-00000005"]
    latest = load_latest(tmp_path)
    assert latest is not None and latest.step == 5
    assert torch.equal(latest.model["w"], torch.full((4,), 5.0))
    assert latest.meta["note"] == "x"
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "meta"])
def test_damaged_checkpoint_falls_back_to_the_previous(tmp_path: Path, damage: str) -> None:
    _save(tmp_path, 1, 1.0)
    newest = _save(tmp_path, 2, 2.0)
    target = newest / "model.safetensors"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:-7])
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[-1] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "delete":
        target.unlink()
    else:
        (newest / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError):
        verify_checkpoint(newest)
    with pytest.warns(UserWarning, match="falling back"):
        latest = load_latest(tmp_path)
    assert latest is not None and latest.step == 1


def test_unwritable_folder_is_a_clear_error_and_keeps_the_previous(tmp_path: Path) -> None:
    _save(tmp_path, 1, 1.0)
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(CheckpointError, match="cannot write checkpoint"):
        _save(blocker, 2, 2.0)
    assert load_latest(tmp_path).step == 1  # type: ignore[union-attr]


def test_optimizer_state_round_trips_exactly(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.8, 0.9))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, meta = split_optimizer_state(opt.state_dict())
    json.dumps(meta)  # JSON only
    other = torch.optim.AdamW(model.parameters(), lr=0.5)
    other.load_state_dict(join_optimizer_state(tensors, json.loads(json.dumps(meta))))
    a, b = opt.state_dict(), other.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for index in a["state"]:
        for key, value in a["state"][index].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][index][key]))


def test_no_pickle_anywhere_in_the_package() -> None:
    root = Path(__file__).resolve().parents[1] / "memtx"
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert "import pickle" not in text, path
        assert "torch.load(" not in text or "weights_only=True" in text, path
