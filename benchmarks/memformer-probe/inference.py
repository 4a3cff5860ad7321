"""Issue 20's inference comparison: trained runs scored on the same test bytes, side by
side in one process (rounds alternate the order), tokens/s and state per stream.

    OMP_NUM_THREADS=1 python benchmarks/memformer-probe/inference.py RUN [RUN ...]
"""

import statistics
import sys
import time
from pathlib import Path

import torch

from memtx.bench.throughput import state_kb_per_stream
from memtx.evaluate import evaluate_tokens
from memtx.train import load_trained, prepare_data

torch.set_num_threads(1)

runs = [Path(arg) for arg in sys.argv[1:]]
models = {run: load_trained(run) for run in runs}
tokens = prepare_data(models[runs[0]][0].data).test[:40_000]
times: dict[Path, list[float]] = {run: [] for run in runs}
bpc: dict[Path, float] = {}
for index in range(4):
    for run in runs if index % 2 == 0 else reversed(runs):
        began = time.perf_counter()
        result = evaluate_tokens(models[run][1], tokens, rows=8)
        if index:  # the first round warms up
            times[run].append(time.perf_counter() - began)
        bpc[run] = result.bpc
base = statistics.median(times[runs[-1]])
for run in runs:
    median = statistics.median(times[run])
    print(
        f"{run}: bpc {bpc[run]:.4f} on {len(tokens):,} bytes, {len(tokens) / median:,.0f} "
        f"tokens/s ({base / median:.2f}x the last), state "
        f"{state_kb_per_stream(models[run][1]):.1f} KB per stream"
    )
