"""``memtx bench mrbp``: memory and time of full BPTT, gradient checkpointing and MRBP.

The paper's Table (12 layers, width 512, 32 slots, rollout 4): full BPTT 16,177 MB at
speed x1.00, gradient checkpointing 9,885 MB at x0.48, MRBP 7,229 MB at x0.90; rollout 16
adds only 62 MB to MRBP. This benchmark trains a Memformer for a few steps with each
strategy (``full``, ``checkpoint``, ``mrbp``) and rollout and records peak memory and
time per training step; :mod:`memtx.bench.mrbp_worker` says what one step is, what each
strategy keeps, and how the peak is read.

Every (strategy, rollout) runs in its own subprocess (``python -m memtx.bench.mrbp
--worker ...``, which prints one JSON line), so each peak is measured from a clean
process. This module plans the runs (skipping those :func:`estimate_memory_gb` puts
above the limit), launches them, and writes the table, the plot and the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Any

from memtx.bench.common import run_json_worker
from memtx.bench.mrbp_worker import STRATEGIES, VOCAB_SIZE, BenchModel, run_worker

__all__ = ["STRATEGIES", "BenchModel", "estimate_memory_gb", "run_mrbp_benchmark", "run_worker"]


# --------------------------------------------------------------------------- estimate


def estimate_memory_gb(strategy: str, rollout: int, sizes: BenchModel) -> float:
    """A rough (generous) estimate of a configuration's peak memory in GB, float32.

    Weights, gradients and AdamW's two moments, plus the activations each strategy keeps:
    all segments' (``full``), one segment's and every segment's input (``checkpoint``),
    one segment's and every segment's memory (``mrbp``). Only guards against runaway runs.
    """
    d, ff, heads = sizes.d_model, sizes.d_ff, sizes.n_heads
    layers = sizes.encoder_layers + sizes.decoder_layers
    seg, batch, slots = sizes.segment_len, sizes.batch_size, sizes.memory_slots
    # self + cross attention (4 d^2 each), FFN (2 d ff), writer (4 d^2), tied embedding
    params = layers * (8 * d * d + 2 * d * ff) + 4 * d * d + VOCAB_SIZE * d
    tokens = batch * seg
    per_segment = tokens * (layers * (20 * d + 2 * ff) + 3 * VOCAB_SIZE)  # (floats)
    per_segment += layers * batch * heads * seg * (seg + slots) * 2  # attention weights
    carried = batch * (slots * d + seg)  # one memory value
    if strategy == "full":
        activations = rollout * per_segment
    elif strategy == "checkpoint":
        activations = per_segment + rollout * (carried + tokens * d)
    else:
        activations = per_segment + rollout * carried
    return 4 * (4 * params + activations) / 1e9


# --------------------------------------------------------------------------- driver


def _run_in_subprocess(
    strategy: str,
    rollout: int,
    sizes: BenchModel,
    *,
    steps: int,
    warmup: int,
    device: str,
    timeout_s: float | None,
    threads: int | None,
) -> dict[str, Any]:
    """One configuration in a fresh ``python -m memtx.bench.mrbp --worker`` process."""
    args = [
        f"--strategy={strategy}",
        f"--rollout={rollout}",
        f"--steps={steps}",
        f"--warmup={warmup}",
        f"--device={device}",
        *sizes.worker_args(),
    ]
    result = run_json_worker("memtx.bench.mrbp", args, timeout_s=timeout_s, threads=threads)
    return {"strategy": strategy, "rollout": rollout, **result}


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    """Memory and speed relative to ``full`` at the same rollout (the paper's x1.00)."""
    full = {row["rollout"]: row for row in rows if row["strategy"] == "full"}
    for row in rows:
        row["memory_vs_full"] = row["speed_vs_full"] = None
        base = full.get(row["rollout"])
        if base is None or base["status"] != "ok" or row["status"] != "ok":
            continue
        if base["peak_mb"] > 0:
            row["memory_vs_full"] = row["peak_mb"] / base["peak_mb"]
        row["speed_vs_full"] = base["time_per_step_s"] / row["time_per_step_s"]


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _write_markdown(path: Path, rows: list[dict[str, Any]], header: dict[str, Any]) -> None:
    device = next((row["device"] for row in rows if row.get("device")), "unknown")
    peak = (
        "torch.cuda.max_memory_allocated (all of it)"
        if device.startswith("cuda")
        else "peak RSS of the worker minus its RSS after building model and optimizer"
    )
    sizes = ", ".join(f"{k}={v}" for k, v in header.items())
    lines = [
        "# MRBP benchmark: full BPTT vs gradient checkpointing vs MRBP",
        "",
        f"Memformer {sizes}; device {device}; loss on every segment.",
        f"Peak MB: {peak}. Speed: time of full / time (x1.00 = full BPTT's speed).",
        "",
        "| strategy | rollout | peak MB | time/step (s) | memory vs full | speed vs full "
        "| status |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        speed = row.get("speed_vs_full")
        lines.append(
            f"| {row['strategy']} | {row['rollout']} | {_fmt(row.get('peak_mb'), '.1f')} "
            f"| {_fmt(row.get('time_per_step_s'), '.4f')} "
            f"| {_fmt(row.get('memory_vs_full'), '.2f')} "
            f"| {'-' if speed is None else f'x{speed:.2f}'} | {row['status']} |"
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_plot(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_mem, ax_time) = plt.subplots(1, 2, figsize=(10, 4))
    for strategy in dict.fromkeys(row["strategy"] for row in rows):
        done = sorted(
            (row for row in rows if row["strategy"] == strategy and row["status"] == "ok"),
            key=lambda row: row["rollout"],
        )
        if not done:
            continue
        rollouts = [row["rollout"] for row in done]
        ax_mem.plot(rollouts, [row["peak_mb"] for row in done], marker="o", label=strategy)
        ax_time.plot(rollouts, [row["time_per_step_s"] for row in done], marker="o", label=strategy)
    for ax, label in ((ax_mem, "peak memory (MB)"), (ax_time, "time per step (s)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("rollout (segments)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.suptitle("Memformer: full BPTT vs gradient checkpointing vs MRBP")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_mrbp_benchmark(
    *,
    out_dir: Path,
    rollouts: Sequence[int] = (1, 2, 4, 8, 16, 32),
    strategies: Sequence[str] = STRATEGIES,
    d_model: int = 256,
    n_heads: int = 4,
    d_ff: int = 1024,
    encoder_layers: int = 2,
    decoder_layers: int = 4,
    memory_slots: int = 32,
    segment_len: int = 128,
    batch_size: int = 8,
    steps: int = 3,
    warmup: int = 1,
    max_mem_gb: float = 16.0,
    device: str = "auto",
    timeout_s: float | None = None,
    jobs: int = 1,
    threads: int | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Benchmark every (strategy, rollout), each in its own process; write the results.

    Writes ``out_dir/mrbp.md`` (table), ``out_dir/mrbp.png`` (peak memory and time vs
    rollout) and ``out_dir/mrbp.json`` (sizes and every measurement).

    Args:
        out_dir: where the three files go (created).
        rollouts: segments per training step.
        strategies: any of ``"full"``, ``"checkpoint"``, ``"mrbp"``.
        steps: measured training steps per configuration (the time is their mean).
        warmup: unmeasured steps first (allocator, AdamW state, kernels).
        max_mem_gb: configurations whose :func:`estimate_memory_gb` exceeds this are
            skipped and reported as such.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        timeout_s: a configuration running longer fails with "timeout" (None: no limit).
        jobs: configurations run side by side. Each is still its own process, so peaks
            stay clean, but times disturb each other: keep 1 for timings.
        threads: CPU threads of each worker (None: torch's default). On a shared or busy
            machine, fewer threads than cores avoids oversubscription, which can make
            CPU times erratic.
        progress: show a progress bar over configurations (on stderr).

    Returns:
        One dict per configuration, in order: ``strategy``, ``rollout``, ``status``
        (``"ok"``, ``"skipped (...)"`` or ``"failed (...)"``), ``peak_mb``,
        ``time_per_step_s``, ``memory_vs_full``, ``speed_vs_full`` and the raw
        measurements (``rss_*``, ``cuda_*``, ``step_times_s``, ``estimated_gb``).

    Raises:
        ValueError: an unknown strategy, a rollout < 1, steps < 1 or warmup < 0.
    """
    from memtx.progress import progress_bar

    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"unknown strategy {unknown[0]!r} (known: {', '.join(STRATEGIES)})")
    if not rollouts or min(rollouts) < 1:
        raise ValueError(f"rollouts must be integers >= 1, got {list(rollouts)}")
    if jobs < 1 or (threads is not None and threads < 1):
        raise ValueError(f"jobs and threads must be >= 1, got {jobs} and {threads}")
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps must be >= 1 and warmup >= 0, got {steps} and {warmup}")
    sizes = BenchModel(
        d_model=d_model,
        n_heads=n_heads,
        d_ff=d_ff,
        encoder_layers=encoder_layers,
        decoder_layers=decoder_layers,
        memory_slots=memory_slots,
        segment_len=segment_len,
        batch_size=batch_size,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    to_run: list[tuple[str, int, float]] = []
    for rollout in rollouts:
        for strategy in strategies:
            estimate = estimate_memory_gb(strategy, rollout, sizes)
            if estimate > max_mem_gb:
                status = f"skipped (estimated {estimate:.1f} GB > max_mem_gb {max_mem_gb:g})"
                rows.append(
                    {
                        "strategy": strategy,
                        "rollout": rollout,
                        "status": status,
                        "estimated_gb": estimate,
                    }
                )
            else:
                to_run.append((strategy, rollout, estimate))

    def run(strategy: str, rollout: int, estimate: float) -> dict[str, Any]:
        row = _run_in_subprocess(
            strategy,
            rollout,
            sizes,
            steps=steps,
            warmup=warmup,
            device=device,
            timeout_s=timeout_s,
            threads=threads,
        )
        return {**row, "estimated_gb": estimate}

    bar = progress_bar(total=len(to_run), desc="bench mrbp", unit="run", disable=not progress)
    with ThreadPoolExecutor(max_workers=jobs) as pool:  # threads only wait on processes
        futures = [pool.submit(run, *config) for config in to_run]
        for future in as_completed(futures):
            rows.append(future.result())
            bar.set_postfix_str(f"{rows[-1]['strategy']} rollout={rows[-1]['rollout']}")
            bar.update()
    bar.close()
    rows.sort(key=lambda row: (strategies.index(row["strategy"]), row["rollout"]))
    _add_ratios(rows)
    header = {**asdict(sizes), "steps": steps, "warmup": warmup}
    (out_dir / "mrbp.json").write_text(
        json.dumps({"config": header, "results": rows}, indent=2) + "\n", encoding="utf-8"
    )
    _write_markdown(out_dir / "mrbp.md", rows, header)
    _write_plot(out_dir / "mrbp.png", rows)
    return rows


# --------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    defaults = BenchModel()
    parser = argparse.ArgumentParser(
        prog="python -m memtx.bench.mrbp",
        description="Peak memory and time per training step of full BPTT, gradient "
        "checkpointing and MRBP on a Memformer, for several rollouts.",
    )
    parser.add_argument("--out-dir", type=Path, default=Path("runs/bench"), help="output folder")
    parser.add_argument(
        "--rollouts", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32], help="segments per step"
    )
    parser.add_argument(
        "--strategies",
        nargs="+",
        choices=STRATEGIES,
        default=list(STRATEGIES),
        help="gradient strategies to compare",
    )
    for name, value in asdict(defaults).items():
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=int, default=value, help="model size"
        )
    parser.add_argument("--steps", type=int, default=3, help="measured steps per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured steps first")
    parser.add_argument(
        "--max-mem-gb", type=float, default=16.0, help="skip configurations estimated above this"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per configuration")
    parser.add_argument(
        "--jobs", type=int, default=1, help="configurations side by side (1 for timings)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads per worker (default: torch's)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    worker = parser.add_argument_group("worker mode (internal: one configuration, one JSON line)")
    worker.add_argument("--worker", action="store_true", help="run one configuration and exit")
    worker.add_argument("--strategy", choices=STRATEGIES, default="full")
    worker.add_argument("--rollout", type=int, default=1)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    sizes = BenchModel(**{name: getattr(args, name) for name in asdict(BenchModel())})
    if args.worker:
        try:
            result = run_worker(
                strategy=args.strategy,
                rollout=args.rollout,
                sizes=sizes,
                steps=args.steps,
                warmup=args.warmup,
                device=args.device,
                threads=args.threads,
            )
        except Exception as exc:  # reported to the parent as this configuration's failure
            reason = "out of memory" if "out of memory" in str(exc).lower() else str(exc)
            status = f"failed ({type(exc).__name__}: {reason.splitlines()[0] if reason else ''})"
            print(
                json.dumps({"strategy": args.strategy, "rollout": args.rollout, "status": status})
            )
            return 1
        print(json.dumps(result), flush=True)
        return 0
    try:
        rows = run_mrbp_benchmark(
            out_dir=args.out_dir,
            rollouts=args.rollouts,
            strategies=args.strategies,
            steps=args.steps,
            warmup=args.warmup,
            max_mem_gb=args.max_mem_gb,
            device=args.device,
            timeout_s=args.timeout,
            jobs=args.jobs,
            threads=args.threads,
            progress=not args.no_progress,
            **asdict(sizes),
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print((args.out_dir / "mrbp.md").read_text(encoding="utf-8"), end="")
    failed = sum(row["status"].startswith("failed") for row in rows)
    if failed:
        print(f"{failed} configuration(s) failed; see the table", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
