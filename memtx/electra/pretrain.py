"""ELECTRA pre-training with TMR's replay buffer: a recipe over the one loop.

A small masked-LM generator fills masked positions by sampling; the discriminator learns
replaced-token detection (RTD) on the result. Both share the token embedding; the loss
is ``L_mlm + discriminator_weight * L_rtd`` with weight 50, as in ELECTRA. With replay
(Transformer with Memory Replay, :mod:`memtx.electra.replay`) every generated example is
stored in a prioritized buffer and each discriminator batch is ``B`` fresh examples plus
``replay_count(B, ratio)`` replayed ones: the generator makes exactly the same number of
examples, with the same batch size and steps, with or without replay.

:class:`ElectraStep` is the step function over :func:`memtx.training.fit`, which gives
pre-training resume, SIGINT/SIGTERM checkpoints, the non-finite guard, multi-process
training and autocast. Priorities for replay come from the discriminator's per-example
loss and the closed-form norm of dLoss/dlogits of the very forward pass that trains on
the batch (:func:`memtx.electra.replay.rtd_example_stats`); the replayed examples'
losses are scaled by their importance weights. The buffer learns of a step only once
the loop has accepted its update.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from memtx import distributed
from memtx.checkpoint import atomic_write_text, load_latest
from memtx.data import PreparedData, load_tokenizer, prepare_data
from memtx.electra.config import SECTIONS, ElectraRun, load_electra_run
from memtx.electra.data import WindowSampler
from memtx.electra.evaluate import evaluate_rtd
from memtx.electra.model import ElectraModel
from memtx.electra.replay import ReplayBuffer, ReplayConfig, replay_count
from memtx.electra.step import ElectraStep, StepStats, electra_step
from memtx.errors import ConfigError
from memtx.training import (
    BaseSource,
    LoopConfig,
    build_optimizer,
    fit,
    load_weights,
    read_run_config,
    resolve_device,
    seed_everything,
    start_run,
    warmup_cosine,
)

__all__ = [
    "ElectraStep",
    "PretrainResult",
    "PretrainSource",
    "StepStats",
    "electra_step",
    "load_pretrained",
    "pretrain",
    "pretrain_from_config",
]


# --------------------------------------------------------------------------- the run


class PretrainSource(BaseSource):
    """Pre-training's loop source: fresh windows of the train split, RTD on valid.

    With several processes every one draws the same global batch from the same
    generator and keeps its own rows, so the sampler's state is the same everywhere and
    a checkpoint of it resumes exactly.
    """

    def __init__(
        self, data: PreparedData, run: ElectraRun, *, ctx: distributed.DistContext
    ) -> None:
        cfg = run.pretrain
        self.sampler = WindowSampler(
            data.train, seq_len=run.electra.seq_len, batch_size=cfg.batch_size, seed=cfg.seed
        )
        self.rows = cfg.batch_size // ctx.world_size
        self.rank = ctx.rank
        self.valid_tokens = data.valid
        self.eval_examples = cfg.eval_examples
        self.eval_seed = cfg.eval_seed
        self.seq_len = run.electra.seq_len

    def next_batch(self) -> Tensor:
        ids = self.sampler.next_batch()  # (B, L), the global batch
        return ids[self.rank * self.rows : (self.rank + 1) * self.rows]

    def validate(self, model: nn.Module, *, device: torch.device) -> dict[str, float]:
        if not self.eval_examples or len(self.valid_tokens) < self.seq_len:
            return {}
        assert isinstance(model, ElectraModel)
        return evaluate_rtd(
            model, self.valid_tokens, examples=self.eval_examples, seed=self.eval_seed
        )

    def state(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        return self.sampler.state()

    def load_state(self, meta: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        self.sampler.load_state(meta, tensors)


@dataclass
class PretrainResult:
    """What a pre-training run reports.

    Attributes:
        run_dir: the run folder.
        steps: optimizer steps done.
        generated_examples: fresh examples the generator made (``steps * batch_size``).
        replayed_examples: examples the discriminator saw again from the buffer.
        final_rtd_loss: mean discriminator loss on the fresh rows over the last 10 steps.
        valid: :func:`evaluate_rtd` on the valid split (empty if the split is too short).
        step_seconds_median: median wall-clock seconds per step (after 5 warm-up steps).
        replay_seconds_per_step: mean seconds per step spent in the buffer (sample,
            add, update), included in the step time.
        seconds: wall-clock seconds of the loop.
        history: the metrics lines written to ``metrics.jsonl``.
    """

    run_dir: Path
    steps: int
    generated_examples: int
    replayed_examples: int
    final_rtd_loss: float
    valid: dict[str, float]
    step_seconds_median: float
    replay_seconds_per_step: float
    seconds: float
    history: list[dict[str, Any]]

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary (no history)."""
        out = dataclasses.asdict(self)
        out.pop("history")
        out["run_dir"] = str(self.run_dir)
        return out


def _beta_at(step: int, steps: int, cfg: ReplayConfig) -> float:
    return cfg.beta + (cfg.beta_final - cfg.beta) * step / max(steps - 1, 1)


