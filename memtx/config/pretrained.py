"""Pretrained checkpoints that ``model.hf_path`` names: where they are, their sizes, identity.

``hf_path`` is one of:

- a local folder of a Hugging Face causal LM (``config.json`` and ``*.safetensors``);
- a local GGUF file (``*.gguf``, e.g. a llama.cpp quantisation, dequantised on load);
- a Hugging Face hub name (``HuggingFaceTB/SmolLM2-135M``), downloaded once into the hub
  cache (only JSON, safetensors and tokenizer files). With ``HF_HUB_OFFLINE=1`` a name
  that is not cached is a :class:`ConfigError`.

:func:`pretrained_sizes` reads vocabulary, width, depth, heads, feed-forward width and
positions from the checkpoint without loading its weights (a folder's ``config.json``; a
GGUF file's header, parsed here in a few milliseconds where ``transformers`` takes
seconds), so a config need not restate them: :func:`with_pretrained_sizes` fills them in
and refuses a restated value that differs. :func:`base_identity` is the path and sha256
a checkpoint of trained parts records about the frozen model it belongs to.

This module imports no model code (the configs use it); :mod:`memtx.models.hf` loads.
"""

from __future__ import annotations

import functools
import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from memtx.config.checks import read_json_table
from memtx.errors import ConfigError

__all__ = [
    "HF_SIZE_NAMES",
    "PretrainedSource",
    "base_identity",
    "converted_folder",
    "pretrained_sizes",
    "resolve_source",
    "with_pretrained_sizes",
]

#: our sizes under the names HF configs use; the first name a config knows is used
HF_SIZE_NAMES: dict[str, tuple[str, ...]] = {
    "vocab_size": ("vocab_size",),
    "d_model": ("n_embd", "hidden_size", "d_model"),
    "n_layers": ("n_layer", "num_hidden_layers", "num_layers"),
    "n_heads": ("n_head", "num_attention_heads", "num_heads"),
    "d_ff": ("n_inner", "intermediate_size", "ffn_dim"),
    "positions": ("n_positions", "max_position_embeddings"),
}
#: the fields of our model configs that a checkpoint decides
CHECKPOINT_SIZES = ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff")
#: GGUF architectures that transformers loads as causal LMs -> their HF model type
GGUF_CAUSAL = {
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "phi3": "phi3",
    "gpt2": "gpt2",
    "starcoder2": "starcoder2",
    "stablelm": "stablelm",
    "falcon": "falcon",
    "bloom": "bloom",
    "gemma2": "gemma2",
    "gemma3": "gemma3",
    "nemotron": "nemotron",
}
#: GGUF metadata keys (after ``<arch>.``) -> our size names
_GGUF_SIZES = {
    "embedding_length": "d_model",
    "block_count": "n_layers",
    "attention.head_count": "n_heads",
    "feed_forward_length": "d_ff",
    "context_length": "positions",
    "vocab_size": "vocab_size",
}
_HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]


@dataclass(frozen=True)
class PretrainedSource:
    """Where a pretrained checkpoint is on this machine.

    Attributes:
        given: ``model.hf_path`` as written.
        kind: ``folder``, ``gguf`` or ``hub`` (a cached hub snapshot: a folder).
        folder: the local folder ``from_pretrained`` reads.
        gguf_file: the GGUF file's name inside ``folder`` (None for folders).
    """

    given: str
    kind: Literal["folder", "gguf", "hub"]
    folder: Path
    gguf_file: str | None = None

    def from_pretrained_args(self) -> tuple[str, dict[str, Any]]:
        """(first argument, keywords) of ``transformers``' ``from_pretrained``."""
        extra = {"gguf_file": self.gguf_file} if self.gguf_file else {}
        return str(self.folder), {"local_files_only": True, **extra}

    @property
    def weight_files(self) -> list[Path]:
        """The files whose bytes make the weights (hashed by :func:`base_identity`)."""
        if self.gguf_file:
            return [self.folder / self.gguf_file]
        return [*sorted(self.folder.glob("*.safetensors")), self.folder / "config.json"]


