"""What every benchmark shares: one configuration per fresh process, peak memory, tables."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from memtx.config import TrainConfig

__all__ = [
    "DISTANCE_BINS",
    "binned_distances",
    "distance_markdown",
    "GRAD_CLIP",
    "count_flops",
    "markdown_table",
    "max_rss_mb",
    "peak_memory_mb",
    "peak_rss_mb",
    "reset_peak_rss",
    "report_worker",
    "run_json_worker",
]

#: The gradient clip of memtx's timed updates (``memtx.training.apply_update``): that of
#: ``memtx train`` by default, so a benchmark's step is the loop's step.
GRAD_CLIP: float = TrainConfig.grad_clip


def max_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes vs kB


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Start a new peak-RSS window (Linux: ``/proc/self/clear_refs``); False if unsupported.

    Afterwards :func:`peak_rss_mb` reports the peak since this call, so a one-off peak
    (e.g. loading a checkpoint with its optimizer state) does not hide a later one.
    """
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return False
    return _status_mb("VmHWM") is not None


def peak_rss_mb() -> float:
    """Peak RSS since the process started or since :func:`reset_peak_rss`, in MB."""
    peak = _status_mb("VmHWM")
    return peak if peak is not None else max_rss_mb()


def peak_memory_mb(device: torch.device) -> float:
    """CUDA's peak allocation on a GPU, the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return max_rss_mb()


def run_json_worker(
    module: str, args: Sequence[str], *, timeout_s: float | None, threads: int | None
) -> dict[str, Any]:
    """Run ``python -m module --worker args...`` in a fresh process; its last JSON line.

    A fresh process per configuration keeps each peak-memory reading clean. Failures come
    back as ``{"status": "failed (reason)"}`` instead of raising.
    """
    command = [sys.executable, "-m", module, "--worker", *args]
    root = str(Path(__file__).resolve().parents[2])  # the worker imports this very memtx
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
    }
    if threads is not None:
        command.append(f"--threads={threads}")
        env["OMP_NUM_THREADS"] = str(threads)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"status": f"failed (timeout after {timeout_s:g} s)"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if lines:
        return json.loads(lines[-1])
    if done.returncode < 0:
        reason = f"killed by signal {-done.returncode}; out of memory?"
    else:
        errors = done.stderr.strip().splitlines()
        reason = errors[-1] if errors else f"exit code {done.returncode}"
    return {"status": f"failed ({reason})"}


def report_worker(measure: Callable[[], dict[str, Any]]) -> int:
    """The worker side of :func:`run_json_worker`: print ``measure()`` as one JSON line.

    A failure prints ``{"status": "failed (Type: message)"}`` instead, so the table that
    launched the worker shows a failed row rather than crashing. Returns the exit code.
    """
    try:
        result = measure()
    except Exception as exc:  # reported as a failed row, not a crash of the table
        print(json.dumps({"status": f"failed ({type(exc).__name__}: {exc})"}))
        return 1
    print(json.dumps(result))
    return 0


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _sdpa_forward_flops(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def _sdpa_backward_flops(
    grad_out: Any, query: Any, key: Any, value: Any, *args: Any, **kwargs: Any
) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return 2 * sdpa_flop_count(query, key, value)  # dQ, dK, dV, dP: no recomputed scores


def count_flops(step: Callable[[], object]) -> int:
    """FLOPs of one call of ``step``, CPU SDPA included (torch's counter skips it)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    counter = FlopCounterMode(
        display=False,
        custom_mapping={
            aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_forward_flops,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_backward_flops,
        },
    )
    with counter:
        step()
    return int(counter.get_total_flops())


#: segments between the supporting fact's end and the question, binned: (label, first, last)
DISTANCE_BINS = (
    ("0", 0, 0),
    ("1", 1, 1),
    ("2-3", 2, 3),
    ("4-15", 4, 15),
    ("16-63", 16, 63),
    ("64-255", 64, 255),
    ("256+", 256, 1 << 62),
)


def binned_distances(result: dict[str, float]) -> dict[str, list[int]]:
    """``evaluate_haystacks(by_distance=True)``'s split, popped from ``result`` and binned
    by :data:`DISTANCE_BINS`: label -> [right, samples]."""
    binned: dict[str, list[int]] = {}
    for key in [k for k in result if k.startswith("samples_back_")]:
        back, rows = int(key.removeprefix("samples_back_")), int(result.pop(key))
        hits = round(result.pop(f"exact_match_back_{back}") * rows)
        label = next(name for name, first, last in DISTANCE_BINS if first <= back <= last)
        cell = binned.setdefault(label, [0, 0])
        cell[0], cell[1] = cell[0] + hits, cell[1] + rows
    return {name: binned[name] for name, _, _ in DISTANCE_BINS if name in binned}


def distance_markdown(rows: list[tuple[str, dict[str, list[int]]]], *, first: str) -> str:
    """A table of binned splits (:func:`binned_distances`): one row per (label, split),
    a column per bin that occurs, each cell ``exact match (samples)``."""
    used = {name for _, split in rows for name in split}
    bins = [name for name, _, _ in DISTANCE_BINS if name in used]

    def shown(split: dict[str, list[int]], name: str) -> str:
        return f"{split[name][0] / split[name][1]:.2f} ({split[name][1]})" if name in split else ""

    return markdown_table(
        [first, *bins], [[label, *(shown(s, b) for b in bins)] for label, s in rows]
    )
