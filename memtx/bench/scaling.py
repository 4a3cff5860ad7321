"""``memtx bench scaling``: time per token and peak memory against sequence length.

Each model of the reference configuration (vocab 256, width 256, 4 heads, FFN 1024,
segment 128) scores a random sequence of N tokens with no gradient: the memory models
and Transformer-XL stream it segment by segment with their memory; the full-attention
transformer reads it as ONE segment of N tokens (as far as it fits). Each (model, N)
point runs in its own process so its peak memory is clean. Peak memory is the process's
peak RSS on CPU (weights and the Python runtime included: compare rows, not absolute
values) and ``torch.cuda.max_memory_allocated`` on GPU.

    python -m memtx.bench.scaling --out-dir benchmarks --lengths 4096 16384 65536
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from memtx.bench.common import (
    markdown_table,
    max_rss_mb,
    peak_memory_mb,
    report_worker,
    run_json_worker,
)
from memtx.progress import progress_bar

__all__ = ["MODELS", "run_scaling_benchmark"]

MODELS = ("memformer", "rmt", "armt", "transformer_xl", "transformer_full")
LENGTHS = (4096, 16384, 65536, 262144, 1048576)


def _build(name: str, length: int, *, mem_len: int):  # type: ignore[no-untyped-def]
    import memtx
    from memtx.bench.throughput import COMMON, REFERENCE

    if name == "transformer_full":
        return memtx.build(
            "transformer", **{**COMMON, **REFERENCE["transformer"], "segment_len": length}
        )
    overrides = {"mem_len": mem_len} if name == "transformer_xl" else {}
    return memtx.build(name, **{**COMMON, **REFERENCE[name], **overrides})


def run_worker(*, model: str, length: int, mem_len: int, device: str) -> dict[str, Any]:
    """Score ``length`` random tokens with ``model``; time per token and peak memory."""
    import torch

    from memtx.recurrence import stream

    dev = torch.device(device)
    torch.manual_seed(0)
    net = _build(model, length, mem_len=mem_len).to(dev).eval()
    segment = net.config.segment_len
    tokens = torch.randint(0, 256, (1, length), device=dev)
    baseline = max_rss_mb()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    # Warm-up on a throwaway stream: the first calls pay one-off costs.
    for _ in stream(net, tokens[:, : 4 * segment], net.init_memory(1, device=dev)):
        pass
    times: list[float] = []
    began = time.perf_counter()
    # Each time covers one segment's step, taken when the walk hands the segment over.
    for _ in stream(net, tokens, net.init_memory(1, device=dev)):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - began)
        began = time.perf_counter()
    total = sum(times)
    # Skip the first segments (warm-up) when there are enough of them.
    steady = times[len(times) // 10 :] if len(times) >= 20 else times
    per_token = (
        sum(steady) / (len(steady) * segment) if model != "transformer_full" else (total / length)
    )
    return {
        "model": model,
        "length": length,
        "status": "ok",
        "seconds": total,
        "us_per_token": per_token * 1e6,
        "tokens_per_s": 1 / per_token,
        "peak_mb": peak_memory_mb(dev),
        "baseline_mb": baseline if dev.type != "cuda" else 0.0,
        "device": str(dev),
    }


def run_scaling_benchmark(
    *,
    out_dir: Path,
    models: Sequence[str] = MODELS,
    lengths: Sequence[int] = LENGTHS,
    mem_len: int = 1024,
    full_attention_max: int = 16384,
    device: str = "cpu",
    timeout_s: float = 1800,
    threads: int | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Every (model, length) point in its own process; writes scaling.md/.png/.json."""
    rows: list[dict[str, Any]] = []
    # Length by length, the models in turn: a load that drifts over time (a shared
    # machine) hits every model's row at a length alike. Rows are then grouped by model.
    points = [(m, n) for n in lengths for m in models]
    for model, length in progress_bar(points, desc="scaling", disable=not progress):
        if model == "transformer_full" and length > full_attention_max:
            rows.append(
                {
                    "model": model,
                    "length": length,
                    "status": f"skipped (full attention beyond {full_attention_max})",
                }
            )
            continue
        args = [
            f"--model={model}",
            f"--length={length}",
            f"--mem-len={mem_len}",
            f"--device={device}",
        ]
        result = run_json_worker("memtx.bench.scaling", args, timeout_s=timeout_s, threads=threads)
        rows.append({"model": model, "length": length, **result})
    rows.sort(key=lambda row: list(models).index(row["model"]))  # stable: lengths in order
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "scaling.json").write_text(json.dumps(rows, indent=1) + "\n")
    command = (
        f"python -m memtx.bench.scaling --out-dir {out_dir} --models {' '.join(models)} "
        f"--lengths {' '.join(map(str, lengths))} --mem-len {mem_len} --device {device}"
        + (f" --threads {threads}" if threads else "")
    )
    _write_markdown(out_dir / "scaling.md", rows, mem_len=mem_len, device=device, command=command)
    _write_plot(out_dir / "scaling.png", rows)
    return rows


def _write_markdown(
    path: Path, rows: list[dict[str, Any]], *, mem_len: int, device: str, command: str
) -> None:
    table = []
    firsts: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row.get("status") != "ok":
            table.append([row["model"], f"{row['length']:,}", row.get("status", "?"), "", "", ""])
            continue
        first = firsts.setdefault(row["model"], row)
        table.append(
            [
                row["model"],
                f"{row['length']:,}",
                f"{row['us_per_token']:.1f}",
                f"{row['us_per_token'] / first['us_per_token']:.2f}x",
                f"{row['peak_mb']:,.0f}",
                f"{row['peak_mb'] / first['peak_mb']:.2f}x",
            ]
        )
    header = ["model", "tokens", "us/token", "vs first length", "peak MB", "vs first length"]
    text = (
        "# Scaling: time per token and peak memory vs sequence length\n\n"
        f"Reference config (width 256, 4 heads, FFN 1024, segment 128), batch 1, no grad, "
        f"on {device}; Transformer-XL mem_len={mem_len}; `transformer_full` is one segment "
        "of N tokens. Each point in its own process. Peak MB: process peak RSS on CPU.\n\n"
        f"Reproduce: `{command}`\n\n" + markdown_table(header, table)
    )
    path.write_text(text)


def _write_plot(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for model in dict.fromkeys(r["model"] for r in rows):
        ok = [r for r in rows if r["model"] == model and r.get("status") == "ok"]
        if not ok:
            continue
        xs = [r["length"] for r in ok]
        left.plot(xs, [r["us_per_token"] for r in ok], "o-", label=model)
        right.plot(xs, [r["peak_mb"] for r in ok], "o-", label=model)
    for ax, label in ((left, "microseconds per token"), (right, "peak memory (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="memformer")
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--lengths", nargs="+", type=int, default=list(LENGTHS))
    parser.add_argument("--mem-len", type=int, default=1024)
    parser.add_argument("--full-attention-max", type=int, default=16384)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks"))
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.worker:
        return report_worker(
            lambda: run_worker(
                model=args.model, length=args.length, mem_len=args.mem_len, device=args.device
            )
        )
    run_scaling_benchmark(
        out_dir=args.out_dir,
        models=args.models,
        lengths=args.lengths,
        mem_len=args.mem_len,
        full_attention_max=args.full_attention_max,
        device=args.device,
        threads=args.threads,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
