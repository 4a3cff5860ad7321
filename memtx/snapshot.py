"""Memory saved and loaded with the identity of its model: read a text once, ask later.

A snapshot is what a model holds after reading (see :class:`memtx.generate.Context`):
its memory, the tokens of the segment not yet committed, and how many tokens were read.
One safetensors file holds it:

- tensors ``memory.0`` .. ``memory.N`` (the memory's leaves, :func:`memory_state`) and
  ``pending`` (int64 [B, n], 0 <= n <= segment_len);
- the header's metadata ``memtx.snapshot``, a JSON object: ``format`` (1), the memtx
  version, ``tokens_read``, the model's identity (``model``: its name, the sha256 of its
  config and the sha256 of its weights) and, where known, the run folder it came from.

Files are written atomically (temporary file, fsync, rename); loading never unpickles and
refuses a snapshot of another model (other config or weights), naming both. The Python
API: :func:`save`, :func:`load`, :func:`to_bytes` / :func:`from_bytes` (the server's
uploads and downloads), :func:`identify` and :class:`Snapshot`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import Tensor

from memtx.checkpoint import atomic_write_bytes
from memtx.errors import DataError
from memtx.models.protocol import (
    Memory,
    SegmentModel,
    memory_from_state,
    memory_leaves,
    memory_state,
)

__all__ = [
    "FORMAT",
    "ModelIdentity",
    "ReadState",
    "Snapshot",
    "SnapshotError",
    "SnapshotMismatch",
    "from_bytes",
    "identify",
    "load",
    "save",
    "to_bytes",
]

FORMAT = 1
_META_KEY = "memtx.snapshot"
#: a snapshot header larger than this is not one of ours (memory tensors are small)
_MAX_HEADER = 1 << 24


class SnapshotError(DataError):
    """A snapshot that cannot be read, or that belongs to another model."""


class SnapshotMismatch(SnapshotError):
    """A snapshot taken with another model (other config or weights)."""


@dataclass(frozen=True)
class ModelIdentity:
    """What a snapshot belongs to: a model's name, config hash and weights hash."""

    name: str
    config_sha256: str
    weights_sha256: str
    run: str | None = None

    def same_model(self, other: ModelIdentity) -> bool:
        """Whether both are the same config with the same weights (the run folder aside)."""
        return (self.name, self.config_sha256, self.weights_sha256) == (
            other.name,
            other.config_sha256,
            other.weights_sha256,
        )

    def __str__(self) -> str:
        where = f" from {self.run}" if self.run else ""
        return (
            f"{self.name} (config {self.config_sha256[:12]}, "
            f"weights {self.weights_sha256[:12]}){where}"
        )


class ReadState(Protocol):
    """What :func:`save` takes: a :class:`memtx.generate.Context` or a :class:`Snapshot`."""

    @property
    def memory(self) -> Memory: ...

    @property
    def pending(self) -> Tensor: ...

    @property
    def tokens_read(self) -> int: ...


@dataclass(frozen=True)
class Snapshot:
    """A loaded snapshot.

    Attributes:
        memory: the memory after every committed segment (on the model's device).
        pending: [B, n] tokens read but not yet committed.
        tokens_read: tokens read per row.
        model: the identity of the model it was taken with.
        version: the memtx version that wrote it.
    """

    memory: Memory
    pending: Tensor
    tokens_read: int
    model: ModelIdentity
    version: str


def identify(model: SegmentModel, *, run: Path | str | None = None) -> ModelIdentity:
    """The identity of ``model``: sha256 of its config (as JSON) and of its weights.

    The weights' hash covers every parameter and buffer of the state dict (names, dtypes,
    shapes and bytes), so it is the same wherever the weights were loaded from.
    """
    config = dataclasses.asdict(model.config)  # type: ignore[call-overload]
    config_hash = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    digest = hashlib.sha256()
    state = model.state_dict()  # type: ignore[attr-defined]
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    name = str(getattr(model.config, "name", type(model).__name__))
    return ModelIdentity(name, config_hash, digest.hexdigest(), None if run is None else str(run))


def to_bytes(
    state: ReadState, *, model: SegmentModel, identity: ModelIdentity | None = None
) -> bytes:
    """The snapshot file's bytes for ``state`` read by ``model``.

    Args:
        state: a context (memory, pending tokens, tokens read).
        model: the model that read it.
        identity: ``identify(model)`` when the caller has it already (hashing the weights
            costs a pass over them).
    """
    from memtx import __version__

    identity = identity or identify(model)
    tensors = memory_state(state.memory)
    tensors = {name: tensor.cpu() for name, tensor in tensors.items()}
    tensors["pending"] = state.pending.detach().to("cpu", torch.long).contiguous()
    meta = {
        "format": FORMAT,
        "memtx_version": __version__,
        "tokens_read": int(state.tokens_read),
        "model": dataclasses.asdict(identity),
    }
    return save_tensors(tensors, metadata={_META_KEY: json.dumps(meta, sort_keys=True)})


