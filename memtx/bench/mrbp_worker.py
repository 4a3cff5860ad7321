"""The measuring side of ``memtx bench mrbp``: one (strategy, rollout) in this process.

:func:`run_worker` trains a Memformer of :class:`BenchModel`'s sizes for ``warmup +
steps`` steps and measures the last ``steps``: forward + backward + the loop's update
(``memtx.training.apply_update``: clip + AdamW), with a loss on every segment (sum of
per-segment mean cross-entropy) over random byte tokens. The memory carries over from
one step to the next (detached), as in training, so the numbers are those of the steady
state.

Strategies:

- ``full``: the driver's full BPTT (every segment's activations kept).
- ``mrbp``: the driver's Memory Replay Back-Propagation (one segment's activations).
- ``checkpoint``: full BPTT with each segment's ``model.step`` wrapped in
  ``torch.utils.checkpoint.checkpoint`` (a comparison baseline written here, not a driver
  strategy): only segment inputs are kept, and the backward pass recomputes each segment.

Meant to run alone in a fresh process (``python -m memtx.bench.mrbp --worker ...``), so
each peak is clean. On CPU the peak is the process's peak resident set size minus its
size after the model and optimizer were created (both are reported); on GPU it is
``torch.cuda.max_memory_allocated`` (everything, weights and optimizer state included,
as in the paper).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, cast

from memtx.bench.common import GRAD_CLIP, max_rss_mb

STRATEGIES: tuple[str, ...] = ("full", "checkpoint", "mrbp")
VOCAB_SIZE = 256  # random bytes

__all__ = ["STRATEGIES", "VOCAB_SIZE", "BenchModel", "run_worker"]


@dataclass(frozen=True)
class BenchModel:
    """The Memformer sizes and batch of one benchmark."""

    d_model: int = 256
    n_heads: int = 4
    d_ff: int = 1024
    encoder_layers: int = 2
    decoder_layers: int = 4
    memory_slots: int = 32
    segment_len: int = 128
    batch_size: int = 8

    def worker_args(self) -> list[str]:
        return [f"--{name.replace('_', '-')}={value}" for name, value in asdict(self).items()]


def run_worker(
    *,
    strategy: str,
    rollout: int,
    sizes: BenchModel,
    steps: int,
    warmup: int,
    device: str,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train ``warmup + steps`` steps in this process and measure the last ``steps``.

    Meant to run alone in a fresh process (peak RSS is per process).
    """
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    import memtx
    from memtx.models import SegmentModel
    from memtx.models.protocol import detach_memory
    from memtx.recurrence import rollout as driver_rollout
    from memtx.recurrence import split_segments
    from memtx.training import apply_update

    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r} (known: {', '.join(STRATEGIES)})")
    if threads is not None:
        torch.set_num_threads(threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    on_gpu = device.startswith("cuda")
    torch.manual_seed(0)
    model = memtx.build(  # a Memformer; typed as the contract the driver needs
        "memformer",
        vocab_size=VOCAB_SIZE,
        d_model=sizes.d_model,
        n_heads=sizes.n_heads,
        d_ff=sizes.d_ff,
        encoder_layers=sizes.encoder_layers,
        decoder_layers=sizes.decoder_layers,
        memory_slots=sizes.memory_slots,
        segment_len=sizes.segment_len,
    ).to(device)
    model.train()
    segment_model = cast(SegmentModel, model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    length = rollout * sizes.segment_len
    data = torch.randint(0, VOCAB_SIZE, (sizes.batch_size, length + 1), device=device)
    inputs, targets = data[:, :-1], data[:, 1:]

    def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.flatten(0, 1), target.flatten())

    # As in training, each step's rollout continues the streams: the memory passes from
    # one step to the next, detached (so every segment, the first included, has a
    # previous segment to encode: the steady state, not the start of a stream).
    carried: dict[str, Any] = {"memory": segment_model.init_memory(sizes.batch_size, device=device)}

    def checkpointed() -> torch.Tensor:
        """Full BPTT with every segment recomputed in the backward pass."""

        def segment(x: torch.Tensor, y: torch.Tensor, memory: Any) -> tuple[torch.Tensor, Any]:
            out = segment_model.step(x, memory)
            return loss_fn(out.logits, y), out.memory

        memory = carried["memory"]
        total = inputs.new_zeros((), dtype=torch.float32)
        xs = split_segments(inputs, sizes.segment_len)
        ys = split_segments(targets, sizes.segment_len)
        for x, y in zip(xs, ys):
            loss, memory = checkpoint(segment, x, y, memory, use_reentrant=False)
            total = total + loss
        total.backward()
        carried["memory"] = detach_memory(memory)
        return total.detach()

    def train_step() -> float:
        optimizer.zero_grad(set_to_none=True)
        if strategy == "checkpoint":
            loss = checkpointed()
        else:
            result = driver_rollout(
                segment_model,
                inputs,
                targets,
                carried["memory"],
                loss_fn=loss_fn,
                strategy=strategy,
            )
            carried["memory"], loss = result.memory, result.loss
        apply_update(model, optimizer, grad_clip=GRAD_CLIP, loss=float(loss))
        return float(loss)

    def sync() -> None:
        if on_gpu:
            torch.cuda.synchronize(device)

    sync()
    baseline_rss = max_rss_mb()
    cuda_baseline = None
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
        cuda_baseline = torch.cuda.memory_allocated(device) / 2**20
    times: list[float] = []
    loss = math.nan
    for index in range(warmup + steps):
        start = time.perf_counter()
        loss = train_step()
        sync()
        if index >= warmup:
            times.append(time.perf_counter() - start)
    peak_rss = max_rss_mb()
    cuda_peak = torch.cuda.max_memory_allocated(device) / 2**20 if on_gpu else None
    return {
        "strategy": strategy,
        "rollout": rollout,
        "status": "ok",
        "device": device,
        "peak_mb": cuda_peak if cuda_peak is not None else peak_rss - baseline_rss,
        "rss_peak_mb": peak_rss,
        "rss_baseline_mb": baseline_rss,
        "rss_delta_mb": peak_rss - baseline_rss,
        "cuda_peak_mb": cuda_peak,
        "cuda_baseline_mb": cuda_baseline,
        "time_per_step_s": sum(times) / len(times),
        "step_times_s": times,
        "loss": loss,
        "parameters": model.num_parameters(),
        "threads": torch.get_num_threads(),
    }
