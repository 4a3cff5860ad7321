"""ELECTRA's configs: the ``[electra]``, ``[pretrain]`` and ``[finetune]`` tables, and a run.

A pre-training run (``configs/electra-*.toml``) has five tables: ``[electra]`` (the
networks), ``[replay]`` (TMR's buffer), ``[pretrain]`` (the loop), ``[data]`` (the corpus)
and ``[finetune]`` (the downstream tasks). They are read by the one config loader
(:func:`memtx.config.load_config_tables`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from memtx.config import Checked, DataConfig, construct, load_config_tables, section_tables
from memtx.electra.replay import ReplayConfig
from memtx.errors import ConfigError

__all__ = [
    "SECTIONS",
    "TASKS",
    "ElectraConfig",
    "ElectraRun",
    "FinetuneConfig",
    "PretrainConfig",
    "load_electra_run",
]

#: the downstream tasks (:mod:`memtx.electra.tasks`)
TASKS = ("play", "speaker")


@dataclass(frozen=True, kw_only=True)
class ElectraConfig(Checked):
    """The generator and discriminator (the ``[electra]`` table).

    Attributes:
        vocab_size: token ids of the tokenizer (set from it; 256 for bytes).
        seq_len: tokens per pre-training example.
        d_model: discriminator width, also the width of the shared token embedding.
        n_layers: discriminator blocks (memformer backbone: encoder blocks).
        n_heads: discriminator attention heads.
        d_ff: discriminator FFN width (``None``: 4 x ``d_model``).
        generator_d_model: generator width (ELECTRA: 1/4 to 1/2 of the discriminator's).
        generator_layers: generator blocks.
        generator_heads: generator attention heads.
        mask_prob: share of positions masked per example.
        discriminator_weight: lambda in ``L_mlm + lambda * L_rtd`` (ELECTRA: 50).
        sampling_temperature: temperature of the generator's samples.
        dropout: dropout in both networks.
        backbone: ``"encoder"`` (whole example at once) or ``"memformer"`` (Memformer's
            memory encoder, segment by segment, for long examples).
        segment_len: memformer backbone: tokens per segment (must divide ``seq_len``).
        memory_slots: memformer backbone: memory slots.
    """

    section: ClassVar[str] = "electra"

    vocab_size: int = 256
    seq_len: int = 128
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int | None = None
    generator_d_model: int = 64
    generator_layers: int = 2
    generator_heads: int = 2
    mask_prob: float = 0.15
    discriminator_weight: float = 50.0
    sampling_temperature: float = 1.0
    dropout: float = 0.0
    backbone: Literal["encoder", "memformer"] = "encoder"
    segment_len: int = 64
    memory_slots: int = 16

    @property
    def pad_id(self) -> int:
        return self.vocab_size

    @property
    def mask_id(self) -> int:
        return self.vocab_size + 1

    @property
    def embedding_rows(self) -> int:
        return self.vocab_size + 2

    def _validate(self) -> None:
        for name in ("vocab_size", "seq_len", "d_model", "n_layers", "n_heads"):
            self._at_least(name, 1)
        for name in ("generator_d_model", "generator_layers", "generator_heads"):
            self._at_least(name, 1)
        for name in ("segment_len", "memory_slots"):
            self._at_least(name, 1)
        if self.d_ff is not None:
            self._at_least("d_ff", 1)
        self._in_range("dropout", 0.0, 1.0)
        if not 0.0 < self.mask_prob < 1.0:
            raise ConfigError(f"electra.mask_prob must be in (0, 1), got {self.mask_prob}")
        if not self.discriminator_weight > 0:
            raise ConfigError(
                f"electra.discriminator_weight must be > 0, got {self.discriminator_weight}"
            )
        if not self.sampling_temperature > 0:
            raise ConfigError(
                f"electra.sampling_temperature must be > 0, got {self.sampling_temperature}"
            )
        for width, heads in (("d_model", "n_heads"), ("generator_d_model", "generator_heads")):
            w, h = getattr(self, width), getattr(self, heads)
            if w % h or (w // h) % 2:
                raise ConfigError(
                    f"electra.{width} ({w}) must be divisible by electra.{heads} ({h}) "
                    "into an even head width (rotary positions)"
                )
        if self.backbone == "memformer" and self.seq_len % self.segment_len:
            raise ConfigError(
                f"electra.segment_len ({self.segment_len}) must divide electra.seq_len "
                f"({self.seq_len}) with the memformer backbone"
            )


@dataclass(frozen=True, kw_only=True)
class PretrainConfig(Checked):
    """How to pre-train (the ``[pretrain]`` table).

    Attributes:
        steps: optimizer steps; each generates ``batch_size`` fresh examples.
        batch_size: fresh (generated) examples per step.
        lr: peak AdamW learning rate (warmup, then cosine to ``lr * min_lr_ratio``).
        warmup_steps: linear warmup steps.
        min_lr_ratio: the final learning rate as a share of ``lr``.
        weight_decay: AdamW weight decay on matrices.
        betas: AdamW betas.
        grad_clip: global gradient-norm clip (0 disables).
        on_nonfinite: a NaN/inf loss or gradient: ``skip`` the step or ``stop`` the run.
        seed: seeds the weights, the corpus windows and the masks.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        log_every: write a metrics line every this many steps.
        eval_every: score RTD on the valid windows every this many steps (0: at the end).
        checkpoint_every: checkpoint every this many steps (0: only at the end).
        keep_checkpoints: most recent checkpoints kept.
        eval_examples: held-out windows of the valid split scored for RTD at the end.
        eval_seed: seed of their masks and samples (fixed across runs).
    """

    section: ClassVar[str] = "pretrain"

    steps: int = 600
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    on_nonfinite: Literal["skip", "stop"] = "stop"
    seed: int = 0
    device: str = "cpu"
    log_every: int = 10
    eval_every: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 1
    eval_examples: int = 256
    eval_seed: int = 1234

    def _validate(self) -> None:
        for name in ("steps", "batch_size", "log_every", "keep_checkpoints"):
            self._at_least(name, 1)
        for name in ("warmup_steps", "eval_every", "checkpoint_every", "eval_examples"):
            self._at_least(name, 0)
        self._check_optimization()


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig(Checked):
    """Downstream tasks and fine-tuning (the ``[finetune]`` table).

    Attributes:
        tasks: which tasks to run: ``"play"``, ``"speaker"``.
        epochs: passes over the training examples.
        batch_size: examples per step.
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_fraction: share of the steps with linear warmup (then linear decay to 0).
        dropout: dropout before the classification head.
        max_len: tokens per example at most (<= the pre-training ``seq_len``).
        block_size: examples per contiguous block of the fixed split.
        split_seed: seed of the per-class caps (fixed: the same examples for every run).
        max_train_per_class: training examples per class at most.
        max_eval_per_class: valid and test examples per class at most.
        play_names: the plays of the ``play`` task (corpus document names).
        passage_len: bytes per passage of the ``play`` task.
        skip_fraction: share of each play skipped at its start (title, characters).
        speaker_plays: the plays of the ``speaker`` task.
        top_speakers: speakers per play in the ``speaker`` task.
        min_speech_bytes: shorter speeches are dropped.
    """

    section: ClassVar[str] = "finetune"

    tasks: tuple[str, ...] = TASKS
    epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    dropout: float = 0.1
    max_len: int = 128
    block_size: int = 10
    split_seed: int = 0
    max_train_per_class: int = 150
    max_eval_per_class: int = 40
    play_names: tuple[str, ...] = (
        "hamlet_gut",
        "macbeth_gut",
        "othello_gut",
        "lear_gut",
        "romeo_and_juliet_gut",
        "twelfth_night_gut",
        "tempest_gut",
        "julius_caesar_gut",
    )
    passage_len: int = 128
    skip_fraction: float = 0.03
    speaker_plays: tuple[str, ...] = (
        "hamlet_gut",
        "othello_gut",
        "romeo_and_juliet_gut",
        "twelfth_night_gut",
    )
    top_speakers: int = 3
    min_speech_bytes: int = 24

    def _validate(self) -> None:
        for name in ("epochs", "batch_size", "max_len", "block_size", "passage_len"):
            self._at_least(name, 1)
        for name in ("max_train_per_class", "max_eval_per_class", "top_speakers"):
            self._at_least(name, 1)
        self._at_least("min_speech_bytes", 1)
        if not self.lr > 0:
            raise ConfigError(f"finetune.lr must be > 0, got {self.lr}")
        self._at_least("weight_decay", 0.0)
        self._in_range("warmup_fraction", 0.0, 1.0)
        self._in_range("dropout", 0.0, 1.0)
        self._in_range("skip_fraction", 0.0, 1.0)
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise ConfigError(
                f"finetune.tasks must be a non-empty list of {', '.join(TASKS)}, "
                f"got {list(self.tasks)}"
            )
        if len(self.play_names) < 2:
            raise ConfigError(f"finetune.play_names needs >= 2 plays, got {list(self.play_names)}")
        if not self.speaker_plays:
            raise ConfigError("finetune.speaker_plays needs >= 1 play, got []")


#: the tables of a pre-training run's config
SECTIONS = ("electra", "replay", "pretrain", "data", "finetune")


@dataclass(frozen=True, kw_only=True)
class ElectraRun:
    """A whole pre-training (and downstream) run: ``configs/electra-*.toml``."""

    electra: ElectraConfig = field(default_factory=ElectraConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def to_dict(self) -> dict[str, Any]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ElectraRun:
        """Build and validate from nested dicts (TOML or JSON); unknown keys are errors."""
        tables = section_tables(raw, sections=SECTIONS, what="an electra run config")
        classes = {
            "electra": ElectraConfig,
            "replay": ReplayConfig,
            "pretrain": PretrainConfig,
            "data": DataConfig,
            "finetune": FinetuneConfig,
        }
        return cls(
            **{
                name: construct(klass, tables.get(name, {}), section=name)
                for name, klass in classes.items()
            }
        )


def load_electra_run(path: Path | str | None, *, overrides: Sequence[str] = ()) -> ElectraRun:
    """Read an ``electra-*.toml`` preset (None: defaults) and apply ``section.key=value`` overrides.

    Raises:
        ConfigError: missing file, bad TOML, unknown section or key, bad type or value.
    """
    return ElectraRun.from_dict(load_config_tables(path, overrides=overrides, sections=SECTIONS))
