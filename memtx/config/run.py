"""The tables of a language-model or task run: ``[train]``, ``[data]``, ``[task]``, and the run."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from memtx.config.checks import Checked, construct, section_tables
from memtx.config.models import ModelConfig, TransformerConfig, model_config
from memtx.errors import ConfigError

__all__ = ["SECTIONS", "DataConfig", "RunConfig", "TaskConfig", "TrainConfig"]


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
        trainable: ``all`` parameters; only the ``memory`` (RMT's initial memory, ARMT's
            memory tokens and associative projections) around a frozen pretrained
            backbone; or ``memory+lora``: the memory and LoRA adapters (``peft``) on the
            backbone. Except with ``all``, checkpoints hold only what is trained and the
            base model's path and sha256 (``model.hf_path`` is required).
        lora_rank: LoRA rank r.
        lora_alpha: LoRA scaling alpha (the update is scaled by alpha / r).
        lora_dropout: dropout on the LoRA input.
        lora_targets: module names LoRA wraps; empty: the family's default (GPT-2
            ``c_attn``, ``c_proj``; Llama-likes ``q_proj``, ``k_proj``, ``v_proj``,
            ``o_proj``).
        init_from: a run folder whose newest checkpoint starts this run's weights: each
            tensor with the same name is copied (a language model trained on the corpus,
            its embeddings and blocks into RMT or ARMT on a task, as the published
            models start from a pretrained GPT-2); the memory's own stay as initialised.
            Its tokenizer is reused (the same kind is required). None: no warm start.
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
    trainable: Literal["all", "memory", "memory+lora"] = "all"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ()
    init_from: str | None = None

    def _validate(self) -> None:
        for name in ("steps", "batch_size", "rollout", "truncate", "keep_checkpoints"):
            self._at_least(name, 1)
        self._at_least("lora_rank", 1)
        if not self.lora_alpha > 0:
            raise ConfigError(f"{self._key('lora_alpha')} must be > 0, got {self.lora_alpha}")
        self._in_range("lora_dropout", 0.0, 1.0)
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
        tokenizer: ``byte`` (vocab 256), ``bpe`` (trained on the training split and
            saved with the run) or ``hf``: the pretrained backbone's own (``model.hf_path``),
            saved with the run and checked against the model's vocabulary.
        bpe_vocab_size: vocabulary of the BPE tokenizer.
        valid_fraction: share of documents (by bytes) held out for validation.
        test_fraction: share held out for test.
        split_seed: seed of the document split (fixed: changing it changes the splits).
        cache_dir: where downloaded corpora go (``None``: ``~/.cache/memtx``).
    """

    section: ClassVar[str] = "data"

    corpus: str = "shakespeare"
    tokenizer: Literal["byte", "bpe", "hf"] = "byte"
    bpe_vocab_size: int = 4096
    valid_fraction: float = 0.05
    test_fraction: float = 0.05
    split_seed: int = 0
    cache_dir: str | None = None

    def _validate(self) -> None:
        self._at_least("bpe_vocab_size", 257)
        self._in_range("valid_fraction", 0.0, 0.5)
        self._in_range("test_fraction", 0.0, 0.5)


#: TaskConfig's per-stage lists: each given one has one entry per curriculum stage
_STAGE_LISTS = ("stages", "source_stages", "fact_stages", "background_stages")


