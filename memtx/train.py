"""The training loop: one plain loop for every model and every task.

AdamW with warmup + cosine, gradient clipping, seeds, periodic validation, JSONL
metrics, a progress bar, atomic checkpoints and exact resume. The segment loop and the
gradient strategy belong to :mod:`memtx.recurrence`; this file only feeds it rollouts.

A run folder holds ``config.json`` (the resolved config), ``tokenizer.json``,
``metrics.jsonl``, ``checkpoints/`` and, at the end, ``loss.png``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from memtx import distributed
from memtx.checkpoint import (
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
from memtx.config import RunConfig, TrainConfig
from memtx.data import (
    ByteTokenizer,
    Tokenizer,
    build_tokenizer,
    encode_documents,
    load_splits,
    load_tokenizer,
)
from memtx.errors import ConfigError, MemtxError
from memtx.evaluate import EvalResult, evaluate_tokens
from memtx.models import SegmentLM, from_config
from memtx.models.protocol import memory_from_state, memory_state, select_rows
from memtx.recurrence import check_strategy, rollout
from memtx.sources import TaskSource, TextSource

__all__ = [
    "PreparedData",
    "TrainResult",
    "NonFiniteError",
    "TrainingInterrupted",
    "build_optimizer",
    "lr_at",
    "prepare_data",
    "resolve_device",
    "train",
]


class NonFiniteError(MemtxError):
    """A NaN or inf loss or gradient with ``train.on_nonfinite = "stop"``."""


class TrainingInterrupted(MemtxError):
    """SIGINT or SIGTERM arrived; a checkpoint was written and the run can be resumed."""


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


# --------------------------------------------------------------------------- data


@dataclass
class PreparedData:
    """Tokenized splits of a corpus, ready for the loop and evaluation."""

    tokenizer: Tokenizer
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    bytes_per_token: dict[str, float]


def prepare_data(run: RunConfig, *, tokenizer: Tokenizer | None = None) -> PreparedData:
    """Load the corpus, split it by whole documents, and tokenize each split.

    A BPE tokenizer is trained on the training split unless ``tokenizer`` is given
    (a resumed or evaluated run passes the one saved with it).
    """
    cfg = run.data
    splits = load_splits(
        cfg.corpus,
        cache_dir=Path(cfg.cache_dir) if cfg.cache_dir else None,
        valid_fraction=cfg.valid_fraction,
        test_fraction=cfg.test_fraction,
        seed=cfg.split_seed,
    )
    if tokenizer is None:
        if cfg.tokenizer == "byte":
            tokenizer = ByteTokenizer()
        else:
            tokenizer = build_tokenizer(
                "bpe", train_texts=(d.data for d in splits.train), vocab_size=cfg.bpe_vocab_size
            )
    arrays: dict[str, np.ndarray] = {}
    ratios: dict[str, float] = {}
    for name in ("train", "valid", "test"):
        docs = getattr(splits, name)
        arrays[name] = encode_documents(docs, tokenizer)
        n_bytes = sum(len(d.data) for d in docs) + 2 * max(len(docs) - 1, 0)
        ratios[name] = n_bytes / max(len(arrays[name]), 1)
    return PreparedData(tokenizer, arrays["train"], arrays["valid"], arrays["test"], ratios)


# --------------------------------------------------------------------------- pieces


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {name!r} but no CUDA GPU is available here")
    return device


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay only on the weights of linear layers.

    Norms, biases, embeddings and memory parameters (Memformer's slot biases, RMT's
    initial memory) are not decayed: shrinking them changes what the memory holds.
    """
    linear = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (decay if id(param) in linear else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to ``lr`` then cosine decay to ``lr * min_lr_ratio`` at ``steps``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(cfg.steps - cfg.warmup_steps, 1)
    progress = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _lm_loss(count: int) -> Callable[[Tensor, Tensor], Tensor]:
    """Per-segment loss whose sum over the rollout is the mean cross-entropy per token."""

    def loss_fn(logits: Tensor, targets: Tensor) -> Tensor:
        flat = logits.float().flatten(0, 1)
        return F.cross_entropy(flat, targets.flatten(), reduction="sum", ignore_index=-100) / count

    return loss_fn


def _full(value: Tensor) -> Tensor:
    """A DTensor (FSDP) as a plain tensor; anything else as it is."""
    full_tensor = getattr(value, "full_tensor", None)
    return full_tensor() if callable(full_tensor) else value


# --------------------------------------------------------------------------- the loop


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


def _write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=1) + "\n")


