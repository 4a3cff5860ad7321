"""The run folder: one lifecycle for every kind of run (training, pre-training, ...).

A run folder holds ``config.json`` (the resolved config), ``metrics.jsonl`` (one JSON
object per line, appended as the run goes), ``checkpoints/step-*/`` (atomic, verified:
:mod:`memtx.checkpoint`) and whatever the recipe adds (``tokenizer.json``, ``loss.png``,
``result.json``). :class:`RunFolder` owns the create-or-resume check, the config, the
metrics (a line cut short by a kill is dropped on resume), and checkpoints of named
stateful parts: each part's tensors go to ``train_state.safetensors`` under
``"<name>/"`` and its JSON under ``meta["parts"][name]``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple, Protocol

import torch
from torch import Tensor, nn

from memtx import distributed
from memtx.checkpoint import (
    Checkpoint,
    CheckpointError,
    atomic_write_text,
    checkpoint_dirs,
    join_optimizer_state,
    load_latest,
    rng_state,
    save_checkpoint,
    set_rng_state,
    split_optimizer_state,
)
from memtx.config.checks import read_json_table
from memtx.config.loading import apply_overrides
from memtx.errors import ConfigError
from memtx.paths import check_writable_folder

__all__ = [
    "RunStart",
    "free_dir",
    "start_run",
    "OptimizerPart",
    "Part",
    "RngPart",
    "RunFolder",
    "load_weights",
    "read_run_config",
]


class Part(Protocol):
    """Something a checkpoint saves and a resume restores: JSON plus named tensors."""

    def state(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """(JSON-able metadata, tensors) describing this part now."""
        ...

    def load_state(self, meta: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        """Restore what :meth:`state` returned."""
        ...


class RngPart:
    """Python's, NumPy's and torch's (CPU and CUDA) global random generators."""

    def state(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        tensors, meta = rng_state()
        return meta, tensors

    def load_state(self, meta: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        set_rng_state({k: v.cpu() for k, v in tensors.items()}, meta)


class OptimizerPart:
    """An optimizer state dict (already gathered, e.g. from FSDP shards) as a part."""

    def __init__(self, state_dict: dict[str, Any]) -> None:
        self.state_dict = state_dict

    def state(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        tensors, meta = split_optimizer_state(self.state_dict)
        return meta, tensors

    def load_state(self, meta: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        self.state_dict = join_optimizer_state(tensors, meta)


class RunFolder:
    """A run's folder: checked on creation, written only by the main process.

    Args:
        path: the folder.
        resume: continue the run in ``path`` (it must hold one) instead of creating it
            (then it must not hold one).
        main: this process writes (rank 0); the others only read.

    Raises:
        ConfigError: ``path`` is a file, cannot be written, holds another run (without
            ``resume``) or holds none (with ``resume``). Nothing has been written then.
    """

    def __init__(self, path: Path | str, *, resume: bool, main: bool = True) -> None:
        self.path = Path(path)
        self.resume = resume
        self.main = main
        self._metrics: IO[str] | None = None
        check_writable_folder(self.path)
        if resume:
            if not self.config_path.is_file():
                raise ConfigError(f"--resume: {self.path} holds no run (no config.json)")
        elif self.config_path.exists() or checkpoint_dirs(self.path):
            raise ConfigError(
                f"{self.path} already holds a run; pass --resume to continue it or choose "
                "another --out"
            )

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    # ------------------------------------------------------------------ config

    def create(self, config: dict[str, Any]) -> None:
        """Make the folder and write ``config.json`` (a new run, main process)."""
        if self.main:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"--out {self.path} cannot be created: {exc.strerror}") from None
            if not self.resume:
                atomic_write_text(self.config_path, json.dumps(config, indent=1) + "\n")

    def read_config(self) -> dict[str, Any]:
        """The saved ``config.json``."""
        return read_run_config(self.path)

    # ------------------------------------------------------------------ metrics

    def history(self, *, until_step: int) -> list[dict[str, Any]]:
        """The metrics lines up to ``until_step``, the file rewritten to hold only them.

        Later lines will be redone by the resumed run; a line cut short by a kill (or any
        line that is not a JSON object) is dropped.
        """
        if not self.metrics_path.exists():
            return []
        kept = []
        text = self.metrics_path.read_text(encoding="utf-8", errors="replace")
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict) and entry.get("step", 0) <= until_step:
                kept.append(entry)
        if self.main:
            atomic_write_text(self.metrics_path, "".join(json.dumps(m) + "\n" for m in kept))
        return kept

    def log(self, entry: dict[str, Any]) -> None:
        """Append one metrics line (main process), flushed at once."""
        if not self.main:
            return
        try:
            if self._metrics is None:
                self._metrics = self.metrics_path.open("a", encoding="utf-8")
            self._metrics.write(json.dumps(entry) + "\n")
            self._metrics.flush()
        except OSError as exc:
            raise CheckpointError(
                f"cannot write {self.metrics_path}: {exc.strerror or exc}; the last checkpoint "
                "is intact"
            ) from None

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None

    # ------------------------------------------------------------------ checkpoints

    def save(
        self,
        *,
        step: int,
        weights: dict[str, Tensor],
        parts: Mapping[str, Part],
        meta: dict[str, Any],
        keep: int,
    ) -> None:
        """Checkpoint ``weights`` and every part after ``step`` (main process; atomic)."""
        tensors: dict[str, Tensor] = {}
        records: dict[str, Any] = {}
        for name, part in parts.items():
            part_meta, part_tensors = part.state()
            records[name] = part_meta
            tensors.update({f"{name}/{key}": value for key, value in part_tensors.items()})
        if self.main:
            save_checkpoint(
                self.path,
                step=step,
                model_state=weights,
                state=tensors,
                meta={**meta, "parts": records},
                keep=keep,
            )

    def latest(self, *, device: torch.device | str = "cpu") -> Checkpoint | None:
        """The newest intact checkpoint, or None."""
        return load_latest(self.path, map_location=device)

    @staticmethod
    def restore(checkpoint: Checkpoint, parts: Mapping[str, Part]) -> None:
        """Load every part from ``checkpoint`` (saved by :meth:`save`)."""
        records = checkpoint.meta.get("parts", {})
        for name, part in parts.items():
            if name not in records:
                raise CheckpointError(f"checkpoint {checkpoint.path} holds no {name!r} state")
            prefix = f"{name}/"
            tensors = {
                key[len(prefix) :]: value
                for key, value in checkpoint.state.items()
                if key.startswith(prefix)
            }
            part.load_state(records[name], tensors)


def read_run_config(
    run_dir: Path | str, *, overrides: Sequence[str] = (), sections: Sequence[str] = ()
) -> dict[str, Any]:
    """The ``config.json`` of a run folder, as nested dicts, with ``--set`` overrides.

    Args:
        run_dir: the run folder.
        overrides: ``section.key=value`` items applied on top (e.g. ``model.mem_len=0``).
        sections: the sections the overrides may name (the run kind's tables).

    Raises:
        ConfigError: no run in the folder, an unreadable config, a bad override.
    """
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir} holds no run (no config.json)")
    return apply_overrides(read_json_table(path, name=str(path)), overrides, sections=sections)


def load_weights(model: nn.Module, weights: Mapping[str, Tensor]) -> None:
    """``model.load_state_dict(weights)``, with a clear error when they do not fit.

    Raises:
        ConfigError: a missing, unexpected or differently shaped tensor (a config
            override that changes the model's sizes, say).
    """
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()[-1].strip()
        raise ConfigError(f"the checkpoint does not fit the model config: {detail}") from None


def free_dir(path: Path) -> Path:
    """``path`` if it does not exist yet, else ``path-2``, ``path-3``... (never overwrite)."""
    candidate, index = path, 2
    while candidate.exists():
        candidate = path.with_name(f"{path.name}-{index}")
        index += 1
    return candidate


class RunStart(NamedTuple):
    """What :func:`start_run` sets up: the folder, this process's place, its rows."""

    folder: RunFolder
    ctx: distributed.DistContext
    rows: int


def start_run(
    out_dir: Path, *, resume: bool, device: torch.device, batch_size: int, table: str
) -> RunStart:
    """Check the run folder, join torchrun's process group, split the global batch.

    Args:
        out_dir: the run folder (checked before anything else happens).
        resume: continue the run in it.
        device: the device asked for.
        batch_size: the global batch, split over the processes.
        table: the config table that holds it (for the error message).

    Raises:
        ConfigError: a bad folder, or a batch the processes cannot share evenly.
    """
    folder = RunFolder(out_dir, resume=resume)
    ctx = distributed.setup(device)
    folder.main = ctx.is_main
    if batch_size % ctx.world_size:
        raise ConfigError(
            f"{table}.batch_size ({batch_size}) is the global batch and must be divisible by "
            f"the number of processes ({ctx.world_size})"
        )
    return RunStart(folder, ctx, batch_size // ctx.world_size)
