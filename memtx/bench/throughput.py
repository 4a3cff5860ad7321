"""Training throughput and model FLOP utilisation of one configuration, and the matmul peak.

``measure_training(...)`` times full training steps (rollout forward + backward through
the driver + the loop's update, ``memtx.training.apply_update``: clip + AdamW) on random
tokens, counts the FLOPs of one step with
``torch.utils.flop_counter.FlopCounterMode`` (plus CPU attention, which it skips),
and reports tokens/s, achieved FLOP/s and
its fraction of ``peak_flops`` (measured by ``measure_matmul_peak`` when not given).

    python -m memtx.bench.throughput --model memformer --device cuda --dtype bf16
    python -m memtx.bench.throughput --model rmt --sizes '{"d_model": 64}' --steps 2
    python -m memtx.bench.throughput --paired armt rmt --steps 20 --threads 1

``measure_paired(...)`` times several models side by side in ONE process, alternating one
training step each (the order flipping every round), so a load that drifts over time (a
shared machine) hits them alike; it reports each model's median step, its ratio to the
last model's, and the state each carries per stream (``state_kb_per_stream``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F

import memtx
from memtx.bench.common import GRAD_CLIP, count_flops
from memtx.recurrence import rollout
from memtx.training import apply_update

__all__ = [
    "REFERENCE",
    "measure_matmul_peak",
    "measure_paired",
    "measure_training",
    "state_kb_per_stream",
]

#: The issues' reference configuration (vocab 256, width 256, 4 heads of 64, FFN 1024,
#: segment 128, batch 8, rollout 8); per model the depth and memory size.
REFERENCE: dict[str, dict[str, Any]] = {
    "memformer": {"encoder_layers": 2, "decoder_layers": 4, "memory_slots": 32},
    "rmt": {"n_layers": 6, "memory_tokens": 16},
    "armt": {"n_layers": 6, "memory_tokens": 16, "d_mem": 64},
    "transformer_xl": {"n_layers": 6, "mem_len": 128},
    "transformer": {"n_layers": 6},
}
COMMON = {"vocab_size": 256, "d_model": 256, "n_heads": 4, "d_ff": 1024, "segment_len": 128}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_peak(
    *, device: str = "cpu", dtype: str = "fp32", size: int = 1024, repeats: int = 10
) -> float:
    """FLOP/s of a square matmul of ``size`` (the best of ``repeats``)."""
    dev = torch.device(device)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    a = torch.randn(size, size, device=dev, dtype=torch_dtype)
    b = torch.randn(size, size, device=dev, dtype=torch_dtype)
    best = float("inf")
    for _ in range(repeats + 2):
        _sync(dev)
        start = time.perf_counter()
        a @ b
        _sync(dev)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def measure_training(
    *,
    model_name: str = "memformer",
    strategy: str = "full",
    rollout_len: int = 8,
    batch_size: int = 8,
    steps: int = 5,
    warmup: int = 2,
    device: str = "cpu",
    dtype: str = "fp32",
    peak_flops: float | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Time training steps of the reference config of ``model_name``; FLOPs and MFU."""
    dev = torch.device(device)
    model, one_step, count = _training_step(
        model_name,
        strategy=strategy,
        rollout_len=rollout_len,
        batch_size=batch_size,
        device=dev,
        dtype=dtype,
        overrides=overrides,
    )
    for _ in range(warmup):
        one_step()
    flops = count_flops(one_step)  # CPU attention included (torch's counter skips it)
    _sync(dev)
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    _sync(dev)
    seconds = (time.perf_counter() - start) / steps
    if peak_flops is None:
        peak_flops = measure_matmul_peak(
            device=device, dtype=dtype, size=4096 if dev.type == "cuda" else 1024
        )
    achieved = flops / seconds
    return {
        "model": model_name,
        "strategy": strategy,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "dtype": dtype,
        "parameters": sum(p.numel() for p in model.parameters()),
        "tokens_per_step": count,
        "seconds_per_step": seconds,
        "tokens_per_s": count / seconds,
        "flops_per_step": flops,
        "achieved_tflops": achieved / 1e12,
        "peak_tflops": peak_flops / 1e12,
        "mfu": achieved / peak_flops,
        "peak_memory_mb": (
            torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
        ),
    }


