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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memtx import distributed
from memtx.checkpoint import atomic_write_text, load_latest
from memtx.data import PreparedData, load_tokenizer, prepare_data
from memtx.electra.config import SECTIONS, ElectraRun, load_electra_run
from memtx.electra.data import WindowSampler, evenly_spaced_windows
from memtx.electra.model import ElectraModel
from memtx.electra.replay import ReplayBuffer, ReplayConfig, replay_count, rtd_example_stats
from memtx.errors import ConfigError
from memtx.training import (
    LoopConfig,
    RunFolder,
    StepOutcome,
    apply_update,
    build_optimizer,
    cosine_schedule,
    fit,
    load_weights,
    read_run_config,
    resolve_device,
    seed_everything,
)

__all__ = [
    "ElectraStep",
    "PretrainResult",
    "PretrainSource",
    "StepStats",
    "electra_step",
    "evaluate_rtd",
    "load_pretrained",
    "measure_replay_overhead",
    "pretrain",
    "pretrain_from_config",
]


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_rtd(
    model: ElectraModel,
    tokens: np.ndarray,
    *,
    examples: int,
    seed: int,
    batch_size: int = 64,
) -> dict[str, float]:
    """Replaced-token detection on fixed held-out windows, corrupted by the model's generator.

    Returns:
        ``rtd_accuracy`` (all tokens), ``rtd_replaced_recall`` (replaced tokens found),
        ``rtd_loss`` (mean BCE), ``replaced_fraction`` and ``generator_loss``.
    """
    cfg = model.config
    was_training = model.training
    model.eval()
    device = model.device
    windows = evenly_spaced_windows(tokens, seq_len=cfg.seq_len, count=examples)
    rng = torch.Generator(device=device).manual_seed(seed)
    correct = total = found = replaced = 0
    loss_sum = gen_sum = 0.0
    for start in range(0, len(windows), batch_size):
        ids = windows[start : start + batch_size].to(device)
        corruption = model.corrupt(ids, generator=rng)
        logits = model.discriminator(corruption.inputs)  # (b, L)
        labels = corruption.labels
        predicted = logits > 0
        correct += int((predicted == labels).sum())
        total += labels.numel()
        found += int((predicted & labels).sum())
        replaced += int(labels.sum())
        loss_sum += float(
            F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="sum")
        )
        gen_sum += float(corruption.generator_loss) * ids.shape[0]
    model.train(was_training)
    return {
        "rtd_accuracy": correct / total,
        "rtd_replaced_recall": found / max(replaced, 1),
        "rtd_loss": loss_sum / total,
        "replaced_fraction": replaced / total,
        "generator_loss": gen_sum / len(windows),
    }


# --------------------------------------------------------------------------- the step


class StepStats(NamedTuple):
    """What one :func:`electra_step` did (figures on the fresh rows unless said otherwise).

    Attributes:
        generator_loss: the generator's MLM loss.
        rtd_loss: mean discriminator BCE on the fresh examples (unweighted).
        rtd_accuracy: token accuracy of the discriminator on the fresh examples.
        replaced_fraction: share of fresh tokens that the generator really replaced.
        replayed: replayed examples in the discriminator batch.
        replay_seconds: wall-clock seconds spent in the buffer (sample, add, update).
    """

    generator_loss: float
    rtd_loss: float
    rtd_accuracy: float
    replaced_fraction: float
    replayed: int
    replay_seconds: float

    def to_dict(self) -> dict[str, float | int]:
        return self._asdict()