@dataclass(frozen=True, kw_only=True)
class TaskConfig(Checked):
    """A synthetic long-range task instead of text (``memtx.data.tasks``), with a curriculum.

    Each step samples a fresh batch; every sample starts with a fresh memory and the
    rollout covers all its segments (``train.rollout`` does not apply).

    Attributes:
        name: ``copy``, ``reverse``, ``associative``, ``facts`` (noise from ``data.corpus``)
            or ``babilong`` (bAbI stories in ``data.corpus``'s text: the train split for
            training, held-out documents for validation and evaluation).
        segments: segments per sample at the end of the curriculum (and for evaluation).
        stages: segments per sample for each curriculum stage, e.g. ``[1, 2, 4, 8]``; each
            stage starts from the weights the last one ended with. Empty: ``[segments]``.
        source_stages: copy/reverse source length for each stage, e.g. ``[4, 8, ..., 36]``
            at a fixed ``segments`` (with ``filler_at = "start"`` a short source sits next
            to its copy, so each stage reaches a little further back through the memory).
            Empty: ``source_len`` throughout. When both lists are given they pair up
            stage by stage and must have the same length; a single list sets the count.
        fact_stages: babilong story facts for each stage, e.g. ``[1, 2, 4, 4]`` (a story of
            one fact teaches where the answer is; more facts, which fact answers): the
            story-size curriculum. Pairs with ``stages`` as ``source_stages`` does. Empty:
            ``story_facts`` throughout.
        background_stages: babilong ``background`` for each stage, e.g. ``[false, true]``:
            the story alone first (a small model learns which place goes with the person
            asked about far sooner without text around it), then hidden in background.
            Pairs with ``stages`` as ``source_stages`` does. Empty: ``background``
            throughout.
        stage_steps: at most this many steps per stage.
        vary_segments: each training batch draws its number of segments uniformly from
            the first stage's .. the current stage's (the first stage's is the shortest
            the task fits in; validation stays at the stage's): a model that only ever
            sees the stage's length learns where the question is, not to keep a fact
            for as long as it takes (the BABILong/ARMT recipe).
        advance_at: held-out accuracy (``advance_on``, on ``eval_samples`` samples, checked
            every ``train.eval_every`` steps) that ends a stage early.
        advance_on: which accuracy ``advance_at`` and ``stop_at`` read: ``token_accuracy``
            (share of answer tokens right), ``exact_match`` (share of answers right in
            full) or ``auto``: exact match for babilong, whose padded 8-byte answers are
            0.93 token accuracy at 0.5 exact (the first byte decides the word, the rest
            follows from it), token accuracy otherwise.
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
        qa: babilong's bAbI task, ``qa1`` .. ``qa5`` (``memtx.data.tasks.babilong``).
        story_facts: babilong facts per story, supporting and distractors (0: the task's
            default: 4, 8, 10, 2, 8 for qa1..qa5).
        background: babilong: False hides nothing, the story alone (BABILong's length 0).
        story_padding: babilong without background: ``"row"`` left-pads the story to its
            segments, ``"longest"`` only to the longest story of the task (a shorter row,
            fewer pads to dilute the attention of a reader that is learning to bind).
    """

    section: ClassVar[str] = "task"
    infinite_ok: ClassVar[frozenset[str]] = frozenset({"stop_at"})  # any value > 1: never

    name: Literal["copy", "reverse", "associative", "facts", "babilong"] = "copy"
    segments: int = 9
    stages: tuple[int, ...] = ()
    source_stages: tuple[int, ...] = ()
    fact_stages: tuple[int, ...] = ()
    background_stages: tuple[bool, ...] = ()
    stage_steps: int = 1000
    vary_segments: bool = False
    advance_at: float = 0.97
    advance_on: Literal["auto", "token_accuracy", "exact_match"] = "auto"
    stop_at: float = 2.0
    last_stage_lr: float = 0.0
    eval_samples: int = 256
    alphabet: int = 8
    source_len: int = 0
    filler_at: Literal["middle", "start"] = "middle"
    pairs: int = 4
    num_facts: int = 2
    value_len: int = 3
    qa: Literal["qa1", "qa2", "qa3", "qa4", "qa5"] = "qa1"
    story_facts: int = 0
    background: bool = True
    story_padding: Literal["row", "longest"] = "row"

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
        self._at_least("story_facts", 0)
        self._at_least("last_stage_lr", 0.0)
        if any(not isinstance(n, int) or n < 1 for n in self.stages):
            raise ConfigError(f"task.stages must be segment counts >= 1, got {list(self.stages)}")
        if list(self.stages) != sorted(self.stages):
            raise ConfigError(f"task.stages must not decrease, got {list(self.stages)}")
        for name, what in (
            ("source_stages", "source lengths"),
            ("fact_stages", "story fact counts"),
        ):
            values = list(getattr(self, name))
            if any(not isinstance(n, int) or n < 1 for n in values):
                raise ConfigError(f"task.{name} must be {what} >= 1, got {values}")
            if values != sorted(values):
                raise ConfigError(f"task.{name} must not decrease, got {values}")
        if self.source_stages and self.name not in ("copy", "reverse"):
            raise ConfigError(
                f"task.source_stages applies to copy and reverse only, not {self.name!r}"
            )
        for name in ("fact_stages", "background_stages"):
            if getattr(self, name) and self.name != "babilong":
                raise ConfigError(f"task.{name} applies to babilong only, not {self.name!r}")
        given = [(name, len(getattr(self, name))) for name in _STAGE_LISTS if getattr(self, name)]
        for (first, n), (name, m) in itertools.pairwise(given):
            if n != m:  # every stage list pairs up with the others, stage by stage
                raise ConfigError(
                    f"task.{first} ({n} stages) and task.{name} ({m}) must have the same length"
                )

    @property
    def needs_background(self) -> bool:
        """The task hides its facts in real text: it needs ``data.corpus``."""
        return self.name in ("facts", "babilong")

    @property
    def num_stages(self) -> int:
        return max(*(len(getattr(self, name)) for name in _STAGE_LISTS), 1)

    @property
    def stage_segments(self) -> tuple[int, ...]:
        return self.stages or (self.segments,) * self.num_stages

    @property
    def stage_sources(self) -> tuple[int, ...]:
        """Source length per stage (0: the task's default, half the sequence)."""
        return self.source_stages or (self.source_len,) * self.num_stages

    @property
    def stage_facts(self) -> tuple[int, ...]:
        """babilong story facts per stage (0: the task's default)."""
        return self.fact_stages or (self.story_facts,) * self.num_stages

    @property
    def stage_background(self) -> tuple[bool, ...]:
        """babilong background (True: the story hidden in text) per stage."""
        return self.background_stages or (self.background,) * self.num_stages

    @property
    def advance_metric(self) -> str:
        """The validation metric ``advance_at`` and ``stop_at`` read (``advance_on`` resolved)."""
        if self.advance_on != "auto":
            return self.advance_on
        return "exact_match" if self.name == "babilong" else "token_accuracy"

    def task_params(self, *, stage: int | None = None) -> dict[str, Any]:
        """The parameters ``make_task`` takes for this task at curriculum ``stage``; by
        default the last stage's, the task the curriculum ends with and evaluation uses."""
        stage = self.num_stages - 1 if stage is None else stage
        if self.name in ("copy", "reverse"):
            params: dict[str, Any] = {"alphabet": self.alphabet, "filler_at": self.filler_at}
            if self.stage_sources[stage]:
                params["source_len"] = self.stage_sources[stage]
            return params
        if self.name == "associative":
            return {"pairs": self.pairs}
        if self.name == "babilong":
            facts = self.stage_facts[stage]
            background = self.stage_background[stage]
            return {
                "qa": self.qa,
                "story_facts": facts,
                "background": background,
                "story_padding": self.story_padding,
            }
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