def _prepare_run_dir(out_dir: Path, run: RunConfig, *, resume: bool) -> RunConfig:
    """Check the run folder and, on resume, return the config saved in it."""
    saved = out_dir / "config.json"
    if resume:
        if not saved.is_file():
            raise ConfigError(f"--resume: {out_dir} holds no run (no config.json)")
        return run
    if saved.exists() or checkpoint_dirs(out_dir):
        raise ConfigError(
            f"{out_dir} already holds a run; pass --resume to continue it or choose another --out"
        )
    return run


def _build_source(
    run: RunConfig, data: PreparedData, *, rows: int, ctx: distributed.DistContext
) -> TextSource | TaskSource:
    cfg = run.train
    if run.task is not None:
        noise = data.train if run.task.name == "facts" else None
        return TaskSource(
            run.task,
            segment_len=run.model.segment_len,
            rows=rows,
            rank=ctx.rank,
            seed=cfg.seed,
            noise=noise,
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
        ConfigError: bad config combination, or an ``out_dir`` that holds another run.
        DataError: a corpus that cannot be read.
        NonFiniteError: a NaN/inf loss or gradient with ``on_nonfinite = "stop"``.
        TrainingInterrupted: SIGINT/SIGTERM (a checkpoint was written).
    """
    out_dir = Path(out_dir)
    cfg = run.train
    check_strategy(cfg.strategy, truncate=cfg.truncate)
    if run.task is not None and run.data.tokenizer != "byte":
        raise ConfigError("synthetic tasks are byte-level: data.tokenizer must be 'byte'")
    device = resolve_device(cfg.device)
    _prepare_run_dir(out_dir, run, resume=resume)
    ctx = distributed.setup(device)
    device = ctx.device
    if cfg.batch_size % ctx.world_size:
        raise ConfigError(
            f"train.batch_size ({cfg.batch_size}) is the global batch and must be divisible by "
            f"the number of processes ({ctx.world_size})"
        )
    rows = cfg.batch_size // ctx.world_size  # this rank's streams

    # Data first: a bad corpus or task must fail before anything is written.
    tokenizer = (
        load_tokenizer(out_dir) if resume and (out_dir / "tokenizer.json").exists() else None
    )
    if data is None:
        needs_corpus = run.task is None or run.task.name == "facts"
        data = prepare_data(run, tokenizer=tokenizer) if needs_corpus else _no_corpus()
    if run.model.vocab_size != data.tokenizer.vocab_size:
        run = dataclasses.replace(
            run, model=dataclasses.replace(run.model, vocab_size=data.tokenizer.vocab_size)
        )
    source = _build_source(run, data, rows=rows, ctx=ctx)

    seed_everything(cfg.seed)  # the same initial weights on every rank
    model: SegmentLM = from_config(run.model).to(device)
    sharded = cfg.fsdp and ctx.active
    if sharded:
        distributed.shard_model(model)
    optimizer = build_optimizer(model, cfg)
    if cfg.compile:
        # The driver calls ``step``; compiling that bound method covers every model.
        model.step = torch.compile(model.step)  # type: ignore[method-assign]
    memory = model.init_memory(rows, device=device)
    if ctx.active:
        # Each rank draws its own dropout masks; rank 0 keeps the single-process stream.
        torch.manual_seed(cfg.seed + 1_000_003 * ctx.rank)
    start_step = 0
    history: list[dict[str, Any]] = []

    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    distributed.barrier(ctx)
    if resume:
        checkpoint = load_latest(out_dir, map_location=device)
        if checkpoint is not None:
            distributed.load_full_training_state(
                model,
                optimizer,
                checkpoint.model,
                join_optimizer_state(checkpoint.state, checkpoint.meta["optimizer"]),
                sharded=sharded,
            )
            source.load_state(checkpoint.meta["source"], checkpoint.state)
            start_step = checkpoint.step
            saved_rows = int(checkpoint.meta.get("memory_rows", 0))
            if saved_rows == cfg.batch_size:  # the global memory: take this rank's rows
                full = memory_from_state(
                    model.init_memory(saved_rows, device=device), checkpoint.state
                )
                memory = select_rows(full, ctx.rank * rows, (ctx.rank + 1) * rows)
            if ctx.is_main:
                set_rng_state(
                    {k: v.cpu() for k, v in checkpoint.state.items()}, checkpoint.meta["rng"]
                )
            else:
                torch.manual_seed(cfg.seed + 1_000_003 * ctx.rank + start_step)
    elif ctx.is_main:
        _write_json(out_dir / "config.json", run.to_dict())
        data.tokenizer.save(out_dir)
    metrics_path = out_dir / "metrics.jsonl"
    if resume and metrics_path.exists() and ctx.is_main:
        history = _metrics_until(metrics_path, start_step)

    def checkpoint_now(step: int) -> None:
        # Collectives first: every rank takes part, rank 0 writes.
        full_memory = distributed.gather_memory(memory, ctx)
        weights, optimizer_state = distributed.full_training_state(
            model, optimizer, sharded=sharded
        )
        if ctx.is_main:
            optim_tensors, optim_meta = split_optimizer_state(optimizer_state)
            rng_tensors, rng_meta = rng_state()
            source_meta, source_tensors = source.state()
            save_checkpoint(
                out_dir,
                step=step,
                model_state=weights,
                state={
                    **optim_tensors,
                    **rng_tensors,
                    **source_tensors,
                    **memory_state(full_memory),
                },
                meta={
                    "config": run.to_dict(),
                    "source": source_meta,
                    "optimizer": optim_meta,
                    "rng": rng_meta,
                    "memory_rows": cfg.batch_size,
                    "world_size": ctx.world_size,
                },
                keep=cfg.keep_checkpoints,
            )
        distributed.barrier(ctx)

    metrics_file = metrics_path.open("a", encoding="utf-8") if ctx.is_main else None

    def log(entry: dict[str, Any]) -> None:
        history.append(entry)
        if metrics_file is not None:
            try:
                metrics_file.write(json.dumps(entry) + "\n")
                metrics_file.flush()
            except OSError as exc:
                raise CheckpointError(
                    f"cannot write {metrics_path}: {exc.strerror or exc}; the last checkpoint "
                    "is intact"
                ) from None

    def event(step: int, message: str | None) -> None:
        if message:
            log({"step": step, "event": message})
            if progress and ctx.is_main:
                tqdm.write(f"step {step}: {message}")

    def validate(step: int) -> dict[str, float]:
        metrics = source.validate(model, device=device)
        if metrics:
            log({"step": step, "split": "valid", **metrics})
        model.train()
        return metrics

    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    )
    model.train()
    tokens_done, began, last_loss = 0, time.perf_counter(), float("nan")
    final_metrics: dict[str, float] = {}
    end_step = cfg.steps if stop_after is None else min(cfg.steps, start_step + stop_after)
    final_step = start_step
    bar = tqdm(
        total=cfg.steps,
        initial=start_step,
        desc="train",
        unit="step",
        disable=not (progress and ctx.is_main),
        dynamic_ncols=True,
    )
    signals = _stop_signals()
    caught = signals.__enter__()
    try:
        for step in range(start_step, end_step):
            if source.finished:
                break
            batch = source.next_batch()
            if batch.reset:
                memory = model.init_memory(rows, device=device)
            inputs, targets = (_to_device(t, device) for t in (batch.inputs, batch.targets))
            lr = source.learning_rate(lr_at(step, cfg))
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                result = rollout(
                    model,
                    inputs,
                    targets,
                    memory,
                    loss_fn=_lm_loss(batch.count),
                    strategy=cfg.strategy,
                    truncate=cfg.truncate,
                    check_memory=cfg.check_memory,
                )
            if not sharded:  # FSDP reduce-scatters the gradients itself
                distributed.average_gradients(model, ctx)
            loss = distributed.mean(float(result.loss), ctx)
            # The global norm (clipping only when grad_clip > 0); a NaN norm skips the step.
            norm = _full(
                torch.nn.utils.clip_grad_norm_(
                    model.parameters(), cfg.grad_clip if cfg.grad_clip else float("inf")
                )
            )
            done = final_step = step + 1
            if not (math.isfinite(loss) and torch.isfinite(norm)):
                what = "loss" if not math.isfinite(loss) else "gradient norm"
                message = f"non-finite {what} at step {done} (loss={loss}, grad_norm={float(norm)})"
                if cfg.on_nonfinite == "stop":
                    raise NonFiniteError(message + "; the last checkpoint is intact")
                log({"step": done, "skipped": message})
                optimizer.zero_grad(set_to_none=True)
                memory = model.init_memory(rows, device=device)
                bar.update(1)
                continue
            optimizer.step()
            memory = result.memory
            tokens_done += inputs.numel() * ctx.world_size
            last_loss = loss
            rate = tokens_done / max(time.perf_counter() - began, 1e-9)
            if done % cfg.log_every == 0 or done == cfg.steps:
                log(
                    {
                        "step": done,
                        "split": "train",
                        "loss": loss,
                        "bpc": loss / math.log(2),
                        "lr": lr,
                        "grad_norm": float(norm),
                        "tokens_per_s": rate,
                    }
                )
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate:,.0f}")
            bar.update(1)
            event(done, source.after_step())
            if cfg.eval_every and done % cfg.eval_every == 0 and done != cfg.steps:
                event(done, source.after_validation(validate(done)))
            periodic = cfg.checkpoint_every and done % cfg.checkpoint_every == 0
            if periodic or done == end_step or caught or source.finished:
                checkpoint_now(done)
            if caught:
                name = signal.Signals(caught["signal"]).name
                raise TrainingInterrupted(
                    f"{name} at step {done}: checkpoint written; continue with "
                    f"memtx train --out {out_dir} --resume"
                )
        complete = final_step == cfg.steps or source.finished
        if complete:
            final_metrics = validate(final_step)
    finally:
        signals.__exit__(None, None, None)
        bar.close()
        if metrics_file is not None:
            metrics_file.close()
    if complete and ctx.is_main:
        plot_losses(history, out_dir / "loss.png")
    return TrainResult(
        model=model,
        run_dir=out_dir,
        steps=final_step,
        final_loss=last_loss,
        valid=final_metrics,
        tokens_per_s=tokens_done / max(time.perf_counter() - began, 1e-9),
        history=history,
    )


def _to_device(tensor: Tensor, device: torch.device) -> Tensor:
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _no_corpus() -> PreparedData:
    """Tasks other than facts read no corpus: byte tokens and empty splits."""
    empty = np.zeros(0, dtype=np.uint16)
    return PreparedData(
        ByteTokenizer(), empty, empty, empty, {"train": 1.0, "valid": 1.0, "test": 1.0}
    )


def _metrics_until(path: Path, step: int) -> list[dict[str, Any]]:
    """The metrics lines up to ``step`` (later ones will be redone), rewritten atomically."""
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            kept.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
    history = [m for m in kept if isinstance(m, dict) and m.get("step", 0) <= step]
    atomic_write_text(path, "".join(json.dumps(m) + "\n" for m in history))
    return history


def plot_losses(history: list[dict[str, Any]], path: Path, *, title: str = "") -> None:
    """Train and validation bits per token against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for split, style in (("train", "-"), ("valid", "o-")):
        points = [
            (m["step"], m.get("bpc", m["loss"] / math.log(2)))
            for m in history
            if m.get("split") == split and "loss" in m
        ]
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, style, label=split)
    ax.set_xlabel("step")
    ax.set_ylabel("bits per token (bpc for bytes)")
    ax.set_title(title or "memtx training")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    tmp.replace(path)


