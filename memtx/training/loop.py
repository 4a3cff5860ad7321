"""THE training loop: one ``fit`` for every kind of run.

A kind of run (language-model or task training, ELECTRA pre-training, classifier
fine-tuning) is a *step function* and a *source* over this loop. The step function
computes the loss of one batch and its gradients (a whole rollout of the driver, an
ELECTRA forward, a classifier forward) and returns a :class:`StepOutcome`; the loop owns
everything around it, once:

- the learning-rate schedule (the source may cap it: task curricula), gradient averaging
  across processes (torchrun), global-norm clipping, the optimizer step;
- the non-finite policy: a NaN/inf loss or gradient norm stops the run naming its step
  (``"stop"``) or skips the update (``"skip"``), before anything is updated;
- SIGINT/SIGTERM: the step in flight finishes, a checkpoint is written, and
  :class:`TrainingInterrupted` says how to resume; a second signal interrupts at once;
- checkpoints (model, optimizer, random generators, the source and every named part),
  exact resume, metrics lines, validation hooks, the progress bar and bf16 autocast on
  GPU.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

from memtx import distributed
from memtx.errors import MemtxError
from memtx.progress import progress_bar, progress_write
from memtx.training.optim import Schedule
from memtx.training.run import OptimizerPart, Part, RngPart, RunFolder

__all__ = [
    "BaseSource",
    "FitResult",
    "LoopConfig",
    "LoopSettings",
    "NonFiniteError",
    "Source",
    "StepFn",
    "StepOutcome",
    "TrainingInterrupted",
    "apply_update",
    "fit",
]


class NonFiniteError(MemtxError):
    """A NaN or inf loss or gradient with ``on_nonfinite = "stop"``."""


class TrainingInterrupted(MemtxError):
    """SIGINT or SIGTERM arrived; a checkpoint was written and the run can be resumed."""


@dataclass
class StepOutcome:
    """What a step function did with one batch (gradients are in ``.grad`` already).

    Attributes:
        loss: the scalar loss (detached or not; only its value is read).
        metrics: more figures to log, averaged across processes like the loss.
        tokens: tokens (or examples) this process consumed, for the rate.
        commit: called once the update was applied (e.g. carry the memory on, add the
            examples to a replay buffer).
        discard: called instead when a non-finite step is skipped.
    """

    loss: Tensor | float
    metrics: dict[str, float] = field(default_factory=dict)
    tokens: int = 0
    commit: Callable[[], None] | None = None
    discard: Callable[[], None] | None = None


class StepFn(Protocol):
    """Forward and backward of one batch; the loop does the rest."""

    def __call__(self, batch: Any, /, *, step: int) -> StepOutcome: ...


class Source(Protocol):
    """What feeds the loop: batches, validation and (for curricula) the schedule."""

    def next_batch(self) -> Any:
        """The next batch for the step function."""
        ...

    def validate(self, model: Any, *, device: torch.device) -> dict[str, float]:
        """Held-out figures of ``model``, the model being trained (empty: nothing to say)."""
        ...

    def learning_rate(self, scheduled: float) -> float:
        """The rate for this step, given the schedule's."""
        ...

    def after_step(self) -> str | None:
        """Bookkeeping after each step; a message is logged as an event."""
        ...

    def after_validation(self, metrics: dict[str, float]) -> str | None:
        """React to a periodic validation (a curriculum advances); a message is logged."""
        ...

    @property
    def finished(self) -> bool:
        """The source has nothing more to teach (a solved curriculum): stop early."""
        ...

    def state(self) -> tuple[dict[str, Any], dict[str, Tensor]]: ...

    def load_state(self, meta: dict[str, Any], tensors: dict[str, Tensor]) -> None: ...


class BaseSource:
    """A source's defaults: the schedule's rate, no curriculum, never finished early."""

    def learning_rate(self, scheduled: float) -> float:
        return scheduled

    def after_step(self) -> str | None:
        return None

    def after_validation(self, metrics: dict[str, float]) -> str | None:
        return None

    @property
    def finished(self) -> bool:
        return False


