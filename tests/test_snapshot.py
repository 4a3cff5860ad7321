"""Snapshots: saved and loaded exactly, refused for another model, damage named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from memtx import snapshot
from memtx.models.protocol import memory_leaves
from memtx.reading import Context, next_logits, read, start_context
from tests.models.small import SMALL, small_model, tokens

SEG = 8


@pytest.mark.parametrize("key", [k for k in SMALL if not k.endswith("_hf")])
def test_a_loaded_snapshot_continues_exactly_as_the_read(key: str, tmp_path: Path) -> None:
    model = small_model(key).eval()
    text = tokens(1, 7 * SEG + 5)
    head, rest = text[:, : 3 * SEG + 2], text[:, 3 * SEG + 2 :]
    context = read(model, head, start_context(model))
    path = snapshot.save(tmp_path / "doc.mem", model=model, context=context)
    loaded = snapshot.load(path, model=model)
    assert loaded.tokens_read == head.shape[1] and loaded.model == snapshot.identify(model)
    for a, b in zip(memory_leaves(loaded.memory), memory_leaves(context.memory)):
        assert torch.equal(a, b)
    resumed = read(model, rest, Context(loaded.memory, loaded.pending, loaded.tokens_read))
    continued = read(model, rest, context)
    assert torch.equal(next_logits(model, resumed), next_logits(model, continued))


def test_a_snapshot_in_a_fresh_process_gives_the_same_logits(tmp_path: Path) -> None:
    model = small_model("rmt").eval()
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.st")
    context = read(model, tokens(1, 5 * SEG + 3), start_context(model))
    snapshot.save(tmp_path / "s.mem", model=model, context=context)
    code = f"""
import json, torch
from safetensors.torch import load_file
import memtx
from memtx import snapshot
from memtx.reading import Context, next_logits
from tests.models.small import SMALL
name, fields = SMALL["rmt"]
model = memtx.build(name, **fields).eval()
model.load_state_dict(load_file({str(tmp_path / "w.st")!r}))
s = snapshot.load({str(tmp_path / "s.mem")!r}, model=model)
print(json.dumps(next_logits(model, Context(s.memory, s.pending, s.tokens_read))[0].tolist()))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    there = torch.tensor(json.loads(out.stdout), dtype=torch.float32)
    assert torch.equal(there, next_logits(model, context)[0])


def test_a_snapshot_of_another_model_is_refused_naming_both(tmp_path: Path) -> None:
    model = small_model("rmt").eval()
    path = snapshot.save(
        tmp_path / "a.mem", model=model, context=read(model, tokens(1, 9), start_context(model))
    )
    other_weights = small_model("rmt").eval()
    with torch.no_grad():
        next(other_weights.parameters()).add_(1.0)
    other_config = small_model("rmt", memory_tokens=2).eval()
    for other in (other_weights, other_config, small_model("armt").eval()):
        with pytest.raises(snapshot.SnapshotMismatch) as caught:
            snapshot.load(path, model=other)
        message = str(caught.value)
        assert str(snapshot.identify(model)) in message
        assert str(snapshot.identify(other)) in message


def test_damaged_or_foreign_files_are_named(tmp_path: Path) -> None:
    model = small_model("transformer").eval()
    data = snapshot.to_bytes(read(model, tokens(1, 3), start_context(model)), model=model)
    for name, content in [("short", b"abc"), ("text", b"x" * 100), ("cut", data[: len(data) - 5])]:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(snapshot.SnapshotError, match=str(path)):
            snapshot.load(path, model=model)
    with pytest.raises(snapshot.SnapshotError, match="cannot read"):
        snapshot.load(tmp_path / "missing.mem", model=model)
    with pytest.raises(snapshot.SnapshotError, match="does not exist"):
        snapshot.save(tmp_path / "no" / "x.mem", model=model, context=start_context(model))