# --------------------------------------------------------------------------- runs


def load_saved_run(run_dir: Path, *, overrides: list[str] | None = None) -> RunConfig:
    """The config saved in a run folder, with ``--set`` overrides applied.

    Raises:
        ConfigError: no run in the folder, or a bad override.
    """
    from memtx.config import parse_overrides

    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir} holds no run (no config.json); train one with memtx train")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} cannot be read: {exc}") from None
    for section, values in parse_overrides(overrides or []).items():
        raw.setdefault(section, {}).update(values)
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
    try:
        model.load_state_dict(checkpoint.model)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise ConfigError(f"the checkpoint does not fit the model config: {first}") from None
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
) -> EvalResult:
    """Evaluate a trained text run on a split of its corpus (or of ``corpus``)."""
    if split not in ("valid", "test"):
        raise ConfigError(f"--split must be valid or test, got {split!r}")
    run, model = load_trained(run_dir, overrides=overrides)
    if run.task is not None:
        raise ConfigError(f"{run_dir} was trained on the task {run.task.name!r}: use --segments")
    if corpus is not None:
        run = dataclasses.replace(run, data=dataclasses.replace(run.data, corpus=corpus))
    data = prepare_data(run, tokenizer=load_tokenizer(Path(run_dir)))
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
    run_dir: Path, *, segments: int | None = None, samples: int = 500, seed: int = 12345
) -> dict[str, float]:
    """Answer accuracy of a task run on held-out samples of ``segments`` segments.

    Evaluating at more segments than the run was trained on measures how the memory
    generalises to longer inputs (memory use stays that of one segment).
    """
    from memtx.sources import evaluate_task

    run, model = load_trained(run_dir)
    if run.task is None:
        raise ConfigError(f"{run_dir} was trained on text, not a task: drop --segments")
    segments = run.task.segments if segments is None else segments
    if segments < 1:
        raise ConfigError(f"--segments must be >= 1, got {segments}")
    noise = prepare_data(run).train if run.task.name == "facts" else None
    source = TaskSource(
        run.task,
        segment_len=run.model.segment_len,
        rows=1,
        rank=0,
        seed=run.train.seed,
        noise=noise,
    )
    metrics = evaluate_task(
        model, source.task(segments), samples=samples, device=model.device, seed=seed
    )
    return {"segments": float(segments), **metrics}