class LoopSettings(Protocol):
    """The fields of a run's ``[train]`` or ``[pretrain]`` table the loop reads."""

    @property
    def steps(self) -> int: ...
    @property
    def seed(self) -> int: ...
    @property
    def grad_clip(self) -> float: ...
    @property
    def on_nonfinite(self) -> Literal["stop", "skip"]: ...
    @property
    def log_every(self) -> int: ...
    @property
    def eval_every(self) -> int: ...
    @property
    def checkpoint_every(self) -> int: ...
    @property
    def keep_checkpoints(self) -> int: ...


@dataclass(frozen=True, kw_only=True)
class LoopConfig:
    """How the loop runs (taken from a run's ``[train]`` or ``[pretrain]`` table).

    Attributes:
        steps: the run's total optimizer steps.
        seed: the run's seed (the other processes' dropout streams derive from it).
        grad_clip: global gradient-norm clip (0: none, the norm is still checked).
        on_nonfinite: ``"stop"`` or ``"skip"`` a step with a NaN/inf loss or gradient.
        log_every: a metrics line every this many steps (and at the last).
        eval_every: validate every this many steps (0: only at the end).
        checkpoint_every: checkpoint every this many steps (0: only at the end).
        keep_checkpoints: most recent checkpoints kept.
        desc: the progress bar's label.
        resume_hint: the command that resumes the run (said when interrupted).
    """

    steps: int
    seed: int = 0
    grad_clip: float = 0.0
    on_nonfinite: Literal["stop", "skip"] = "stop"
    log_every: int = 10
    eval_every: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 1
    desc: str = "train"
    resume_hint: str = ""

    @classmethod
    def of(cls, settings: LoopSettings, *, desc: str, resume_hint: str) -> LoopConfig:
        """The loop's part of a run's ``[train]`` / ``[pretrain]`` table."""
        return cls(
            steps=settings.steps,
            seed=settings.seed,
            grad_clip=settings.grad_clip,
            on_nonfinite=settings.on_nonfinite,
            log_every=settings.log_every,
            eval_every=settings.eval_every,
            checkpoint_every=settings.checkpoint_every,
            keep_checkpoints=settings.keep_checkpoints,
            desc=desc,
            resume_hint=resume_hint,
        )


@dataclass
class FitResult:
    """What one call of :func:`fit` did.

    Attributes:
        start_step: the step it started from (> 0 when resumed).
        steps: the step it stopped after.
        complete: the run is finished (all steps, or the source finished).
        last_loss: the last accepted step's loss (NaN if none).
        valid: the final validation (empty unless complete).
        tokens_per_s: tokens consumed per second, all processes together.
        step_seconds: wall-clock seconds of each step of this call.
        history: every metrics line of the run (resumed ones included).
    """

    start_step: int
    steps: int
    complete: bool
    last_loss: float
    valid: dict[str, float]
    tokens_per_s: float
    step_seconds: list[float]
    history: list[dict[str, Any]]


@contextlib.contextmanager
def _stop_signals() -> Iterator[dict[str, int]]:
    """Turn SIGINT/SIGTERM into a flag the loop checks after each step.

    A kill mid-step would lose the step anyway; finishing it and checkpointing loses
    nothing. A second signal interrupts at once.
    """
    caught: dict[str, int] = {}
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return

    def handler(signum: int, frame: object) -> None:
        if caught:
            raise KeyboardInterrupt
        caught["signal"] = signum

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _full(value: Tensor) -> Tensor:
    """A DTensor (FSDP) as a plain tensor; anything else as it is."""
    full_tensor = getattr(value, "full_tensor", None)
    return full_tensor() if callable(full_tensor) else value


def apply_update(
    model: nn.Module, optimizer: torch.optim.Optimizer, *, grad_clip: float, loss: float = 0.0
) -> float:
    """Clip the gradients to ``grad_clip`` (0: no clip) and step; the global norm before.

    Nothing is updated when ``loss`` or the norm is not finite. The loop uses it; so does
    any measurement that must time exactly the loop's update.
    """
    norm = float(_full(nn.utils.clip_grad_norm_(model.parameters(), grad_clip or math.inf)))
    if math.isfinite(norm) and math.isfinite(loss):
        optimizer.step()
    return norm


