"""Language-model and task training: a recipe over the one loop (:mod:`memtx.training`).

One optimizer step is one rollout of the driver (:func:`memtx.recurrence.rollout`) over
``train.rollout`` segments of every stream, with the gradient strategy of
``train.strategy``; the memory is carried to the next rollout (detached) unless the
source starts fresh streams (a task's samples, a stream that wrapped around). Text and
task curricula are the two sources (:mod:`memtx.training.sources`); the loop gives both
resume, signals, the non-finite guard, multi-process training and autocast.

A run folder holds ``config.json`` (the resolved config), ``tokenizer.json``,
``metrics.jsonl``, ``checkpoints/`` and, at the end, ``loss.png``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from memtx import distributed
from memtx.checkpoint import load_latest
from memtx.config import SECTIONS, RunConfig, TrainConfig
from memtx.data import PreparedData, PretrainedTokenizer, load_tokenizer, no_corpus, prepare_data
from memtx.errors import ConfigError
from memtx.evaluate import EvalResult, evaluate_haystacks, evaluate_task, evaluate_tokens
from memtx.models import SegmentLM, from_config
from memtx.models.protocol import Memory, memory_from_state, memory_state, select_rows
from memtx.recurrence import check_strategy, rollout
from memtx.training import (
    LoopConfig,
    NonFiniteError,
    Schedule,
    StepOutcome,
    TrainingInterrupted,
    build_optimizer,
    fit,
    load_weights,
    read_run_config,
    resolve_device,
    seed_everything,
    start_run,
    trainable,
    warmup_cosine,
)
from memtx.training.compile import compile_segment_steps
from memtx.training.plots import plot_losses
from memtx.training.sources import Batch, TaskSource, TextSource

__all__ = [
    "NonFiniteError",
    "PreparedData",
    "RolloutStep",
    "TrainResult",
    "TrainingInterrupted",
    "evaluate_run",
    "evaluate_task_run",
    "load_saved_run",
    "load_trained",
    "lr_schedule",
    "prepare_data",
    "train",
]


def lr_schedule(cfg: TrainConfig) -> Schedule:
    """Linear warmup to ``lr`` then cosine decay to ``lr * min_lr_ratio`` at ``steps``."""
    return warmup_cosine(cfg)


def _lm_loss(count: int) -> Callable[[Tensor, Tensor], Tensor]:
    """Per-segment loss whose sum over the rollout is the mean cross-entropy per token."""

    def loss_fn(logits: Tensor, targets: Tensor) -> Tensor:
        flat = logits.float().flatten(0, 1)
        return F.cross_entropy(flat, targets.flatten(), reduction="sum", ignore_index=-100) / count

    return loss_fn


def _to_device(tensor: Tensor, device: torch.device) -> Tensor:
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


class RolloutStep:
    """The step function of language-model and task training, and the memory it carries.

    Each call runs one rollout of the driver over a :class:`~memtx.training.sources.Batch`
    (backward included); the memory after it becomes the next call's once the loop
    accepts the update. As a checkpoint part it saves the memory of every stream of the
    global batch, so a run written by N processes resumes with any M that divides it.
    """

    def __init__(
        self,
        model: SegmentLM,
        cfg: TrainConfig,
        *,
        rows: int,
        ctx: distributed.DistContext,
    ) -> None:
        self.model = model
        self.cfg = cfg
        self.rows = rows  # this process's streams
        self.ctx = ctx
        self.memory: Memory = model.init_memory(rows, device=ctx.device)

    def _fresh(self) -> Memory:
        return self.model.init_memory(self.rows, device=self.ctx.device)

    def __call__(self, batch: Batch, *, step: int) -> StepOutcome:
        if batch.reset:
            self.memory = self._fresh()
        device = self.ctx.device
        inputs, targets = (_to_device(t, device) for t in (batch.inputs, batch.targets))
        result = rollout(
            self.model,
            inputs,
            targets,
            self.memory,
            loss_fn=_lm_loss(batch.count),
            strategy=self.cfg.strategy,
            truncate=self.cfg.truncate,
            check_memory=self.cfg.check_memory,
        )
        loss = float(result.loss)

        def commit() -> None:
            self.memory = result.memory

        def discard() -> None:
            self.memory = self._fresh()

        return StepOutcome(
            loss=loss,
            metrics={"bpc": loss / math.log(2)},
            tokens=inputs.numel(),
            commit=commit,
            discard=discard,
        )

    def state(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        full = distributed.gather_memory(self.memory, self.ctx)  # a collective
        return {"rows": self.cfg.batch_size}, memory_state(full)

    def load_state(self, meta: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        saved_rows = int(meta["rows"])
        if saved_rows != self.cfg.batch_size:
            return  # another global batch: the streams restart with a fresh memory
        template = self.model.init_memory(saved_rows, device=self.ctx.device)
        full = memory_from_state(template, tensors)
        rank = self.ctx.rank
        self.memory = select_rows(full, rank * self.rows, (rank + 1) * self.rows)


@dataclass
class TrainResult:
    """What a finished (or resumed-and-finished) run reports."""

    model: SegmentLM
    run_dir: Path
    steps: int
    final_loss: float
    valid: dict[str, float]
    tokens_per_s: float
    history: list[dict[str, Any]]


def _build_source(
    run: RunConfig, data: PreparedData, *, rows: int, ctx: distributed.DistContext
) -> TextSource | TaskSource:
    cfg = run.train
    if run.task is not None:
        noise = data.train if run.task.needs_background else None
        return TaskSource(
            run.task,
            segment_len=run.model.segment_len,
            rows=rows,
            rank=ctx.rank,
            seed=cfg.seed,
            noise=noise,
            # held-out text for validation, never the training background
            eval_noise=data.valid if run.task.name == "babilong" else None,
            tokenizer=trainable.task_tokenizer(run, data.tokenizer),
        )
    return TextSource(
        data.train,
        data.valid,
        rows=rows,
        window=cfg.rollout * run.model.segment_len,
        rank=ctx.rank,
        world_size=ctx.world_size,
        eval_rows=min(cfg.batch_size, 8),
        eval_tokens=cfg.eval_tokens,
        bytes_per_token=data.bytes_per_token["valid"],
    )


def train(
    run: RunConfig,
    *,
    out_dir: Path,
    resume: bool = False,
    progress: bool = True,
    data: PreparedData | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train ``run.model`` on ``run.data`` (or ``run.task``) as ``run.train`` says.

    Args:
        run: the validated run config (on resume, pass the saved one with overrides).
        out_dir: the run folder (created; must not hold another run unless ``resume``).
        resume: continue from the newest intact checkpoint in ``out_dir``.
        progress: show a progress bar.
        data: already prepared data (tests and benchmarks reuse it).
        stop_after: stop (with a checkpoint) after this many steps of this call, as if
            interrupted; used to test resume.

    Raises:
        ConfigError: bad config combination, an ``out_dir`` that holds another run (or is
            a file, or cannot be written), a finished run to resume, a checkpoint that
            does not fit the config.
        DataError: a corpus that cannot be read.
        NonFiniteError: a NaN/inf loss or gradient with ``on_nonfinite = "stop"``.
        TrainingInterrupted: SIGINT/SIGTERM (a checkpoint was written).
    """
    out_dir = Path(out_dir)
    cfg = run.train
    check_strategy(cfg.strategy, truncate=cfg.truncate)
    trainable.check_tokenizer_choice(run)
    folder, ctx, rows = start_run(
        out_dir,
        resume=resume,
        device=resolve_device(cfg.device),
        batch_size=cfg.batch_size,
        table="train",
    )

    # Data first: a bad corpus or task must fail before anything is written.
    tokenizer = (
        load_tokenizer(out_dir) if resume and (out_dir / "tokenizer.json").exists() else None
    )
    if tokenizer is None:
        tokenizer = trainable.init_tokenizer(run)
    if tokenizer is None and run.data.tokenizer == "hf":
        tokenizer = PretrainedTokenizer.from_pretrained(run.model.hf_path)  # type: ignore[attr-defined]
    if data is None:
        # BPE is trained on the corpus, even for a task that reads no background
        needs_corpus = run.task is None or run.task.needs_background or run.data.tokenizer == "bpe"
        texts = trainable.task_texts(run)
        data = (
            prepare_data(run.data, tokenizer=tokenizer, task_texts=texts)
            if needs_corpus
            else no_corpus()
        )
    run = trainable.fit_vocabulary(run, data.tokenizer)
    source = _build_source(run, data, rows=rows, ctx=ctx)

    seed_everything(cfg.seed)  # the same initial weights on every rank
    model: SegmentLM = from_config(run.model).to(ctx.device)
    trainable.select_trainable(model, cfg)  # before the optimizer: it takes the trained parameters
    # After select_trainable: a memory+lora run's LoRA tensors exist only from there on.
    warm = (
        trainable.warm_start(model, Path(cfg.init_from)) if cfg.init_from and not resume else None
    )
    base_model = trainable.base_model_identity(run.model, cfg)
    sharded = cfg.fsdp and ctx.active
    if sharded:
        distributed.shard_model(model)
    optimizer = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas)
    if cfg.compile:
        # The driver calls ``step`` (MRBP's no-grad pass ``advance``): both compiled in
        # place with static shapes; the first compile's time is logged on memtx.compile.
        compile_segment_steps(model)
    step_fn = RolloutStep(model, cfg, rows=rows, ctx=ctx)
    if ctx.active:
        # Each rank draws its own dropout masks; rank 0 keeps the single-process stream.
        torch.manual_seed(cfg.seed + 1_000_003 * ctx.rank)
    if not resume:
        folder.create(run.to_dict())
        if ctx.is_main:
            data.tokenizer.save(out_dir)
            if warm is not None:
                copied, fresh = warm
                said = f"; as initialised: {', '.join(fresh)}" if fresh else ""
                folder.log(
                    {
                        "step": 0,
                        "event": f"init_from {cfg.init_from}: {len(copied)} tensors copied{said}",
                    }
                )
    distributed.barrier(ctx)
    result = fit(
        step_fn,
        source,
        model=model,
        optimizer=optimizer,
        schedule=lr_schedule(cfg),
        config=LoopConfig.of(
            cfg, desc="train", resume_hint=f"memtx train --out {out_dir} --resume"
        ),
        run=folder,
        parts={"memory": step_fn},
        meta={"config": run.to_dict(), **({"base_model": base_model} if base_model else {})},
        ctx=ctx,
        sharded=sharded,
        progress=progress,
        stop_after=stop_after,
    )
    if result.complete and ctx.is_main:
        plot_losses(result.history, out_dir / "loss.png")
    return TrainResult(
        model=model,
        run_dir=out_dir,
        steps=result.steps,
        final_loss=result.last_loss,
        valid=result.valid,
        tokens_per_s=result.tokens_per_s,
        history=result.history,
    )