def pretrain(
    run: ElectraRun,
    *,
    out_dir: Path,
    resume: bool = False,
    progress: bool = False,
    data: PreparedData | None = None,
    stop_after: int | None = None,
) -> PretrainResult:
    """Pre-train ELECTRA (with replay when ``run.replay.enabled``) into ``out_dir``.

    The folder gets ``config.json``, ``tokenizer.json``, ``metrics.jsonl``, checkpoints
    (weights, optimizer, RNG, the replay buffer, the corpus sampler) and ``result.json``.
    Under torchrun, ``pretrain.batch_size`` is the global batch and gradients are
    averaged; replay then needs one process (each would hold a buffer of its own).

    Args:
        run: the validated run config.
        out_dir: the run folder (must not hold another run unless ``resume``).
        resume: continue from the newest intact checkpoint in ``out_dir``.
        progress: show a progress bar.
        data: prepared data (:func:`memtx.data.prepare_data`) to reuse.
        stop_after: stop (with a checkpoint) after this many steps of this call.

    Raises:
        ConfigError: an ``out_dir`` that holds another run, or bad combinations.
        DataError: a corpus that cannot be read or is too short.
        NonFiniteError: a NaN/inf loss or gradient with ``on_nonfinite = "stop"``.
        TrainingInterrupted: SIGINT/SIGTERM (a checkpoint was written).
    """
    out_dir = Path(out_dir)
    cfg = run.pretrain
    folder, ctx, _ = start_run(
        out_dir,
        resume=resume,
        device=resolve_device(cfg.device),
        batch_size=cfg.batch_size,
        table="pretrain",
    )
    if run.replay.enabled and ctx.active:
        raise ConfigError(
            "replay needs one process (each would hold a buffer of its own): run without "
            "torchrun, or --set replay.enabled=false"
        )
    if data is None:
        tokenizer = load_tokenizer(out_dir) if resume else None
        data = prepare_data(run.data, tokenizer=tokenizer)
    if run.electra.vocab_size != data.tokenizer.vocab_size:
        run = dataclasses.replace(
            run, electra=dataclasses.replace(run.electra, vocab_size=data.tokenizer.vocab_size)
        )
    source = PretrainSource(data, run, ctx=ctx)
    seed_everything(cfg.seed)
    model = ElectraModel(run.electra).to(ctx.device)
    optimizer = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas)
    buffer = (
        ReplayBuffer(run.replay, example_len=run.electra.seq_len) if run.replay.enabled else None
    )
    step_fn = ElectraStep(
        model,
        buffer=buffer,
        replayed_rows=replay_count(cfg.batch_size, run.replay.ratio) if buffer is not None else 0,
        beta=lambda step: _beta_at(step, cfg.steps, run.replay),
    )
    if ctx.active:
        torch.manual_seed(cfg.seed + 1_000_003 * ctx.rank)
    if not resume:
        folder.create(run.to_dict())
        if ctx.is_main:
            data.tokenizer.save(out_dir)
    distributed.barrier(ctx)
    began = time.perf_counter()
    result = fit(
        step_fn,
        source,
        model=model,
        optimizer=optimizer,
        schedule=warmup_cosine(cfg),
        config=LoopConfig.of(
            cfg, desc="pretrain", resume_hint=f"memtx pretrain --out {out_dir} --resume"
        ),
        run=folder,
        parts={} if buffer is None else {"replay": buffer},
        meta={"config": run.to_dict()},
        ctx=ctx,
        progress=progress,
        stop_after=stop_after,
    )
    timed = result.step_seconds[5:] if len(result.step_seconds) > 5 else result.step_seconds
    summary = PretrainResult(
        run_dir=out_dir,
        steps=result.steps,
        generated_examples=(result.steps - result.start_step) * cfg.batch_size,
        replayed_examples=step_fn.replayed,
        final_rtd_loss=statistics.fmean(step_fn.recent_rtd) if step_fn.recent_rtd else math.nan,
        valid=result.valid,
        step_seconds_median=statistics.median(timed) if timed else math.nan,
        replay_seconds_per_step=step_fn.replay_seconds / max(len(result.step_seconds), 1),
        seconds=time.perf_counter() - began,
        history=result.history,
    )
    if result.complete and ctx.is_main:
        atomic_write_text(out_dir / "result.json", json.dumps(summary.summary(), indent=1) + "\n")
    return summary


def pretrain_from_config(
    config_path: Path,
    *,
    overrides: list[str],
    out_dir: Path,
    progress: bool,
    resume: bool = False,
) -> dict[str, Any]:
    """``memtx pretrain``: read the preset (or, with ``resume``, the run's saved config),
    apply ``--set`` overrides, pre-train, summarize.

    Returns:
        A JSON-able summary: run folder, steps, generated and replayed examples, final
        RTD loss, valid RTD figures, seconds per step.

    Raises:
        ConfigError, DataError: bad config, existing run folder, unreadable corpus.
    """
    if resume:
        run = ElectraRun.from_dict(read_run_config(out_dir, overrides=overrides, sections=SECTIONS))
    else:
        run = load_electra_run(config_path, overrides=overrides)
    return pretrain(run, out_dir=out_dir, progress=progress, resume=resume).summary()


def load_pretrained(
    run_dir: Path, *, device: torch.device | str = "cpu"
) -> tuple[ElectraRun, ElectraModel]:
    """A pre-training run's config and its model with the newest intact checkpoint's weights.

    Raises:
        ConfigError: no run or no intact checkpoint in ``run_dir``, or weights that do not
            fit the saved config.
    """
    if not (Path(run_dir) / "config.json").is_file():
        raise ConfigError(f"{run_dir} holds no pre-training run (no config.json)")
    run = ElectraRun.from_dict(read_run_config(run_dir))
    checkpoint = load_latest(Path(run_dir), map_location=device)
    if checkpoint is None:
        raise ConfigError(f"{run_dir} has no intact checkpoint to load")
    model = ElectraModel(run.electra).to(device)
    load_weights(model, checkpoint.model)
    return run, model
