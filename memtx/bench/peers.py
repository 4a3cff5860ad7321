"""``memtx bench peers``: the reference config trained in memtx and in the public packages.

Side by side in one run, each row in its own process (so its peak RSS is its own): memtx's
Memformer and RMT, lucidrains' ``memformer==0.3.1`` and
``recurrent-memory-transformer-pytorch==0.7.0``. Every row is a full training step (the
rollout's forward and backward + AdamW; memtx rows update through the training loop's
``memtx.training.apply_update``, which clips first) on random tokens of the reference
config (vocab 256, width 256, 4 heads of 64, FFN 1024, segment 128, batch 8, rollout 8;
Memformer 2 encoder + 4 decoder blocks and 32 slots; RMT 6 blocks and 16 memory tokens).
Reported: tokens/s, seconds per step, FLOPs per step (``FlopCounterMode``, one step) and
achieved GFLOP/s, so rows doing different work show it, and the process's peak RSS.

The rows themselves (sizes, adapters, the worker, the profiler) are in
:mod:`memtx.bench.peers_rows`; this module runs them and writes the table.

The peers are optional: when they are not importable their rows say how to install them
and the memtx rows still run. A row that fails becomes a "failed (reason)" row.

    python -m memtx.bench.peers --out-dir benchmarks
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from memtx.bench.common import markdown_table, report_worker, run_json_worker
from memtx.bench.peers_rows import (
    PEER_INSTALL,
    PEER_VERSIONS,
    ROWS,
    PeerSizes,
    RowSpec,
    mapping_notes,
    missing_modules,
    profile_row,
    run_worker,
)
from memtx.progress import progress_bar

__all__ = [
    "PAIRS",
    "PEER_INSTALL",
    "PEER_VERSIONS",
    "ROWS",
    "PeerSizes",
    "RowSpec",
    "profile_row",
    "run_peers_benchmark",
    "run_worker",
]

#: Same-work comparisons (memtx row, peer row) and the caveat each one carries.
PAIRS: tuple[tuple[str, str, str], ...] = (
    ("memtx-memformer-full", "peer-memformer-full", "same work: full BPTT, every segment"),
    (
        "memtx-memformer-mrbp",
        "peer-memformer-full",
        "same loss and gradients (MRBP is exact); MRBP recomputes every segment",
    ),
    (
        "memtx-memformer-mrbp",
        "peer-memformer-mrbp",
        "NOT like for like: the peer's MRBP scores only the last segment",
    ),
    ("memtx-rmt-full", "peer-rmt-full", "same work: full BPTT, every segment"),
)


def run_peers_benchmark(
    *,
    out_dir: Path,
    steps: int = 3,
    warmup: int = 1,
    threads: int | None = None,
    progress: bool = True,
    sizes: PeerSizes | None = None,
    rows: Sequence[str] = tuple(ROWS),
    timeout_s: float = 3600,
    jobs: int = 1,
) -> list[dict[str, Any]]:
    """Every row in its own process; writes ``peers.md`` and ``peers.json`` to ``out_dir``.

    Args:
        out_dir: folder for the table (created if needed).
        steps: timed training steps per row (after ``warmup`` and one FLOP-counted step).
        warmup: untimed steps first.
        threads: torch threads per worker (default: torch's own choice).
        progress: show a progress bar.
        sizes: the sizes to build and train (default: the reference config).
        rows: which of :data:`ROWS` to run, in order.
        timeout_s: a row that runs longer becomes "failed (timeout ...)".
        jobs: rows run at the same time, each still in its own process. Only 1 gives
            timings to compare or publish; more is for smoke tests (the table says so).

    Returns:
        One dict per row: its spec fields, ``status`` ("ok", "skipped (...)" or
        "failed (...)") and, when ok, the measurements of :func:`run_worker`.

    Raises:
        ValueError: an unknown row name, ``steps`` < 1, ``warmup`` < 0 or ``jobs`` < 1.
    """
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise ValueError(f"unknown rows {unknown} (known: {', '.join(ROWS)})")
    if steps < 1 or warmup < 0 or jobs < 1:
        raise ValueError(
            f"steps and jobs must be >= 1 and warmup >= 0, got {steps}, {jobs} and {warmup}"
        )
    sizes = sizes or PeerSizes()
    worker_args = [
        f"--sizes={json.dumps(dataclasses.asdict(sizes))}",
        f"--steps={steps}",
        f"--warmup={warmup}",
    ]

    def run_row(row: str) -> dict[str, Any]:
        spec = ROWS[row]
        base = {"row": row, **dataclasses.asdict(spec)}
        missing = missing_modules(spec.package) if spec.package is not None else []
        if missing:
            return {**base, "status": f"skipped ({PEER_INSTALL}; missing {', '.join(missing)})"}
        result = run_json_worker(
            "memtx.bench.peers",
            [f"--row={row}", *worker_args],
            timeout_s=timeout_s,
            threads=threads,
        )
        return {**base, **result}

    with ThreadPoolExecutor(max_workers=jobs) as pool:  # threads that each wait on a process
        results = list(
            progress_bar(
                pool.map(run_row, rows), total=len(rows), desc="peers", disable=not progress
            )
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "sizes": dataclasses.asdict(sizes),
        "steps": steps,
        "warmup": warmup,
        "threads": threads,
        "jobs": jobs,
    }
    (out_dir / "peers.json").write_text(json.dumps({**meta, "rows": results}, indent=1) + "\n")
    command = _command(
        out_dir=out_dir,
        steps=steps,
        warmup=warmup,
        threads=threads,
        sizes=sizes,
        rows=rows,
        jobs=jobs,
    )
    (out_dir / "peers.md").write_text(_markdown(results, sizes=sizes, command=command, jobs=jobs))
    return results


def _command(
    *,
    out_dir: Path,
    steps: int,
    warmup: int,
    threads: int | None,
    sizes: PeerSizes,
    rows: Sequence[str],
    jobs: int,
) -> str:
    parts = [
        "python",
        "-m",
        "memtx.bench.peers",
        "--out-dir",
        str(out_dir),
        f"--steps={steps}",
        f"--warmup={warmup}",
    ]
    if threads is not None:
        parts.append(f"--threads={threads}")
    if jobs > 1:
        parts.append(f"--jobs={jobs}")
    if sizes.overrides():
        parts.append(f"--sizes={json.dumps(sizes.overrides())}")
    if tuple(rows) != tuple(ROWS):
        parts += ["--rows", *rows]
    return shlex.join(parts)


def _giga(value: float, spec: str) -> str:
    return format(value / 1e9, spec)


def _markdown(results: list[dict[str, Any]], *, sizes: PeerSizes, command: str, jobs: int) -> str:
    header = [
        "row",
        "implementation",
        "model",
        "gradient",
        "loss on",
        "tokens/s",
        "s/step",
        "GFLOP/step",
        "GFLOP/s",
        "peak MB",
        "after build MB",
        "params",
    ]
    table = []
    for r in results:
        implementation = r["implementation"]
        if r.get("package") and r.get("version") not in (None, PEER_VERSIONS[r["package"]]):
            implementation += f" (installed: {r['version']})"
        cells = [f"`{r['row']}`", implementation, r["model"], r["gradient"], r["loss_on"]]
        if r.get("status") != "ok":
            table.append([*cells, r.get("status", "failed (no result)"), *[""] * 6])
            continue
        table.append(
            [
                *cells,
                f"{r['tokens_per_s']:,.0f}",
                f"{r['seconds_per_step']:.3f}",
                _giga(r["flops_per_step"], ",.2f") if r["flops_per_step"] else "n/a",
                _giga(r["flops_per_step"] / r["seconds_per_step"], ".1f")
                if r["flops_per_step"]
                else "n/a",
                f"{r['peak_rss_mb']:,.0f}",
                f"{r['after_build_mb']:,.0f}",
                f"{r['parameters']:,}",
            ]
        )
    by_row = {r["row"]: r for r in results if r.get("status") == "ok"}
    pairs = []
    for mine, peer, caveat in PAIRS:
        if mine in by_row and peer in by_row:
            a, b = by_row[mine], by_row[peer]
            pairs.append(
                [
                    f"`{mine}` / `{peer}`",
                    f"{a['tokens_per_s'] / b['tokens_per_s']:.2f}x",
                    f"{a['peak_rss_mb'] / b['peak_rss_mb']:.2f}x",
                    f"{a['flops_per_step'] / b['flops_per_step']:.2f}x"
                    if a["flops_per_step"] and b["flops_per_step"]
                    else "n/a",
                    caveat,
                ]
            )
    threads = next((r["threads"] for r in results if r.get("status") == "ok"), "?")
    s = sizes
    text = (
        "# Peers: memtx against the public implementations, one training step\n\n"
        f"Config: vocab {s.vocab_size}, width {s.d_model}, {s.n_heads} heads of "
        f"{s.d_model // s.n_heads}, FFN {s.d_ff}, segment {s.segment_len}, batch "
        f"{s.batch_size}, rollout {s.rollout} segments; Memformer {s.encoder_layers} encoder "
        f"+ {s.decoder_layers} decoder blocks, {s.memory_slots} slots; RMT {s.rmt_layers} "
        f"blocks, {s.memory_tokens} memory tokens. A step = forward + backward over the "
        "rollout + AdamW, fp32, on CPU; each row in its own process. tokens/s counts the "
        "tokens read per step (batch x rollout x segment) in every row; torch threads per "
        f"row: {threads}.\n\n"
        f"Reproduce: `{command}`\n\n"
        + (
            f"**{jobs} rows ran at a time: a smoke test, timings not comparable.**\n\n"
            if jobs > 1
            else ""
        )
        + markdown_table(header, table)
    )
    failed_counts = [r for r in results if r.get("status") == "ok" and r.get("flops_note")]
    if failed_counts:
        text += "\n" + "".join(f"- `{r['row']}`: {r['flops_note']}\n" for r in failed_counts)
    if pairs:
        text += "\n## memtx / peer (ratios)\n\n" + markdown_table(
            ["rows", "tokens/s", "peak MB", "FLOPs/step", "what is compared"], pairs
        )
    text += "\n## What differs\n\n"
    notes = mapping_notes(sizes)
    for title, key in (
        ("Memformer (memformer 0.3.1)", "memformer"),
        ("RMT (recurrent-memory-transformer-pytorch 0.7.0)", "rmt"),
        ("Measurements", "measurements"),
    ):
        text += f"{title}:\n\n" + "".join(f"- {line}\n" for line in notes[key]) + "\n"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--row", default="memtx-memformer-full", help=argparse.SUPPRESS)
    parser.add_argument(
        "--rows",
        nargs="+",
        default=list(ROWS),
        choices=list(ROWS),
        metavar="ROW",
        help=f"rows to run, in order (default: all of {', '.join(ROWS)})",
    )
    parser.add_argument("--steps", type=int, default=3, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per row")
    parser.add_argument(
        "--sizes",
        type=json.loads,
        default={},
        help="JSON overrides of the reference sizes, e.g. '{\"d_model\": 64}'",
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per row")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="rows at a time (>1: a smoke test, timings not comparable)",
    )
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks"))
    parser.add_argument(
        "--profile",
        choices=list(ROWS),
        metavar="ROW",
        help="profile one training step of ROW instead (writes profile-ROW.md)",
    )
    args = parser.parse_args(argv)
    try:
        sizes = PeerSizes(**args.sizes)
    except TypeError as exc:
        known = ", ".join(f.name for f in dataclasses.fields(PeerSizes))
        parser.error(f"--sizes: {exc} (known fields: {known})")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.profile:
        print(profile_row(row=args.profile, sizes=sizes, out_dir=args.out_dir, warmup=args.warmup))
        return 0
    if args.worker:
        return report_worker(
            lambda: run_worker(row=args.row, sizes=sizes, steps=args.steps, warmup=args.warmup)
        )
    run_peers_benchmark(
        out_dir=args.out_dir,
        steps=args.steps,
        warmup=args.warmup,
        threads=args.threads,
        sizes=sizes,
        rows=args.rows,
        timeout_s=args.timeout,
        jobs=args.jobs,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