def converted_folder(source: PretrainedSource, part: str) -> Path | None:
    """Where a GGUF checkpoint's ``part`` (``model``, ``tokenizer``) is kept converted.

    Dequantising a GGUF file and converting its tokenizer take ``transformers`` tens of
    seconds; the result is saved once per file (by its sha256) under ``$MEMTX_CACHE`` (else
    ``~/.cache/memtx``) in ``gguf/<sha256>/<part>/`` as safetensors and JSON, and later
    loads read that (a cache beside the checkpoint, never a run folder). None for a folder.
    """
    if not source.gguf_file:
        return None
    env = os.environ.get("MEMTX_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "memtx"
    file = source.folder / source.gguf_file
    stat = file.stat()
    return root / "gguf" / _file_sha256(str(file), stat.st_size, stat.st_mtime_ns)[:24] / part


def resolve_source(hf_path: str) -> PretrainedSource:
    """The local checkpoint ``hf_path`` names (a hub name is downloaded or found cached).

    Raises:
        ConfigError: a path that does not exist, a ``.gguf`` that is not a file, a hub name
            that is not cached while offline or cannot be downloaded.
    """
    where = f"model.hf_path={hf_path!r}"
    path = Path(hf_path).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ConfigError(f"{where} is not a GGUF file")
        return PretrainedSource(hf_path, "gguf", path.parent, path.name)
    if path.is_dir():
        return PretrainedSource(hf_path, "folder", path)
    if path.exists() or hf_path.startswith((".", "/", "~")) or hf_path.count("/") > 1:
        raise ConfigError(f"{where} is neither a model folder, a .gguf file nor a hub name")
    return PretrainedSource(hf_path, "hub", _hub_snapshot(hf_path, where=where))


@functools.lru_cache(maxsize=8)
def _hub_snapshot(name: str, *, where: str) -> Path:
    try:
        import huggingface_hub
        from huggingface_hub import constants
    except ImportError:
        raise ConfigError(
            f"{where}: a hub name needs huggingface_hub: pip install memtx[hf]"
        ) from None
    offline = bool(constants.HF_HUB_OFFLINE)
    try:
        folder = huggingface_hub.snapshot_download(
            name, allow_patterns=_HUB_FILES, local_files_only=offline
        )
    except Exception as exc:  # hub errors have many classes; all mean "not available"
        if offline:
            raise ConfigError(
                f"{where} is not a local folder or .gguf file, and that hub model is not "
                "cached while offline (HF_HUB_OFFLINE=1): download it once online"
            ) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{where}: cannot download from the hub: {first}") from None
    return Path(folder)


def pretrained_sizes(hf_path: str) -> dict[str, Any]:
    """The checkpoint's sizes (our names) and ``model_type``, without loading weights.

    Raises:
        ConfigError: see :func:`resolve_source`; a folder without a readable
            ``config.json``; a file that is not GGUF, or a GGUF of no causal LM.
    """
    source = resolve_source(hf_path)
    where = f"model.hf_path={hf_path!r}"
    if source.gguf_file:
        file = source.folder / source.gguf_file
        stat = file.stat()
        return dict(_gguf_sizes(str(file), stat.st_size, stat.st_mtime_ns, where=where))
    config_file = source.folder / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"{where} has no config.json: not a Hugging Face model folder")
    raw = read_json_table(config_file, name=f"{where}: config.json")
    raw = {**raw, **raw.get("text_config", {})} if isinstance(raw.get("text_config"), dict) else raw
    sizes: dict[str, Any] = {"model_type": raw.get("model_type")}
    for ours, names in HF_SIZE_NAMES.items():
        sizes[ours] = next((raw[n] for n in names if raw.get(n) is not None), None)
    return sizes  # sizes it does not give stay None (the model check says what it is)


