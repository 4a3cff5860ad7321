"""Training throughput and model FLOP utilisation (MFU) per model and strategy.

``measure_training(...)`` times full training steps (rollout forward + backward through
the driver + the loop's update, ``memtx.training.apply_update``: clip + AdamW) on random
tokens and reports tokens/s, achieved FLOP/s, MFU and peak GPU memory.

FLOPs are counted, not estimated: ``torch.utils.flop_counter.FlopCounterMode`` over one
eager training step (every matmul and attention, forward and backward; CPU attention,
which it skips, added by :func:`memtx.bench.common.count_flops`; elementwise ops not
counted). ``model_flops`` is the step of strategy ``full`` (the model's work);
``hardware_flops`` that of the strategy measured (MRBP's replay recomputes each segment,
so its hardware FLOPs exceed its model FLOPs). Then

    MFU = model_flops_per_step / seconds_per_step / peak_flops
    HFU = hardware_flops_per_step / seconds_per_step / peak_flops

with ``peak_flops`` from ``--peak-tflops``, else the bf16 dense tensor-core peak of the
GPU by name (:data:`PEAK_BF16_TFLOPS`; bf16 runs only), else ``--measure-peak`` (a
matmul); without one (CPU) MFU is None and the achieved FLOP/s stand alone.

``--config configs/<model>-gpu.toml`` takes the model, batch, rollout and strategy of a
run preset (the GPT-2-small-sized GPU presets); ``--compile`` runs the steps through
:func:`memtx.training.compile.compile_segment_steps` and reports the first compile time.

    python -m memtx.bench.throughput --config configs/rmt-gpu.toml --device cuda \
        --dtype bf16 --compile --compile-mode reduce-overhead --strategies full mrbp
    python -m memtx.bench.throughput --model rmt --sizes '{"d_model": 64}' --steps 2
    python -m memtx.bench.throughput --paired armt rmt --steps 20 --threads 1
    python -m memtx.bench.throughput --paired-presets configs/memformer-shakespeare.toml \
        configs/transformer-xl-shakespeare.toml --steps 20 --threads 1

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
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import memtx
from memtx.bench.common import GRAD_CLIP, count_flops, markdown_table
from memtx.config import load_run_config
from memtx.models.protocol import memory_nbytes
from memtx.recurrence import rollout
from memtx.training import apply_update
from memtx.training.compile import compile_segment_steps

__all__ = [
    "PEAK_BF16_TFLOPS",
    "REFERENCE",
    "measure_matmul_peak",
    "peak_bf16_flops",
    "preset_sizes",
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

#: Dense bf16 tensor-core peaks in TFLOP/s (no sparsity), from the vendors' data sheets,
#: by a substring of ``torch.cuda.get_device_name``; the first match wins.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.4),
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM ("NVIDIA H100 80GB HBM3")
    ("A100", 312.0),
    ("L40S", 362.05),
    ("L4", 121.0),
    ("RTX 4090", 165.2),
)


def peak_bf16_flops(device_name: str) -> float | None:
    """The bf16 dense peak (FLOP/s) of a GPU named ``device_name``, None if not in the table."""
    for part, tflops in PEAK_BF16_TFLOPS:
        if part in device_name:
            return tflops * 1e12
    return None


def preset_sizes(path: Path | str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(model name, model fields, {batch_size, rollout, strategy}) of a run preset.

    The vocabulary is the tokenizer's: 256 for bytes, ``bpe_vocab_size`` for BPE.
    """
    run = load_run_config(path)
    fields = run.model.to_dict()
    name = fields.pop("name")
    fields["vocab_size"] = run.data.bpe_vocab_size if run.data.tokenizer == "bpe" else 256
    train = {
        "batch_size": run.train.batch_size,
        "rollout": run.train.rollout,
        "strategy": run.train.strategy,
    }
    return name, fields, train


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
    measure_peak: bool = False,
    overrides: dict[str, Any] | None = None,
    sizes: dict[str, Any] | None = None,
    compile_mode: str | None = None,
) -> dict[str, Any]:
    """Time training steps of ``model_name``; FLOPs counted, MFU, peak GPU memory.

    Args:
        sizes: the model's fields (default: :data:`REFERENCE` over :data:`COMMON`);
            ``overrides`` apply on top.
        peak_flops: the peak to divide by; None: the GPU's bf16 peak from
            :data:`PEAK_BF16_TFLOPS` (bf16 on CUDA), else a measured matmul with
            ``measure_peak``, else none (``mfu`` None).
        compile_mode: compile the segment step (a ``torch.compile`` mode) after
            counting FLOPs eagerly; the warm-up steps then include the compilation.
    """
    dev = torch.device(device)
    model, one_step, count = _training_step(
        model_name,
        strategy=strategy,
        rollout_len=rollout_len,
        batch_size=batch_size,
        device=dev,
        dtype=dtype,
        overrides=overrides,
        sizes=sizes,
    )
    # Counted eagerly (the counter does not see inside compiled graphs).
    hardware_flops = count_flops(one_step)  # CPU attention included (torch's counter skips it)
    model_flops = hardware_flops if strategy == "full" else count_flops(lambda: one_step("full"))
    compiled = compile_segment_steps(model, mode=compile_mode) if compile_mode else None
    for _ in range(warmup):
        one_step()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    _sync(dev)
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    _sync(dev)
    seconds = (time.perf_counter() - start) / steps
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    if peak_flops is None and dev.type == "cuda" and dtype == "bf16":
        peak_flops = peak_bf16_flops(name)
    if peak_flops is None and measure_peak:
        peak_flops = measure_matmul_peak(
            device=device, dtype=dtype, size=4096 if dev.type == "cuda" else 1024
        )
    return {
        "model": model_name,
        "strategy": strategy,
        "device": name,
        "dtype": dtype,
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch_size": batch_size,
        "rollout": rollout_len,
        "tokens_per_step": count,
        "seconds_per_step": seconds,
        "tokens_per_s": count / seconds,
        "flops_per_step": model_flops,
        "hardware_flops_per_step": hardware_flops,
        "achieved_tflops": model_flops / seconds / 1e12,
        "peak_tflops": peak_flops / 1e12 if peak_flops else None,
        "mfu": model_flops / seconds / peak_flops if peak_flops else None,
        "hfu": hardware_flops / seconds / peak_flops if peak_flops else None,
        "peak_memory_mb": (
            torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
        ),
        "compile_mode": compiled.mode if compiled else None,
        "cuda_graphs": compiled.cuda_graphs if compiled else None,
        "first_compile_s": compiled.first_compile_seconds if compiled else None,
        "compile_s": dict(compiled.compile_seconds) if compiled else None,
    }