class ElectraStep:
    """The step function of ELECTRA pre-training over :func:`memtx.training.fit`.

    Corrupt the fresh ``ids`` [B, L] with the generator; if the buffer holds at least
    ``min_fill`` examples, append ``replayed_rows`` replayed ones; one discriminator
    forward scores all rows; ``loss = L_mlm + weight * L_rtd`` with replayed rows scaled
    by their importance weights; one backward. Once the loop accepts the update, the
    replayed rows' priorities are refreshed and the fresh rows added to the buffer, both
    from that same forward pass. It also keeps the run's totals for its result.
    """

    def __init__(
        self,
        model: ElectraModel,
        *,
        buffer: ReplayBuffer | None,
        replayed_rows: int,
        beta: Callable[[int], float],
    ) -> None:
        self.model = model
        self.buffer = buffer
        self.replayed_rows = replayed_rows
        self.beta = beta
        self.replayed = 0  # replayed examples over the accepted steps
        self.replay_seconds = 0.0  # time spent in the buffer over the accepted steps
        self.recent_rtd: list[float] = []  # the last 10 accepted steps' RTD loss

    def __call__(self, ids: Tensor, *, step: int) -> StepOutcome:
        model, buffer = self.model, self.buffer
        ids = ids.to(model.device)
        corruption = model.corrupt(ids)
        inputs, labels = corruption.inputs, corruption.labels
        fresh = ids.shape[0]
        seconds = 0.0
        sample = None
        if buffer is not None and self.replayed_rows and len(buffer) >= buffer.config.min_fill:
            mark = time.perf_counter()
            sample = buffer.sample(self.replayed_rows, beta=self.beta(step), device=ids.device)
            seconds += time.perf_counter() - mark
            inputs = torch.cat([inputs, sample.ids])  # (B + R, L)
            labels = torch.cat([labels, sample.labels])
        logits = model.discriminator(inputs)  # (B + R, L)
        losses, grad_norms = rtd_example_stats(logits, labels, torch.ones_like(labels))  # (B + R,)
        if sample is not None:
            # Importance weights undo the bias of prioritized sampling.
            weights = torch.cat([losses.new_ones(fresh), sample.weights.to(losses.dtype)])
            rtd_loss = (weights * losses).sum() / losses.shape[0]
        else:
            rtd_loss = losses.mean()
        loss = corruption.generator_loss + model.config.discriminator_weight * rtd_loss
        loss.backward()
        detached = losses.detach()
        with torch.no_grad():
            accuracy = ((logits[:fresh] > 0) == labels[:fresh]).float().mean()
        replayed = 0 if sample is None else sample.indices.numel()
        metrics = {
            "generator_loss": float(corruption.generator_loss.detach()),
            "rtd_loss": float(detached[:fresh].mean()),
            "rtd_accuracy": float(accuracy),
            "replaced_fraction": float(labels[:fresh].float().mean()),
            "replayed": float(replayed),
            "replay_seconds": seconds,
        }

        def commit() -> None:
            if buffer is not None:
                mark = time.perf_counter()
                # Priorities from this step's own forward pass: no extra pass.
                if sample is not None:
                    buffer.update(
                        sample.indices, losses=detached[fresh:], grad_norms=grad_norms[fresh:]
                    )
                buffer.add(
                    ids=corruption.inputs,
                    labels=corruption.labels,
                    losses=detached[:fresh],
                    grad_norms=grad_norms[:fresh],
                )
                metrics["replay_seconds"] += time.perf_counter() - mark
            self.replayed += replayed
            self.replay_seconds += metrics["replay_seconds"]
            self.recent_rtd = [*self.recent_rtd[-9:], metrics["rtd_loss"]]

        return StepOutcome(loss=loss.detach(), metrics=metrics, tokens=fresh, commit=commit)


def electra_step(
    model: ElectraModel,
    optimizer: torch.optim.Optimizer,
    ids: Tensor,
    *,
    buffer: ReplayBuffer | None,
    replayed_rows: int,
    beta: float,
    grad_clip: float,
) -> StepStats:
    """One pre-training step on fresh ``ids`` [B, L] outside the loop (its update included).

    What :class:`ElectraStep` and the loop's :func:`~memtx.training.apply_update` do for
    one batch; the replay overhead measurement times exactly this.
    """
    optimizer.zero_grad(set_to_none=True)
    outcome = ElectraStep(model, buffer=buffer, replayed_rows=replayed_rows, beta=lambda _: beta)(
        ids, step=0
    )
    apply_update(model, optimizer, grad_clip=grad_clip, loss=float(outcome.loss))
    assert outcome.commit is not None
    outcome.commit()
    metrics = outcome.metrics
    return StepStats(
        generator_loss=metrics["generator_loss"],
        rtd_loss=metrics["rtd_loss"],
        rtd_accuracy=metrics["rtd_accuracy"],
        replaced_fraction=metrics["replaced_fraction"],
        replayed=int(metrics["replayed"]),
        replay_seconds=metrics["replay_seconds"],
    )