# --------------------------------------------------------------------------- runs


def load_saved_run(run_dir: Path, *, overrides: list[str] | None = None) -> RunConfig:
    """The config saved in a run folder, with ``--set`` overrides applied.

    Raises:
        ConfigError: no run in the folder, or a bad override.
    """
    if not (Path(run_dir) / "config.json").is_file():
        raise ConfigError(f"{run_dir} holds no run (no config.json); train one with memtx train")
    raw = read_run_config(run_dir, overrides=overrides or [], sections=SECTIONS)
    return RunConfig.from_dict(raw)


def load_trained(
    run_dir: Path, *, overrides: list[str] | None = None, device: torch.device | str | None = None
) -> tuple[RunConfig, SegmentLM]:
    """The run's config and its model with the newest intact checkpoint's weights.

    ``overrides`` may change model fields that do not change the weights (e.g.
    ``model.mem_len=0`` to evaluate Transformer-XL without its cache).
    """
    run = load_saved_run(run_dir, overrides=overrides)
    device = torch.device(device) if device is not None else resolve_device(run.train.device)
    checkpoint = load_latest(run_dir, map_location=device)
    if checkpoint is None:
        raise ConfigError(f"{run_dir} has no intact checkpoint to load")
    model = from_config(run.model).to(device)
    trainable.select_trainable(model, run.train)  # the same adapters; a partial state loads then
    trainable.check_base_model(checkpoint.meta.get("base_model"), run.model)
    load_weights(model, checkpoint.model)
    model.eval()
    return run, model