def state_kb_per_stream(model: Any) -> float:
    """KB of the memory value one stream carries between segments (its batch-1 tensors)."""
    return memory_nbytes(model.init_memory(1)) / 1024


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
    presets: Sequence[Path] = (),
) -> dict[str, Any]:
    """Training steps of ``models`` alternated in this process; median step and ratios.

    ``presets`` (run preset files) replace ``models``: each is built with its own model,
    batch, rollout and strategy (``preset_sizes``), named by its file's stem, so presets
    at equal tokens per step compare as their users run them.

    Every round runs one step of each model (the order reversed every other round) on its
    own fixed random tokens; the first ``warmup`` rounds are not timed. ``ratio`` is a
    model's median step over the LAST model's; ``round_ratio_median`` the median of the
    per-round ratios (the same, less sensitive to a load change within a round).
    """
    dev = torch.device(device)
    # name -> (model name, sizes or None for the reference, strategy, rollout, batch)
    plans: dict[str, tuple[str, dict[str, Any] | None, str, int, int]] = {
        name: (name, None, strategy, rollout_len, batch_size) for name in models
    }
    if presets:  # each preset as its users run it, named by its file's stem
        plans = {}
        for path in presets:
            name, sizes, train = preset_sizes(path)
            plans[Path(path).stem] = (
                name, sizes, train["strategy"], train["rollout"], train["batch_size"]
            )  # fmt: skip
    built = {
        key: _training_step(
            name,
            strategy=plan_strategy,
            rollout_len=rollout,
            batch_size=batch,
            device=dev,
            dtype=dtype,
            overrides=overrides,
            sizes=sizes,
        )
        for key, (name, sizes, plan_strategy, rollout, batch) in plans.items()
    }
    models = list(built)
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
            "tokens_per_step": built[name][2],
            "tokens_per_s": built[name][2] / statistics.median(times[name]),
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
    sizes: dict[str, Any] | None = None,
) -> tuple[Any, Callable[..., None], int]:
    """(model, one training step of it on fixed random tokens, tokens per step).

    The step takes an optional strategy (default: ``strategy``).
    """
    dev = device
    base = sizes if sizes is not None else {**COMMON, **REFERENCE[model_name]}
    fields = {**base, **(overrides or {})}
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

    def one_step(use: str | None = None) -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            result = rollout(
                model,
                inputs,
                targets,
                model.init_memory(batch_size, device=dev),
                loss_fn=loss_fn,
                strategy=use or strategy,
            )
        apply_update(model, optimizer, grad_clip=GRAD_CLIP, loss=float(result.loss))

    return model, one_step, count


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="memformer", choices=sorted(REFERENCE))
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="a run preset (e.g. configs/rmt-gpu.toml): its model, batch, rollout, strategy",
    )
    parser.add_argument(
        "--paired",
        nargs="+",
        choices=sorted(REFERENCE),
        default=None,
        help="time these models side by side, alternating steps (ratios to the last one)",
    )
    parser.add_argument(
        "--paired-presets",
        nargs="+",
        type=Path,
        default=None,
        help="time run presets side by side, each with its own batch, rollout and strategy",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--strategy", default=None, help="default: full, or the preset's")
    parser.add_argument(
        "--strategies", nargs="+", default=None, help="one row per strategy (full mrbp ...)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=None, help="default 8, or the preset's")
    parser.add_argument("--rollout", type=int, default=None, help="segments per step (default 8)")
    parser.add_argument(
        "--sizes",
        type=json.loads,
        default={},
        help="JSON overrides of the model config, e.g. '{\"d_model\": 64}'",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the peak to divide by (default: the GPU's bf16 peak by name, else none)",
    )
    parser.add_argument(
        "--measure-peak", action="store_true", help="without a known peak, measure a matmul's"
    )
    parser.add_argument("--compile", action="store_true", help="compile the segment step")
    parser.add_argument(
        "--compile-mode",
        default="default",
        help="torch.compile mode with --compile (reduce-overhead: CUDA graphs on CUDA)",
    )
    parser.add_argument("--markdown", action="store_true", help="end with a markdown table")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model_name, sizes = args.model, None
    preset: dict[str, Any] = {}
    if args.config is not None:
        model_name, sizes, preset = preset_sizes(args.config)
    strategy = args.strategy or preset.get("strategy", "full")
    shared: dict[str, Any] = {
        "device": args.device,
        "dtype": args.dtype,
        "steps": args.steps,
        "warmup": args.warmup,
        "batch_size": args.batch_size or preset.get("batch_size", 8),
        "rollout_len": args.rollout or preset.get("rollout", 8),
        "overrides": args.sizes,
    }
    if args.paired or args.paired_presets:
        paired = measure_paired(
            models=args.paired or (), presets=args.paired_presets or (), strategy=strategy, **shared
        )
        print(json.dumps(paired))
        return
    peak = args.peak_tflops * 1e12 if args.peak_tflops else None
    rows = []
    for each in args.strategies or [strategy]:
        row = measure_training(
            model_name=model_name,
            strategy=each,
            peak_flops=peak,
            measure_peak=args.measure_peak,
            sizes=sizes,
            compile_mode=args.compile_mode if args.compile else None,
            **shared,
        )
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.markdown:
        print(_table(rows))


def _table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as markdown, each strategy's time relative to the first row's."""
    first = rows[0]["seconds_per_step"]

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}%"

    def mb(value: float | None) -> str:
        return "-" if value is None else f"{value:,.0f}"

    header = ["model", "strategy", "tokens/s", "s/step", "vs first", "TFLOP/s", "MFU", "HFU"]
    return markdown_table(
        [*header, "peak MB", "first compile s"],
        [
            [
                r["model"], r["strategy"], f"{r['tokens_per_s']:,.0f}",
                f"{r['seconds_per_step']:.3f}", f"{r['seconds_per_step'] / first:.2f}x",
                f"{r['achieved_tflops']:.2f}", pct(r["mfu"]), pct(r["hfu"]),
                mb(r["peak_memory_mb"]),
                "-" if r["first_compile_s"] is None else f"{r['first_compile_s']:.1f}",
            ]
            for r in rows
        ],
    )  # fmt: skip


if __name__ == "__main__":
    main()