def fit(
    step_fn: StepFn,
    source: Source,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    config: LoopConfig,
    run: RunFolder | None = None,
    parts: Mapping[str, Part] | None = None,
    meta: dict[str, Any] | None = None,
    ctx: distributed.DistContext | None = None,
    sharded: bool = False,
    progress: bool = False,
    stop_after: int | None = None,
) -> FitResult:
    """Train ``model`` with ``step_fn`` over batches of ``source`` until ``config.steps``.

    Args:
        step_fn: forward and backward of one batch.
        source: the batches (also validated, checkpointed, and asked for the rate).
        model: what the optimizer trains (its weights are checkpointed).
        optimizer: its optimizer; the loop sets each group's ``lr`` every step.
        schedule: the learning rate of each step.
        config: steps, clipping, non-finite policy, logging and checkpoint cadence.
        run: the run folder for metrics and checkpoints (None: neither, e.g. a short
            fine-tuning in memory). When it resumes, the newest intact checkpoint is
            loaded first and the run continues with exactly the losses an
            uninterrupted run would have had.
        parts: more named state to checkpoint (a replay buffer, a carried memory).
        meta: JSON saved with every checkpoint (e.g. the config).
        ctx: this process's place among torchrun's (default: one process).
        sharded: the model is FSDP-sharded (it reduces its gradients itself).
        progress: show a progress bar (main process).
        stop_after: stop, with a checkpoint, after this many steps of this call, as if
            interrupted (tests use it).

    Raises:
        NonFiniteError: a NaN/inf loss or gradient with ``on_nonfinite = "stop"``.
        TrainingInterrupted: SIGINT/SIGTERM (a checkpoint was written if ``run``).
        ConfigError: the run is already finished, or its checkpoint does not fit.
    """
    ctx = ctx or distributed.DistContext(0, 1, 0, _device_of(model))
    device = ctx.device
    # The random generators last: restoring the others must not disturb them.
    every = {"source": source, **(parts or {}), "rng": RngPart()}
    start_step = 0
    history: list[dict[str, Any]] = []
    if run is not None and run.resume:
        start_step, history = _resume(run, every, model, optimizer, ctx, sharded, config)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    )
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    end_step = config.steps if stop_after is None else min(config.steps, start_step + stop_after)

    def log(entry: dict[str, Any]) -> None:
        history.append(entry)
        if run is not None:
            run.log(entry)

    def event(step: int, message: str | None) -> None:
        if message:
            log({"step": step, "event": message})
            if progress and ctx.is_main:
                progress_write(f"step {step}: {message}")

    def validate(step: int) -> dict[str, float]:
        metrics = source.validate(model, device=device)
        if metrics:
            log({"step": step, "split": "valid", **metrics})
        model.train()
        return metrics

    def checkpoint(step: int) -> None:
        if run is None:
            return
        # Collectives first: every rank takes part (FSDP gathers, memories), rank 0 writes.
        weights, optimizer_state = distributed.full_training_state(
            model, optimizer, sharded=sharded
        )
        run.save(
            step=step,
            weights=weights,
            parts={"optimizer": OptimizerPart(optimizer_state), **every},
            meta={**(meta or {}), "world_size": ctx.world_size},
            keep=config.keep_checkpoints,
        )
        distributed.barrier(ctx)

    model.train()
    tokens, began, last_loss = 0, time.perf_counter(), math.nan
    step_seconds: list[float] = []
    final_step, valid = start_step, {}
    bar = progress_bar(
        total=config.steps,
        initial=start_step,
        desc=config.desc,
        unit="step",
        disable=not (progress and ctx.is_main),
    )
    try:
        with _stop_signals() as caught:
            for step in range(start_step, end_step):
                if source.finished:
                    break
                tick = time.perf_counter()
                lr = source.learning_rate(schedule(step))
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                with autocast:
                    outcome = step_fn(source.next_batch(), step=step)
                if not sharded:  # FSDP reduce-scatters the gradients itself
                    distributed.average_gradients(model, ctx)
                loss = distributed.mean(float(outcome.loss), ctx)
                metrics = {k: distributed.mean(float(v), ctx) for k, v in outcome.metrics.items()}
                norm = apply_update(model, optimizer, grad_clip=config.grad_clip, loss=loss)
                done = final_step = step + 1
                if not (math.isfinite(loss) and math.isfinite(norm)):
                    what = "loss" if not math.isfinite(loss) else "gradient norm"
                    message = f"non-finite {what} at step {done} (loss={loss}, grad_norm={norm})"
                    if config.on_nonfinite == "stop":
                        raise NonFiniteError(message + "; the last checkpoint is intact")
                    log({"step": done, "skipped": message})
                    optimizer.zero_grad(set_to_none=True)
                    if outcome.discard is not None:
                        outcome.discard()
                    bar.update(1)
                    continue
                if outcome.commit is not None:
                    outcome.commit()
                sync()
                step_seconds.append(time.perf_counter() - tick)
                tokens += outcome.tokens * ctx.world_size
                last_loss = loss
                rate = tokens / max(time.perf_counter() - began, 1e-9)
                if done % config.log_every == 0 or done == config.steps:
                    log(
                        {
                            "step": done,
                            "split": "train",
                            "loss": loss,
                            **metrics,
                            "lr": lr,
                            "grad_norm": norm,
                            "tokens_per_s": rate,
                            "step_seconds": step_seconds[-1],
                        }
                    )
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate:,.0f}")
                bar.update(1)
                event(done, source.after_step())
                if config.eval_every and done % config.eval_every == 0 and done != config.steps:
                    event(done, source.after_validation(validate(done)))
                periodic = config.checkpoint_every and done % config.checkpoint_every == 0
                if periodic or done == end_step or caught or source.finished:
                    checkpoint(done)
                if caught:
                    name = signal.Signals(caught["signal"]).name
                    written = "checkpoint written" if run is not None else "nothing saved"
                    hint = f"; continue with {config.resume_hint}" if config.resume_hint else ""
                    raise TrainingInterrupted(f"{name} at step {done}: {written}{hint}")
            complete = final_step == config.steps or source.finished
            if complete:
                valid = validate(final_step)
    finally:
        bar.close()
        if run is not None:
            run.close()
    return FitResult(
        start_step=start_step,
        steps=final_step,
        complete=complete,
        last_loss=last_loss,
        valid=valid,
        tokens_per_s=tokens / max(time.perf_counter() - began, 1e-9),
        step_seconds=step_seconds,
        history=history,
    )


