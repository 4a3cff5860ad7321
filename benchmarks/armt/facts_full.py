"""ARMT on facts-in-noise at RMT's budget (``memtx repro rmt``'s facts settings), resumable.

OMP_NUM_THREADS=1 python benchmarks/armt/facts_full.py
"""

import json
import time
from pathlib import Path

import torch

from memtx.repro.rmt import facts_length_rows, facts_run_config
from memtx.train import load_saved_run, train

torch.set_num_threads(1)

folder = Path("runs/facts-armt-full")
run = facts_run_config(model="armt", train_segments=8, steps=6000, device="cpu")
resume = (folder / "config.json").exists()
if resume:
    run = load_saved_run(folder)
began = time.perf_counter()
result = train(run, out_dir=folder, resume=resume, progress=False)
minutes = (time.perf_counter() - began) / 60
print(json.dumps({"steps": result.steps, "valid": result.valid, "minutes": minutes}), flush=True)
rows = facts_length_rows(
    run,
    result.model,
    segments=(8, 16, 64, 256, 1024),
    samples=200,
    echo=lambda line: print(line, flush=True),
)
out = Path("benchmarks/armt/facts-full.json")
out.write_text(json.dumps({"steps": result.steps, "rows": rows}, indent=1) + "\n")