def _free_dir(path: Path) -> Path:
    """``path`` if it does not exist yet, else ``path-2``, ``path-3``... (never overwrite)."""
    candidate, index = path, 2
    while candidate.exists():
        candidate = path.with_name(f"{path.name}-{index}")
        index += 1
    return candidate


def run_demo(
    *,
    config: Path,
    out_dir: Path,
    overrides: list[str] | None = None,
    echo: Callable[[str], None] = print,
) -> TrainResult:
    """Train the demo preset, evaluate before and after, print a table, plot the losses."""
    from memtx.config import load_run_config

    run = load_run_config(config, overrides=overrides or [])
    out_dir = _free_dir(Path(out_dir))
    data = prepare_data(run)
    seed_everything(run.train.seed)
    untrained = from_config(dataclasses.replace(run.model, vocab_size=data.tokenizer.vocab_size))
    budget = run.train.eval_tokens
    before = evaluate_tokens(
        untrained,
        data.valid,
        rows=8,
        max_tokens=budget,
        bytes_per_token=data.bytes_per_token["valid"],
    )
    echo(
        f"demo: {run.model.name}, {untrained.num_parameters() / 1e6:.2f}M parameters, "
        f"{run.train.steps} steps of {run.train.batch_size} x {run.train.rollout} x "
        f"{run.model.segment_len} tokens on {run.data.corpus} -> {out_dir}"
    )
    result = train(run, out_dir=out_dir, data=data)
    after_bpc = result.valid["bpc"]
    rows = [
        ("", "valid bpc", "tokens/s"),
        ("before training", f"{before.bpc:.3f}", f"{before.tokens_per_s:,.0f} (eval)"),
        ("after training", f"{after_bpc:.3f}", f"{result.tokens_per_s:,.0f} (train)"),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(r, widths)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    echo("\n".join(lines))
    echo(f"loss curves: {out_dir / 'loss.png'}   metrics: {out_dir / 'metrics.jsonl'}")
    return result
