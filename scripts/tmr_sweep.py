"""Tune TMR's replay buffer on the VALIDATION split only (the sweep behind electra-tmr.toml).

Pre-trains the preset with each buffer setting (and without replay) for each tuning seed,
fine-tunes every discriminator on the play and speaker tasks, and prints the mean valid
accuracy of each setting. Test accuracy is never read. The tuning seeds differ from the
seeds of ``memtx repro tmr`` (0-4).

    python scripts/tmr_sweep.py --seeds 100 101 --out runs/tmr-sweep

Rule, fixed before the sweep: take the setting with the best mean valid accuracy (play and
speaker averaged over the seeds) among ratios <= 0.1 (the overhead budget).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from memtx.data import prepare_data
from memtx.electra import build_tasks, evaluate_downstream, load_electra_run, pretrain

GRID = {
    "none": ["replay.enabled=false"],
    "c512-gn": ["replay.capacity=512", 'replay.priority="grad_norm"'],
    "c512-lc": ["replay.capacity=512", 'replay.priority="loss_change"'],
    "c2048-gn": ["replay.capacity=2048", 'replay.priority="grad_norm"'],
    "c2048-lc": ["replay.capacity=2048", 'replay.priority="loss_change"'],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/electra-tmr.toml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[100, 101])
    parser.add_argument("--settings", nargs="+", default=list(GRID), choices=list(GRID))
    parser.add_argument("--out", type=Path, default=Path("runs/tmr-sweep"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = load_electra_run(args.config)
    data = prepare_data(base.data)
    tasks = build_tasks(base.finetune, tokenizer=data.tokenizer)  # every run saves this one
    results = {}
    for name in args.settings:
        for seed in args.seeds:
            sets = [*GRID[name], f"pretrain.seed={seed}", f"replay.seed={seed}"]
            run = load_electra_run(args.config, overrides=sets)
            run_dir = args.out / f"{name}-seed{seed}"
            if not (run_dir / "result.json").exists():
                pretrain(run, out_dir=run_dir, data=data)
            scores = evaluate_downstream(run_dir, seed=seed, tasks=tasks)
            valid = {task: result.valid_accuracy for task, result in scores.items()}
            results[f"{name}-seed{seed}"] = valid
            print(name, seed, json.dumps(valid), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"sweep-{'-'.join(map(str, args.seeds))}.json").write_text(json.dumps(results))
    for name in args.settings:
        rows = [v for k, v in results.items() if k.rsplit("-seed", 1)[0] == name]
        mean = statistics.fmean(statistics.fmean(r.values()) for r in rows)
        print(f"{name:10s} mean valid accuracy {100 * mean:.2f}")


if __name__ == "__main__":
    main()
