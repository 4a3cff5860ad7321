"""ARMT on copy 9x8 at RMT's budget (repro rmt's copy settings), resumable across sessions.

    memtx repro rmt --variants armt --runs runs/repro-armt-copy   # stop it once
    #   runs/repro-armt-copy/copy-armt/config.json is written
    OMP_NUM_THREADS=1 python benchmarks/armt/copy.py

Trains (or resumes) runs/armt-copy, then prints the row of benchmarks/armt/copy.md and the
accuracy at each source length. Training minutes come from the metrics (step time x
log_every per record), so sessions ended by SIGTERM count; validation is left out.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from memtx.data.tasks import make_task
from memtx.evaluate import evaluate_task
from memtx.repro.rmt import task_row
from memtx.train import load_saved_run, train

SOURCE = Path("runs/repro-armt-copy/copy-armt")
FOLDER = Path("runs/armt-copy")


def main() -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    resume = (FOLDER / "config.json").exists()
    run = load_saved_run(FOLDER if resume else SOURCE)
    result = train(run, out_dir=FOLDER, resume=resume, progress=False)
    records = [json.loads(line) for line in (FOLDER / "metrics.jsonl").read_text().splitlines()]
    every = run.train.log_every
    minutes = sum(r["step_seconds"] * every for r in records if r.get("split") == "train") / 60
    row = task_row(
        run,
        result.model,
        task="copy",
        display="armt",
        steps=result.steps,
        minutes=minutes,
        reached=result.valid,
        samples=1000,
    )
    assert run.task is not None
    by_source = {}
    for source in (24, 28, 30, 32, 36):
        params = {**run.task.task_params(), "source_len": source}
        task = make_task(
            run.task.name,
            segments=9,
            segment_len=run.model.segment_len,
            seed=run.train.seed,
            **params,
        )
        scored = evaluate_task(
            result.model, task, samples=1000, device=result.model.device, seed=12345
        )
        by_source[source] = {k: scored[k] for k in ("token_accuracy", "exact_match")}
    print(json.dumps({**row, "by_source_len": by_source}, indent=1))


if __name__ == "__main__":
    main()
