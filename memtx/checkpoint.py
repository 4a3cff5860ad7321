"""Checkpoints that cannot be half-written, and never load pickles.

A checkpoint is a folder ``checkpoints/step-00001000/`` with

- ``model.safetensors``: the weights;
- ``train_state.safetensors``: optimizer tensors, RNG states, the carried memory;
- ``meta.json``: step, config, data position, optimizer scalars, Python/NumPy RNG
  state, and the size and sha256 of both tensor files.

It is written into a hidden temporary folder beside the final one, every file is
fsynced, then the folder is renamed (atomic on POSIX) and the parent fsynced. Loading
checks sizes and hashes; a damaged checkpoint is skipped with a warning in favour of the
previous one. Only safetensors and JSON are ever read.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from memtx.errors import MemtxError

CHECKPOINT_DIR = "checkpoints"
_PREFIX = "step-"
_FILES = ("model.safetensors", "train_state.safetensors")


class CheckpointError(MemtxError):
    """A checkpoint that is missing, truncated or corrupt."""


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    path: Path
    meta: dict[str, Any]
    model: dict[str, torch.Tensor]
    state: dict[str, torch.Tensor]

    @property
    def step(self) -> int:
        return int(self.meta["step"])


# --------------------------------------------------------------------------- files


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, fsync and rename."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync, rename and fsync the folder.

    The temporary name holds the process and thread, so concurrent writers never share one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- state


def split_optimizer_state(
    state_dict: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer state dict as tensors (for safetensors) and JSON (groups, scalars)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, values in state_dict["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def join_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`split_optimizer_state`: the optimizer state dict."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for name, value in meta["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    groups = []
    for group in meta["param_groups"]:
        group = dict(group)
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every random generator's state: torch (CPU and CUDA) as tensors, Python and NumPy as JSON."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, value in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{index}"] = value
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    meta = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)],
    }
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


# --------------------------------------------------------------------------- save / load


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Finished checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX))


def save_checkpoint(
    run_dir: Path,
    *,
    step: int,
    model_state: dict[str, torch.Tensor],
    state: dict[str, torch.Tensor],
    meta: dict[str, Any],
    keep: int = 3,
) -> Path:
    """Write a checkpoint atomically and keep only the ``keep`` most recent.

    Args:
        run_dir: the run folder; checkpoints go to ``run_dir/checkpoints``.
        step: the optimizer step the checkpoint is taken after.
        model_state: the model's weights.
        state: other tensors (optimizer, RNG, memory), names unique.
        meta: JSON-serializable metadata (config, data position, ...).
        keep: how many checkpoints to keep.

    Raises:
        CheckpointError: the folder cannot be written (disk full, permissions); the
            previous checkpoints are untouched.
    """
    root = Path(run_dir) / CHECKPOINT_DIR
    final = root / f"{_PREFIX}{step:08d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-*"):  # left by a killed writer
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
        # safetensors refuses tensors that share storage (tied weights): clone those.
        save_file(
            {k: v.detach().contiguous().cpu().clone() for k, v in model_state.items()},
            str(tmp / _FILES[0]),
        )
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp / _FILES[1])
        )
        files = {}
        for name in _FILES:
            _fsync_file(tmp / name)
            files[name] = {"size": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
        record = {**meta, "step": step, "files": files}
        with (tmp / "meta.json").open("w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
    except (OSError, SafetensorError) as exc:  # safetensors reports ENOSPC as its own error
        shutil.rmtree(tmp, ignore_errors=True)
        reason = getattr(exc, "strerror", None) or str(exc)
        raise CheckpointError(f"cannot write checkpoint {final}: {reason}") from None
    for old in checkpoint_dirs(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's metadata, after checking every file's size and sha256.

    Raises:
        CheckpointError: a file is missing, truncated, or its hash differs.
    """
    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path} has no readable meta.json: {exc}") from None
    for name, expected in meta.get("files", {}).items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {path} is missing {name}")
        if file.stat().st_size != expected["size"]:
            raise CheckpointError(
                f"checkpoint {path}: {name} has {file.stat().st_size} bytes, "
                f"expected {expected['size']}"
            )
        if _sha256(file) != expected["sha256"]:
            raise CheckpointError(f"checkpoint {path}: {name} does not match its recorded sha256")
    if set(meta.get("files", {})) != set(_FILES):
        raise CheckpointError(f"checkpoint {path} does not record all of {', '.join(_FILES)}")
    return meta


def load_checkpoint(path: Path, *, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load one checkpoint folder after verifying it."""
    meta = verify_checkpoint(path)
    device = str(map_location)
    return Checkpoint(
        path=Path(path),
        meta=meta,
        model=load_file(str(Path(path) / _FILES[0]), device=device),
        state=load_file(str(Path(path) / _FILES[1]), device=device),
    )


def load_latest(run_dir: Path, *, map_location: str | torch.device = "cpu") -> Checkpoint | None:
    """The newest intact checkpoint of a run; damaged ones are skipped with a warning."""
    for path in reversed(checkpoint_dirs(run_dir)):
        try:
            return load_checkpoint(path, map_location=map_location)
        except CheckpointError as exc:
            warnings.warn(f"{exc}; falling back to the previous checkpoint", stacklevel=2)
        except Exception as exc:  # a header safetensors cannot parse is damage too
            warnings.warn(f"checkpoint {path} cannot be read ({exc}); falling back", stacklevel=2)
    return None
