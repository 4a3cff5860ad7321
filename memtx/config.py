"""Configuration: one frozen, typed, validated dataclass per model, plus training and data.

Every config checks its own fields on creation and raises :class:`ConfigError` with a
one-line message that names the field (``ConfigError: model.segment_len must be >= 1,
got 0``). Run configs are read from TOML presets (``configs/*.toml``) and overridden with
``--set section.key=value``; unknown keys and wrongly typed values are errors, never
silently ignored.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import tomllib

from memtx.errors import ConfigError

__all__ = [
    "Checked",
    "ModelConfig",
    "TransformerConfig",
    "TransformerXLConfig",
    "MemformerConfig",
    "RMTConfig",
    "TrainConfig",
    "DataConfig",
    "TaskConfig",
    "RunConfig",
    "MODEL_CONFIGS",
    "construct",
    "model_config",
    "SECTIONS",
    "load_config_tables",
    "load_run_config",
    "section_tables",
    "parse_overrides",
]


# --------------------------------------------------------------------------- checks


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _matches(value: Any, tp: Any) -> bool:
    """Whether ``value`` fits the annotation ``tp`` (the subset of typing our configs use)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin is Literal:
        return value in typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(args) == len(value) and all(_matches(v, a) for v, a in zip(value, args))
    if tp is float:
        # An int is a fine float (``lr = 1`` in TOML); a bool is not.
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


class Checked:
    """Mixin: type-check every field on creation, then run the class's own ``_validate``.

    Besides its type, every field is checked for values no config can mean: a float that
    is NaN or infinite (unless the field is named in ``infinite_ok``; NaN never passes),
    and a string that is empty or only spaces.
    """

    section: ClassVar[str] = ""
    #: float fields for which an infinite value means something (NaN is never allowed)
    infinite_ok: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, list):  # TOML arrays arrive as lists; configs hold tuples
                value = tuple(value)
                object.__setattr__(self, f.name, value)
            tp = hints[f.name]
            if not _matches(value, tp):
                raise ConfigError(f"{self._key(f.name)} must be {_type_name(tp)}, got {value!r}")
            if tp is float and isinstance(value, int):
                object.__setattr__(self, f.name, float(value))
            self._check_finite_and_nonempty(f.name, value)
        self._validate()

    def _check_finite_and_nonempty(self, name: str, value: Any) -> None:
        """Reject NaN/inf floats and blank strings in ``value`` (or in the tuple it is)."""
        items = value if isinstance(value, tuple) else (value,)
        for item in items:
            if isinstance(item, float) and not math.isfinite(item):
                if name in self.infinite_ok and math.isnan(item):
                    raise ConfigError(f"{self._key(name)} must be a number or inf, got {value!r}")
                if name not in self.infinite_ok:
                    raise ConfigError(f"{self._key(name)} must be a finite number, got {value!r}")
            if isinstance(item, str) and not item.strip():
                raise ConfigError(f"{self._key(name)} must not be empty, got {value!r}")

    def _key(self, name: str) -> str:
        return f"{self.section}.{name}" if self.section else name

    def _validate(self) -> None:
        """Range and combination checks; overridden by each config."""

    def _at_least(self, name: str, minimum: float) -> None:
        value = getattr(self, name)
        if value < minimum:
            raise ConfigError(f"{self._key(name)} must be >= {minimum}, got {value}")

    def _check_optimization(self) -> None:
        """lr, min_lr_ratio, weight_decay, grad_clip, betas and device of a training config."""
        cfg: Any = self  # TrainConfig or a pre-training config: both have these fields
        lr, betas, device = cfg.lr, cfg.betas, cfg.device
        if not lr > 0:
            raise ConfigError(f"{self._key('lr')} must be > 0, got {lr}")
        self._in_range("min_lr_ratio", 0.0, 1.0, high_open=False)
        self._at_least("weight_decay", 0.0)
        self._at_least("grad_clip", 0.0)
        if any(not 0.0 <= beta < 1.0 for beta in betas):
            raise ConfigError(f"{self._key('betas')} must be in [0, 1), got {betas}")
        if not (device in ("cpu", "cuda", "auto") or device.startswith("cuda:")):
            raise ConfigError(
                f"{self._key('device')} must be cpu, cuda, cuda:N or auto, got {device!r}"
            )

    def _in_range(self, name: str, low: float, high: float, *, high_open: bool = True) -> None:
        value = getattr(self, name)
        ok = low <= value < high if high_open else low <= value <= high
        if not ok:
            bracket = ")" if high_open else "]"
            raise ConfigError(f"{self._key(name)} must be in [{low}, {high}{bracket}, got {value}")


