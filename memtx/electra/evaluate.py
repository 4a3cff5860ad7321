"""Measurements of ELECTRA pre-training: held-out RTD, and replay's cost per step."""

from __future__ import annotations

import dataclasses
import math
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from memtx.data import PreparedData
from memtx.electra.config import ElectraRun
from memtx.electra.data import WindowSampler, evenly_spaced_windows
from memtx.electra.model import ElectraModel
from memtx.electra.replay import ReplayBuffer, replay_count
from memtx.electra.step import electra_step
from memtx.training import build_optimizer, resolve_device, seed_everything

__all__ = ["evaluate_rtd", "measure_replay_overhead"]


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
            stats = electra_step(  # the loop's step function and its update
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