def _device_of(model: nn.Module) -> torch.device:
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def _resume(
    run: RunFolder,
    parts: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ctx: distributed.DistContext,
    sharded: bool,
    config: LoopConfig,
) -> tuple[int, list[dict[str, Any]]]:
    """Load the newest intact checkpoint into everything; (its step, the metrics so far)."""
    from memtx.errors import ConfigError
    from memtx.training.run import load_weights

    checkpoint = run.latest(device=ctx.device)
    if checkpoint is None:
        return 0, run.history(until_step=0) if ctx.is_main else []
    finished = f"{run.path} is already finished (step {checkpoint.step} of {config.steps}"
    if checkpoint.step >= config.steps:
        raise ConfigError(
            f"{finished}); raise the step count (e.g. --set train.steps=N) to continue it"
        )
    if not sharded:
        load_weights(model, checkpoint.model)  # a clear error if the sizes changed
    optimizer_part = OptimizerPart({})
    RunFolder.restore(checkpoint, {"optimizer": optimizer_part})
    distributed.load_full_training_state(
        model, optimizer, checkpoint.model, optimizer_part.state_dict, sharded=sharded
    )
    restored = dict(parts)
    if not ctx.is_main:
        # The other ranks keep their own dropout streams, advanced past the resumed steps.
        restored.pop("rng")
        torch.manual_seed(config.seed + 1_000_003 * ctx.rank + checkpoint.step)
    RunFolder.restore(checkpoint, restored)
    if parts["source"].finished:
        raise ConfigError(f"{finished}: its source has finished, e.g. a solved curriculum)")
    return checkpoint.step, run.history(until_step=checkpoint.step) if ctx.is_main else []