# --------------------------------------------------------------------------- the run


class PretrainSource:
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

    def learning_rate(self, scheduled: float) -> float:
        return scheduled

    def after_step(self) -> str | None:
        return None

    def after_validation(self, metrics: dict[str, float]) -> str | None:
        return None

    @property
    def finished(self) -> bool:
        return False

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
    device = resolve_device(cfg.device)
    folder = RunFolder(out_dir, resume=resume)
    ctx = distributed.setup(device)
    folder.main = ctx.is_main
    if cfg.batch_size % ctx.world_size:
        raise ConfigError(
            f"pretrain.batch_size ({cfg.batch_size}) is the global batch and must be divisible "
            f"by the number of processes ({ctx.world_size})"
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
        schedule=cosine_schedule(
            lr=cfg.lr, steps=cfg.steps, warmup_steps=cfg.warmup_steps, min_lr_ratio=cfg.min_lr_ratio
        ),
        config=LoopConfig(
            steps=cfg.steps,
            seed=cfg.seed,
            grad_clip=cfg.grad_clip,
            on_nonfinite=cfg.on_nonfinite,
            log_every=cfg.log_every,
            checkpoint_every=cfg.checkpoint_every,
            keep_checkpoints=cfg.keep_checkpoints,
            desc="pretrain",
            resume_hint=f"memtx pretrain --out {out_dir} --resume",
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


def measure_replay_overhead(
    run: ElectraRun, *, data: PreparedData, rounds: int = 30, warmup: int = 4
) -> dict[str, float]:
    """Paired timing of a pre-training step without and with replay, on the same batches.

    Two identical models (same seed) train side by side in this process, alternating one
    step each on the same fresh batch, so a load that drifts over time (a shared machine)
    hits both alike. Each step is :func:`electra_step`: the loop's step function and its
    update. The buffer is filled to ``min_fill`` first (those steps untimed).

    Returns:
        ``baseline_ms`` and ``replay_ms`` (median step), ``overhead_pct`` (their ratio - 1,
        in %), ``bookkeeping_ms`` (median time in the buffer per replay step) and
        ``bookkeeping_pct`` (of the baseline step).
    """
    cfg = run.pretrain
    device = resolve_device(cfg.device)
    electra = dataclasses.replace(run.electra, vocab_size=data.tokenizer.vocab_size)
    sampler = WindowSampler(
        data.train, seq_len=electra.seq_len, batch_size=cfg.batch_size, seed=cfg.seed
    )
    models, optimizers = [], []
    for _ in range(2):
        seed_everything(cfg.seed)
        model = ElectraModel(electra).to(device)
        models.append(model)
        optimizers.append(
            build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas)
        )
    buffer = ReplayBuffer(
        dataclasses.replace(run.replay, enabled=True), example_len=electra.seq_len
    )
    rows = replay_count(cfg.batch_size, run.replay.ratio)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fill = math.ceil(run.replay.min_fill / cfg.batch_size)
    timings: dict[str, list[float]] = {"baseline": [], "replay": [], "bookkeeping": []}
    for index in range(max(warmup, fill) + rounds):
        ids = sampler.next_batch().to(device)
        order = ("baseline", "replay") if index % 2 == 0 else ("replay", "baseline")
        for name in order:
            replaying = name == "replay"
            sync()
            tick = time.perf_counter()
            stats = electra_step(
                models[replaying],
                optimizers[replaying],
                ids,
                buffer=buffer if replaying else None,
                replayed_rows=rows if replaying else 0,
                beta=run.replay.beta,
                grad_clip=cfg.grad_clip,
            )
            sync()
            if index >= max(warmup, fill):
                timings[name].append(time.perf_counter() - tick)
                if replaying:
                    timings["bookkeeping"].append(stats.replay_seconds)
    base = statistics.median(timings["baseline"])
    replay = statistics.median(timings["replay"])
    book = statistics.median(timings["bookkeeping"])
    return {
        "baseline_ms": 1000 * base,
        "replay_ms": 1000 * replay,
        "overhead_pct": 100 * (replay / base - 1),
        "bookkeeping_ms": 1000 * book,
        "bookkeeping_pct": 100 * book / base,
        "replayed_rows": float(rows),
        "rounds": float(rounds),
    }


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