# --------------------------------------------------------------------------- models


@dataclass(frozen=True, kw_only=True)
class ModelConfig(Checked):
    """Fields every model shares.

    Attributes:
        vocab_size: number of token ids (256 for bytes).
        d_model: width of the residual stream.
        n_layers: transformer blocks (for Memformer: encoder + decoder blocks).
        n_heads: attention heads; must divide ``d_model``.
        segment_len: tokens per segment; the unit the memory is carried across.
        dropout: dropout probability on attention outputs, FFN and embeddings.
        d_ff: hidden width of the feed-forward layers (``None``: 4 x ``d_model``).
    """

    name: ClassVar[str] = ""
    section: ClassVar[str] = "model"

    vocab_size: int = 256
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    segment_len: int = 128
    dropout: float = 0.0
    d_ff: int | None = None

    @property
    def ffn_dim(self) -> int:
        return self.d_ff if self.d_ff is not None else 4 * self.d_model

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def _validate(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "segment_len"):
            self._at_least(name, 1)
        if self.d_ff is not None:
            self._at_least("d_ff", 1)
        self._in_range("dropout", 0.0, 1.0)
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"model.d_model ({self.d_model}) must be divisible by model.n_heads "
                f"({self.n_heads})"
            )
        if self.head_dim % 2:
            raise ConfigError(
                f"model.d_model / model.n_heads must be even (rotary positions), "
                f"got {self.head_dim}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self)}


@dataclass(frozen=True, kw_only=True)
class TransformerConfig(ModelConfig):
    """Causal transformer without memory: each segment sees only itself (the floor)."""

    name: ClassVar[str] = "transformer"


@dataclass(frozen=True, kw_only=True)
class TransformerXLConfig(ModelConfig):
    """Transformer-XL (Dai et al. 2019).

    Attributes:
        mem_len: hidden states cached per layer (stop-gradient); 0 disables the cache.
    """

    name: ClassVar[str] = "transformer_xl"

    mem_len: int = 128

    def _validate(self) -> None:
        super()._validate()
        self._at_least("mem_len", 0)


@dataclass(frozen=True, kw_only=True)
class MemformerConfig(ModelConfig):
    """Memformer (Wu et al. 2022): encoder + slot memory + decoder.

    ``n_layers`` is ``encoder_layers + decoder_layers``. Give both depths, or only
    ``n_layers`` (then the encoder gets a third, at least one block: 6 -> 2 + 4), or
    ``n_layers`` and one depth.

    Attributes:
        memory_slots: number of external memory slots k.
        encoder_layers: encoder blocks; each reads the memory by cross-attention.
        decoder_layers: causal decoder blocks; they read only the encoder output.
        write_temperature: the writer's softmax temperature tau (< 1 sharpens; the
            paper's value is unverified: we use 0.5; the ablation uses 1.0).
        use_memory: False is the paper's "w/o memory" ablation (no reader, no writer).
        use_forgetting: False is "w/o forgetting": no Biased Memory Normalization.
    """

    name: ClassVar[str] = "memformer"

    n_layers: int | None = None  # type: ignore[assignment]
    memory_slots: int = 32
    encoder_layers: int | None = None
    decoder_layers: int | None = None
    write_temperature: float = 0.5
    use_memory: bool = True
    use_forgetting: bool = True

    def _validate(self) -> None:
        enc, dec, total = self.encoder_layers, self.decoder_layers, self.n_layers
        if enc is None and dec is None:
            total = 6 if total is None else total
            if total < 2:
                raise ConfigError(f"model.n_layers must be >= 2 for memformer, got {total}")
            enc = max(1, total // 3)
            dec = total - enc
        elif enc is None or dec is None:
            if total is None:
                raise ConfigError(
                    "model.encoder_layers and model.decoder_layers must both be given, "
                    "or one of them with model.n_layers"
                )
            enc = total - dec if enc is None else enc  # type: ignore[operator]
            dec = total - enc if dec is None else dec
        elif total is not None and total != enc + dec:
            raise ConfigError(
                f"model.n_layers ({total}) must equal encoder_layers + decoder_layers "
                f"({enc} + {dec})"
            )
        object.__setattr__(self, "encoder_layers", enc)
        object.__setattr__(self, "decoder_layers", dec)
        object.__setattr__(self, "n_layers", enc + dec)
        super()._validate()
        self._at_least("encoder_layers", 1)
        self._at_least("decoder_layers", 1)
        self._at_least("memory_slots", 1)
        if not self.write_temperature > 0:
            raise ConfigError(f"model.write_temperature must be > 0, got {self.write_temperature}")


@dataclass(frozen=True, kw_only=True)
class RMTConfig(ModelConfig):
    """Recurrent Memory Transformer (Bulatov et al. 2022), decoder-only layout.

    Attributes:
        memory_tokens: m, the number of memory tokens read and written per segment.
        memory_layout: ``"read_write"`` is the paper's [read ; tokens ; write];
            ``"read_only"`` puts memory only at the start (the failing ablation).
        backbone: ``"builtin"`` (our causal blocks) or ``"hf"`` (a Hugging Face
            causal LM, ``pip install memtx[hf]``).
        hf_path: a local folder with a Hugging Face causal LM (config and weights).
        hf_model_type: with no ``hf_path``, build this HF architecture from a config
            with our sizes (``"gpt2"``), randomly initialised.
    """

    name: ClassVar[str] = "rmt"

    memory_tokens: int = 8
    memory_layout: Literal["read_write", "read_only"] = "read_write"
    backbone: Literal["builtin", "hf"] = "builtin"
    hf_path: str | None = None
    hf_model_type: str = "gpt2"

    def _validate(self) -> None:
        super()._validate()
        self._at_least("memory_tokens", 1)


MODEL_CONFIGS: dict[str, type[ModelConfig]] = {
    cls.name: cls for cls in (TransformerConfig, TransformerXLConfig, MemformerConfig, RMTConfig)
}


def _known_fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def construct(cls: type, values: dict[str, Any], *, section: str) -> Any:
    known = _known_fields(cls)
    unknown = sorted(set(values) - set(known))
    if unknown:
        where = f"{section}." if section else ""
        raise ConfigError(f"unknown key {where}{unknown[0]} (known: {', '.join(known)})")
    return cls(**values)


def model_config(name: str, **fields: Any) -> ModelConfig:
    """The validated config of model ``name`` with ``fields`` set.

    Raises:
        ConfigError: unknown model name, unknown field, wrong type or value.
    """
    if name not in MODEL_CONFIGS:
        raise ConfigError(f"unknown model {name!r} (known: {', '.join(MODEL_CONFIGS)})")
    return construct(MODEL_CONFIGS[name], fields, section="model")


# --------------------------------------------------------------------------- run


@dataclass(frozen=True, kw_only=True)
class TrainConfig(Checked):
    """How to train.

    Attributes:
        steps: optimizer steps (each is one rollout of ``rollout`` segments).
        batch_size: streams of the global batch (each row is one continuous stream); with
            N processes each takes ``batch_size / N`` of them.
        rollout: segments per optimizer step; memory passes to the next rollout detached.
        strategy: gradient strategy of the driver: ``full``, ``truncated`` or ``mrbp``.
        truncate: for ``truncated``: backpropagate through at most this many segments.
        lr: peak learning rate of AdamW.
        min_lr_ratio: the cosine schedule decays to ``lr * min_lr_ratio``.
        warmup_steps: linear warmup steps.
        weight_decay: AdamW weight decay (not on biases, norms, embeddings).
        betas: AdamW betas.
        grad_clip: clip the global gradient norm to this (0 disables).
        seed: seeds Python, NumPy and torch.
        eval_every: validate every this many steps (0: only at the end).
        eval_tokens: validation tokens per periodic evaluation (0: the whole split).
        log_every: write a metrics line every this many steps.
        checkpoint_every: write a checkpoint every this many steps (0: only at the end).
        keep_checkpoints: keep this many most recent checkpoints.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        compile: wrap the model in ``torch.compile`` (slow first step).
        fsdp: with several processes, shard parameters, gradients and optimizer state
            with FSDP2 (``fully_shard``) instead of replicating them; checkpoints still
            hold the full state and load in one process.
        on_nonfinite: a NaN/inf loss or gradient: ``skip`` the step or ``stop`` the run.
        check_memory: check each segment's memory for NaN/inf in the driver (debugging;
            one device sync per segment).
    """

    section: ClassVar[str] = "train"

    steps: int = 1000
    batch_size: int = 16
    rollout: int = 1
    strategy: Literal["full", "truncated", "mrbp"] = "full"
    truncate: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 0
    eval_tokens: int = 0
    log_every: int = 10
    checkpoint_every: int = 0
    keep_checkpoints: int = 3
    device: str = "cpu"
    compile: bool = False
    fsdp: bool = False
    on_nonfinite: Literal["skip", "stop"] = "stop"
    check_memory: bool = False

    def _validate(self) -> None:
        for name in ("steps", "batch_size", "rollout", "truncate", "keep_checkpoints"):
            self._at_least(name, 1)
        for name in ("warmup_steps", "eval_every", "eval_tokens", "checkpoint_every"):
            self._at_least(name, 0)
        self._at_least("log_every", 1)
        self._check_optimization()


@dataclass(frozen=True, kw_only=True)
class DataConfig(Checked):
    """What to read.

    Attributes:
        corpus: ``shakespeare``, ``shakespeare-all``, ``enwik8``, ``text8``, or a path to
            a text file or a folder of files.
        tokenizer: ``byte`` (vocab 256) or ``bpe`` (trained on the training split and
            saved with the run).
        bpe_vocab_size: vocabulary of the BPE tokenizer.
        valid_fraction: share of documents (by bytes) held out for validation.
        test_fraction: share held out for test.
        split_seed: seed of the document split (fixed: changing it changes the splits).
        cache_dir: where downloaded corpora go (``None``: ``~/.cache/memtx``).
    """

    section: ClassVar[str] = "data"

    corpus: str = "shakespeare"
    tokenizer: Literal["byte", "bpe"] = "byte"
    bpe_vocab_size: int = 4096
    valid_fraction: float = 0.05
    test_fraction: float = 0.05
    split_seed: int = 0
    cache_dir: str | None = None

    def _validate(self) -> None:
        self._at_least("bpe_vocab_size", 257)
        self._in_range("valid_fraction", 0.0, 0.5)
        self._in_range("test_fraction", 0.0, 0.5)


@dataclass(frozen=True, kw_only=True)
class TaskConfig(Checked):
    """A synthetic long-range task instead of text (``memtx.data.tasks``), with a curriculum.

    Each step samples a fresh batch; every sample starts with a fresh memory and the
    rollout covers all its segments (``train.rollout`` does not apply).

    Attributes:
        name: ``copy``, ``reverse``, ``associative`` or ``facts`` (noise from ``data.corpus``).
        segments: segments per sample at the end of the curriculum (and for evaluation).
        stages: segments per sample for each curriculum stage, e.g. ``[1, 2, 4, 8]``; each
            stage starts from the weights the last one ended with. Empty: ``[segments]``.
        source_stages: copy/reverse source length for each stage, e.g. ``[4, 8, ..., 36]``
            at a fixed ``segments`` (with ``filler_at = "start"`` a short source sits next
            to its copy, so each stage reaches a little further back through the memory).
            Empty: ``source_len`` throughout. When both lists are given they pair up
            stage by stage and must have the same length; a single list sets the count.
        stage_steps: at most this many steps per stage.
        advance_at: answer token accuracy (on ``eval_samples`` held-out samples, checked
            every ``train.eval_every`` steps) that ends a stage early.
        stop_at: the same accuracy at the last stage ends training (> 1: never).
        last_stage_lr: from the start of the last stage on, the learning rate is at most
            this (0: the schedule's throughout). A long curriculum tends to end on a
            plateau at its stages' rate; the RMT copy run needed one such drop.
        eval_samples: held-out samples for the accuracy checks.
        alphabet: copy/reverse symbols.
        source_len: copy/reverse source length (0: half the sequence).
        filler_at: copy/reverse layout: ``middle`` or ``start``.
        pairs: associative key-value pairs.
        num_facts: facts hidden in the noise.
        value_len: digits per fact value.
    """

    section: ClassVar[str] = "task"
    infinite_ok: ClassVar[frozenset[str]] = frozenset({"stop_at"})  # any value > 1: never

    name: Literal["copy", "reverse", "associative", "facts"] = "copy"
    segments: int = 9
    stages: tuple[int, ...] = ()
    source_stages: tuple[int, ...] = ()
    stage_steps: int = 1000
    advance_at: float = 0.97
    stop_at: float = 2.0
    last_stage_lr: float = 0.0
    eval_samples: int = 256
    alphabet: int = 8
    source_len: int = 0
    filler_at: Literal["middle", "start"] = "middle"
    pairs: int = 4
    num_facts: int = 2
    value_len: int = 3

    def _validate(self) -> None:
        for name in (
            "segments",
            "stage_steps",
            "eval_samples",
            "alphabet",
            "pairs",
            "num_facts",
            "value_len",
        ):
            self._at_least(name, 1)
        self._at_least("source_len", 0)
        self._at_least("last_stage_lr", 0.0)
        if any(not isinstance(n, int) or n < 1 for n in self.stages):
            raise ConfigError(f"task.stages must be segment counts >= 1, got {list(self.stages)}")
        if list(self.stages) != sorted(self.stages):
            raise ConfigError(f"task.stages must not decrease, got {list(self.stages)}")
        if any(not isinstance(n, int) or n < 1 for n in self.source_stages):
            raise ConfigError(
                f"task.source_stages must be source lengths >= 1, got {list(self.source_stages)}"
            )
        if list(self.source_stages) != sorted(self.source_stages):
            raise ConfigError(
                f"task.source_stages must not decrease, got {list(self.source_stages)}"
            )
        if self.source_stages and self.name not in ("copy", "reverse"):
            raise ConfigError(
                f"task.source_stages applies to copy and reverse only, not {self.name!r}"
            )
        if self.stages and self.source_stages and len(self.stages) != len(self.source_stages):
            raise ConfigError(
                f"task.stages ({len(self.stages)} stages) and task.source_stages "
                f"({len(self.source_stages)}) must have the same length"
            )

    @property
    def num_stages(self) -> int:
        return max(len(self.stages), len(self.source_stages), 1)

    @property
    def stage_segments(self) -> tuple[int, ...]:
        return self.stages or (self.segments,) * self.num_stages

    @property
    def stage_sources(self) -> tuple[int, ...]:
        """Source length per stage (0: the task's default, half the sequence)."""
        return self.source_stages or (self.source_len,) * self.num_stages

    def task_params(self, *, source_len: int | None = None) -> dict[str, Any]:
        """The parameters ``make_task`` takes for this task.

        ``source_len``: a stage's source length; by default the last stage's, the length the
        curriculum ends with and evaluation uses.
        """
        if self.name in ("copy", "reverse"):
            params: dict[str, Any] = {"alphabet": self.alphabet, "filler_at": self.filler_at}
            source_len = self.stage_sources[-1] if source_len is None else source_len
            if source_len:
                params["source_len"] = source_len
            return params
        if self.name == "associative":
            return {"pairs": self.pairs}
        return {"num_facts": self.num_facts, "value_len": self.value_len}


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """A whole run: which model with which sizes, how to train it, on what data or task."""

    model: ModelConfig = field(default_factory=TransformerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    task: TaskConfig | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "model": self.model.to_dict(),
            "train": dataclasses.asdict(self.train),
            "data": dataclasses.asdict(self.data),
        }
        if self.task is not None:
            out["task"] = dataclasses.asdict(self.task)
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunConfig:
        """Build and validate a run config from nested dicts (TOML or JSON)."""
        tables = section_tables(raw, sections=SECTIONS, what="a run config")
        model_fields = dict(tables.get("model", {}))
        name = model_fields.pop("name", "transformer")
        if not isinstance(name, str):
            raise ConfigError(f"model.name must be str, got {name!r}")
        return cls(
            model=model_config(name, **model_fields),
            train=construct(TrainConfig, tables.get("train", {}), section="train"),
            data=construct(DataConfig, tables.get("data", {}), section="data"),
            task=construct(TaskConfig, tables["task"], section="task")
            if "task" in tables
            else None,
        )


#: the tables of a language-model or task run's config
SECTIONS = ("model", "train", "data", "task")


# --------------------------------------------------------------------------- loading


def section_tables(
    raw: Any, *, sections: Sequence[str], what: str = "a config"
) -> dict[str, dict[str, Any]]:
    """``raw``'s tables (copies), after checking each is a known section and a table.

    Raises:
        ConfigError: ``raw`` is not a table, a section is unknown or not a table.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} must be a table of {', '.join(sections)}")
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ConfigError(f"unknown section {unknown[0]!r} (known: {', '.join(sections)})")
    tables: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table, got {value!r}")
        tables[key] = dict(value)
    return tables


def _parse_value(text: str) -> Any:
    """A ``--set`` value: a TOML literal (``3``, ``1e-3``, ``true``, ``[1, 2]``) or a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(
    items: Sequence[str], *, sections: Sequence[str] = SECTIONS
) -> dict[str, dict[str, Any]]:
    """Turn ``["train.lr=1e-3", "model.name=rmt"]`` into ``{"train": {"lr": 0.001}, ...}``."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        if section not in sections:
            raise ConfigError(f"unknown section in --set {item!r} (known: {', '.join(sections)})")
        out.setdefault(section, {})[name] = _parse_value(value.strip())
    return out


def load_config_tables(
    path: Path | str | None, *, overrides: Sequence[str] = (), sections: Sequence[str]
) -> dict[str, Any]:
    """THE config loader: a TOML preset (None: empty) with ``--set`` overrides applied.

    Every kind of run reads its config through this; each maps the tables it gets to
    its dataclasses (:meth:`RunConfig.from_dict`, ``ElectraRun.from_dict``).

    Raises:
        ConfigError: missing or unreadable file, TOML syntax error, bad override.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file {str(path)!r} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {str(path)!r} cannot be read: {exc}") from None
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    for section, values in parse_overrides(overrides, sections=sections).items():
        current = raw.setdefault(section, {})
        if not isinstance(current, dict):
            raise ConfigError(f"{section} must be a table")
        current.update(values)
    return raw


def load_run_config(
    path: Path | str | None, *, overrides: Sequence[str] | None = None
) -> RunConfig:
    """Read a TOML preset (or the defaults when ``path`` is None) and apply ``--set`` overrides.

    Raises:
        ConfigError: missing file, TOML syntax error, unknown key, bad type or value.
    """
    return RunConfig.from_dict(
        load_config_tables(path, overrides=overrides or (), sections=SECTIONS)
    )