def state_kb_per_stream(model: Any) -> float:
    """KB of the memory value one stream carries between segments (its batch-1 tensors)."""
    memory = model.init_memory(1)
    tensors = memory if isinstance(memory, tuple) else (memory,)
    return sum(t.numel() * t.element_size() for t in tensors) / 1024


def measure_paired(
    *,
    models: Sequence[str] = ("armt", "rmt"),
    strategy: str = "full",
    rollout_len: int = 8,
    batch_size: int = 8,
    steps: int = 10,
    warmup: int = 2,
    device: str = "cpu",
    dtype: str = "fp32",
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Training steps of ``models`` alternated in this process; median step and ratios.

    Every round runs one step of each model (the order reversed every other round) on its
    own fixed random tokens; the first ``warmup`` rounds are not timed. ``ratio`` is a
    model's median step over the LAST model's; ``round_ratio_median`` the median of the
    per-round ratios (the same, less sensitive to a load change within a round).
    """
    dev = torch.device(device)
    built = {
        name: _training_step(
            name,
            strategy=strategy,
            rollout_len=rollout_len,
            batch_size=batch_size,
            device=dev,
            dtype=dtype,
            overrides=overrides,
        )
        for name in models
    }
    times: dict[str, list[float]] = {name: [] for name in models}
    for index in range(warmup + steps):
        order = list(models) if index % 2 == 0 else list(reversed(models))
        for name in order:
            _sync(dev)
            tick = time.perf_counter()
            built[name][1]()
            _sync(dev)
            if index >= warmup:
                times[name].append(time.perf_counter() - tick)
    last = models[-1]
    rows = {}
    for name in models:
        per_round = [a / b for a, b in zip(times[name], times[last], strict=True)]
        rows[name] = {
            "median_s": statistics.median(times[name]),
            "ratio": statistics.median(times[name]) / statistics.median(times[last]),
            "round_ratio_median": statistics.median(per_round),
            "state_kb_per_stream": state_kb_per_stream(built[name][0]),
            "parameters": sum(p.numel() for p in built[name][0].parameters()),
        }
    return {
        "models": rows,
        "relative_to": last,
        "rounds": steps,
        "strategy": strategy,
        "batch_size": batch_size,
        "rollout": rollout_len,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
    }


def _training_step(
    model_name: str,
    *,
    strategy: str,
    rollout_len: int,
    batch_size: int,
    device: torch.device,
    dtype: str,
    overrides: dict[str, Any] | None,
) -> tuple[Any, Callable[[], None], int]:
    """(model, one training step of it on fixed random tokens, tokens per step)."""
    dev = device
    fields = {**COMMON, **REFERENCE[model_name], **(overrides or {})}
    model = memtx.build(model_name, **fields).to(dev).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    seg = fields["segment_len"]
    tokens = torch.randint(0, fields["vocab_size"], (batch_size, rollout_len * seg + 1), device=dev)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    count = targets.numel()

    def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        flat = logits.float().flatten(0, 1)
        return F.cross_entropy(flat, y.flatten(), reduction="sum") / count

    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if dev.type == "cuda" and dtype == "bf16"
        else nullcontext()
    )

    def one_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            result = rollout(
                model,
                inputs,
                targets,
                model.init_memory(batch_size, device=dev),
                loss_fn=loss_fn,
                strategy=strategy,
            )
        apply_update(model, optimizer, grad_clip=GRAD_CLIP, loss=float(result.loss))

    return model, one_step, count


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="memformer", choices=sorted(REFERENCE))
    parser.add_argument(
        "--paired",
        nargs="+",
        choices=sorted(REFERENCE),
        default=None,
        help="time these models side by side, alternating steps (ratios to the last one)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--strategy", default="full")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rollout", type=int, default=8, help="segments per step")
    parser.add_argument(
        "--sizes",
        type=json.loads,
        default={},
        help="JSON overrides of the reference config, e.g. '{\"d_model\": 64}'",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the peak to divide by (default: a measured matmul)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shared: dict[str, Any] = {
        "strategy": args.strategy,
        "device": args.device,
        "dtype": args.dtype,
        "steps": args.steps,
        "warmup": args.warmup,
        "batch_size": args.batch_size,
        "rollout_len": args.rollout,
        "overrides": args.sizes,
    }
    if args.paired:
        result = measure_paired(models=args.paired, **shared)
    else:
        peak = args.peak_tflops * 1e12 if args.peak_tflops else None
        result = measure_training(model_name=args.model, peak_flops=peak, **shared)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