def evaluate_run(
    run_dir: Path,
    *,
    split: str = "valid",
    corpus: str | None = None,
    overrides: list[str] | None = None,
    max_tokens: int = 0,
    rows: int = 8,
    progress: bool = False,
    diagnostic: str = "none",
) -> EvalResult:
    """Evaluate a trained text run on a split of its corpus (or of ``corpus``).

    ``diagnostic`` (Memformer only, see :meth:`memtx.models.memformer.Memformer.set_diagnostic`)
    ablates part of the history at evaluation time, with the trained weights as they are.
    """
    if split not in ("valid", "test"):
        raise ConfigError(f"--split must be valid or test, got {split!r}")
    run, model = load_trained(run_dir, overrides=overrides)
    if diagnostic != "none":
        from memtx.models.memformer import Memformer

        if not isinstance(model, Memformer):
            raise ConfigError(f"--diagnostic is for memformer runs; {run_dir} is {run.model.name}")
        model.set_diagnostic(diagnostic)
    if run.task is not None:
        raise ConfigError(f"{run_dir} was trained on the task {run.task.name!r}: use --segments")
    if corpus is not None:
        run = dataclasses.replace(run, data=dataclasses.replace(run.data, corpus=corpus))
    data = prepare_data(run.data, tokenizer=load_tokenizer(Path(run_dir)))
    tokens = getattr(data, split)
    return evaluate_tokens(
        model,
        tokens,
        rows=rows,
        max_tokens=max_tokens,
        bytes_per_token=data.bytes_per_token[split],
        progress=progress,
    )