def with_pretrained_sizes(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` of a model table with the sizes of the checkpoint ``hf_path`` filled in.

    Raises:
        ConfigError: a restated size that differs from the checkpoint's (naming both).
    """
    path = fields["hf_path"]
    if not isinstance(path, str):
        raise ConfigError(f"model.hf_path must be str, got {path!r}")
    sizes = pretrained_sizes(path)
    out = dict(fields)
    for key in CHECKPOINT_SIZES:
        theirs = sizes.get(key)
        if theirs is None:
            continue
        if key in fields and fields[key] != theirs:
            raise ConfigError(
                f"model.{key}={fields[key]} but the checkpoint {path!r} has {key}={theirs} "
                f"(leave model.{key} unset: the checkpoint decides)"
            )
        out[key] = theirs
    model_type = sizes.get("model_type")
    given = fields.get("hf_model_type", "gpt2")
    if isinstance(model_type, str):
        if given not in ("gpt2", model_type):  # "gpt2" is the default: no claim
            raise ConfigError(
                f"model.hf_model_type={given!r} but the checkpoint {path!r} holds a "
                f"{model_type!r} model (leave hf_model_type unset: the checkpoint decides)"
            )
        out["hf_model_type"] = model_type
    return out


def base_identity(hf_path: str) -> dict[str, str]:
    """``{"path", "sha256"}`` of the checkpoint's weight files (a frozen base model's id)."""
    source = resolve_source(hf_path)
    digest = hashlib.sha256()
    for file in source.weight_files:
        stat = file.stat()
        digest.update(file.name.encode() + b"\0")
        digest.update(_file_sha256(str(file), stat.st_size, stat.st_mtime_ns).encode())
    return {"path": hf_path, "sha256": digest.hexdigest()}


@functools.lru_cache(maxsize=32)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file (cached per size and modification time)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- GGUF header

# GGUF value types: 0-7 and 10-12 fixed-size scalars, 8 string, 9 array
_SCALARS = dict(enumerate("BbHhIif?")) | {10: "Q", 11: "q", 12: "d"}


@functools.lru_cache(maxsize=8)
def _gguf_sizes(path: str, size: int, mtime_ns: int, *, where: str) -> tuple[tuple[str, Any], ...]:
    """Sizes from a GGUF header (cached per file size and modification time)."""
    try:
        with open(path, "rb") as handle:
            metadata = _gguf_metadata(handle)
    except (struct.error, ValueError, UnicodeDecodeError, OSError) as exc:
        raise ConfigError(f"{where} is not a readable GGUF file ({exc})") from None
    arch = metadata.get("general.architecture")
    if arch not in GGUF_CAUSAL:
        raise ConfigError(
            f"{where} holds a GGUF {arch!r} model, not a causal LM transformers can load "
            f"(known: {', '.join(GGUF_CAUSAL)})"
        )
    sizes: dict[str, Any] = {"model_type": GGUF_CAUSAL[arch]}
    for key, ours in _GGUF_SIZES.items():
        value = metadata.get(f"{arch}.{key}")
        sizes[ours] = int(value) if isinstance(value, (int, float)) else None
    if sizes["vocab_size"] is None:
        sizes["vocab_size"] = metadata.get("tokenizer.ggml.tokens")  # an array's length
    return tuple(sizes.items())


def _gguf_metadata(handle: BinaryIO) -> dict[str, Any]:
    """The key-value header of a GGUF file; arrays are given by their length only."""
    if handle.read(4) != b"GGUF":
        raise ValueError("no GGUF magic number")
    (version,) = struct.unpack("<I", handle.read(4))
    if version < 2:
        raise ValueError(f"GGUF version {version} is too old")
    _, count = struct.unpack("<QQ", handle.read(16))
    metadata: dict[str, Any] = {}
    for _ in range(count):
        key = _gguf_string(handle)
        (kind,) = struct.unpack("<I", handle.read(4))
        metadata[key] = _gguf_value(handle, kind)
    return metadata


def _gguf_string(handle: BinaryIO) -> str:
    (length,) = struct.unpack("<Q", handle.read(8))
    return handle.read(length).decode("utf-8")


def _gguf_value(handle: BinaryIO, kind: int) -> Any:
    if kind in _SCALARS:
        fmt = "<" + _SCALARS[kind]
        return struct.unpack(fmt, handle.read(struct.calcsize(fmt)))[0]
    if kind == 8:
        return _gguf_string(handle)
    if kind != 9:
        raise ValueError(f"unknown GGUF value type {kind}")
    item_kind, length = struct.unpack("<IQ", handle.read(12))
    if item_kind in _SCALARS:  # skip fixed-size items in one seek
        handle.seek(length * struct.calcsize("<" + _SCALARS[item_kind]), os.SEEK_CUR)
    else:
        for _ in range(length):
            _gguf_value(handle, item_kind)
    return length