def save(
    path: Path | str,
    *,
    model: SegmentModel,
    context: ReadState,
    identity: ModelIdentity | None = None,
) -> Path:
    """Write ``context`` as a snapshot file at ``path`` (atomically); returns the path."""
    path = Path(path)
    if path.is_dir():
        raise SnapshotError(f"{path} is a folder; give a file name for the snapshot")
    if not path.parent.is_dir():
        raise SnapshotError(f"cannot write {path}: the folder {path.parent} does not exist")
    data = to_bytes(context, model=model, identity=identity)
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise SnapshotError(f"cannot write snapshot {path}: {exc.strerror or exc}") from None
    return path


def _metadata(data: bytes, *, where: str) -> dict[str, Any]:
    """The ``memtx.snapshot`` JSON object of a safetensors file's header."""
    if len(data) < 8:
        raise SnapshotError(f"{where} is not a memtx snapshot (only {len(data)} bytes)")
    (size,) = struct.unpack("<Q", data[:8])
    if size > min(_MAX_HEADER, len(data) - 8):
        raise SnapshotError(f"{where} is not a memtx snapshot (no safetensors header)")
    try:
        header = json.loads(data[8 : 8 + size])
        meta = json.loads(header["__metadata__"][_META_KEY])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise SnapshotError(f"{where} is not a memtx snapshot ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else meta
        raise SnapshotError(f"{where}: snapshot format {found!r}, expected {FORMAT}")
    return meta


def from_bytes(
    data: bytes,
    *,
    model: SegmentModel,
    identity: ModelIdentity | None = None,
    where: str = "the snapshot",
) -> Snapshot:
    """Load a snapshot from its bytes into ``model``'s device, checking it belongs to it.

    Raises:
        SnapshotError: not a snapshot, or damaged.
        SnapshotMismatch: taken with another model (other config or weights); the
            message names both.
    """
    meta = _metadata(data, where=where)
    try:
        saved = ModelIdentity(**meta["model"])
        tokens_read = int(meta["tokens_read"])
        tensors = load_tensors(data)
    except Exception as exc:  # safetensors' own errors, a malformed identity
        raise SnapshotError(f"{where} is damaged ({exc})") from None
    identity = identity or identify(model)
    if not saved.same_model(identity):
        raise SnapshotMismatch(
            f"{where} was taken with the model {saved}; it cannot be loaded into "
            f"the model {identity}"
        )
    pending = tensors.get("pending")
    if pending is None or pending.dim() != 2 or pending.dtype != torch.long:
        raise SnapshotError(f"{where} has no pending tokens tensor int64 [batch, n]")
    segment_len, vocab = model.config.segment_len, model.config.vocab_size
    if pending.shape[1] > segment_len or pending.shape[1] > tokens_read:
        raise SnapshotError(
            f"{where} holds {pending.shape[1]} pending tokens; at most segment_len="
            f"{segment_len} and tokens_read={tokens_read}"
        )
    if pending.numel() and not (int(pending.min()) >= 0 and int(pending.max()) < vocab):
        raise SnapshotError(f"{where} holds token ids outside [0, {vocab})")
    template = model.init_memory(pending.shape[0])
    leaves = memory_leaves(template)
    for index, leaf in enumerate(leaves):
        got = tensors.get(f"memory.{index}")
        if got is None or got.shape != leaf.shape or got.dtype != leaf.dtype:
            found = "missing" if got is None else f"{tuple(got.shape)} {got.dtype}"
            raise SnapshotError(
                f"{where}: memory.{index} is {found}, the model expects "
                f"{tuple(leaf.shape)} {leaf.dtype}"
            )
    memory = memory_from_state(template, tensors)
    device = leaves[0].device
    return Snapshot(
        memory, pending.to(device), tokens_read, saved, str(meta.get("memtx_version", "?"))
    )


def load(
    path: Path | str, *, model: SegmentModel, identity: ModelIdentity | None = None
) -> Snapshot:
    """Load the snapshot file at ``path`` for ``model`` (see :func:`from_bytes`).

    Raises:
        SnapshotError: a missing or unreadable file, or any reason of :func:`from_bytes`.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SnapshotError(f"cannot read snapshot {path}: {exc.strerror or exc}") from None
    return from_bytes(data, model=model, identity=identity, where=f"snapshot {path}")