def evaluate_task_run(
    run_dir: Path,
    *,
    segments: int | None = None,
    samples: int = 500,
    seed: int = 12345,
    by_distance: bool = False,
) -> dict[str, float]:
    """Answer accuracy of a task run on held-out samples of ``segments`` segments.

    Evaluating at more segments than the run was trained on measures how the memory
    generalises to longer inputs (memory use stays that of one segment). A babilong run's
    background comes from held-out documents (the corpus's test split, else valid).
    ``by_distance`` (babilong runs) also splits the same samples by how many segments
    back the supporting fact ends (``exact_match_back_<d>``, ``samples_back_<d>``).
    """
    run, model = load_trained(run_dir)
    if run.task is None:
        raise ConfigError(f"{run_dir} was trained on text, not a task: drop --segments")
    segments = run.task.segments if segments is None else segments
    if segments < 1:
        raise ConfigError(f"--segments must be >= 1, got {segments}")
    noise = eval_noise = None
    tokenizer = None if run.data.tokenizer == "byte" else load_tokenizer(Path(run_dir))
    if run.task.needs_background:
        data = prepare_data(run.data, tokenizer=tokenizer)
        noise = data.train
        if run.task.name == "babilong":  # held-out documents: the test split (else valid)
            eval_noise = data.test if len(data.test) else data.valid
    source = TaskSource(
        run.task,
        segment_len=run.model.segment_len,
        rows=1,
        rank=0,
        seed=run.train.seed,
        noise=noise,
        eval_noise=eval_noise,
        tokenizer=tokenizer,
    )
    task = source.task(segments, held_out=True)
    if by_distance and run.task.name != "babilong":
        raise ConfigError(
            f"--by-distance is for babilong runs; {run_dir} was trained on {run.task.name!r}"
        )
    if by_distance:  # the same samples as evaluate_task's at its batch size
        metrics = evaluate_haystacks(
            model,
            task,
            samples=samples,
            device=model.device,
            seed=seed,
            batch_size=64,
            by_distance=True,
        )
    else:
        metrics = evaluate_task(model, task, samples=samples, device=model.device, seed=seed)
    return {"segments": float(segments), **metrics}
