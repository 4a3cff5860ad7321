"""Does RMT-SmolLM2's memory carry a qa1 fact from one segment to the next? A short probe.

`memtx repro pretrained --task qa1` scores 0.41 at 4 segments where a model fine-tuned
with the input in view scores 0.97. Split by where the supporting fact ends, the memory
rows answer every question whose fact is in the question's own segment and few whose
fact is earlier. This probe trains the first curriculum stage only (2 segments of 128,
facts hidden in background, 150 steps of batch 2, lr 1e-3, memory + LoRA rank 8), with
any model/train overrides, and scores 128 held-out 2-segment samples (background from
the test split's documents) split by distance:

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 python benchmarks/pretrained_qa1_handoff.py \\
        train runs/hand-base
    ... train runs/hand-scale model.memory_scale=embedding
    ... train runs/hand-mlp \
        'train.lora_targets=["q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"]'
    ... score runs/hand-base runs/hand-scale runs/hand-mlp

`score` prints a markdown table: exact match with the fact in view (0 segments back) and
one segment back, with the samples of each. Chance is 1/6.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from memtx.bench.common import binned_distances, distance_markdown
from memtx.config import RunConfig
from memtx.config.loading import apply_overrides
from memtx.config.run import SECTIONS
from memtx.repro.pretrained import EVAL_SEED, PretrainedRepro
from memtx.train import evaluate_task_run, train

SETTINGS = PretrainedRepro(
    task="qa1",
    stages=(2,),
    stage_steps=150,
    batch_size=2,
    lr=1e-3,
    vary_segments=True,
    models=("rmt",),
)
SAMPLES = 128


def train_probe(out: Path, overrides: list[str]) -> None:
    raw = SETTINGS.run_config("rmt").to_dict()
    run = RunConfig.from_dict(apply_overrides(raw, overrides, sections=SECTIONS))
    began = time.perf_counter()
    result = train(run, out_dir=out, progress=True)
    summary = {"steps": result.steps, "seconds": time.perf_counter() - began}
    (out / "result.json").write_text(json.dumps({**summary, "overrides": overrides}) + "\n")


def score(runs: list[Path]) -> str:
    rows = []
    for run_dir in runs:
        result = evaluate_task_run(
            run_dir, segments=2, samples=SAMPLES, seed=EVAL_SEED, by_distance=True
        )
        overrides = json.loads((run_dir / "result.json").read_text()).get("overrides", [])
        recipe = " ".join(overrides) or "the repro recipe"
        label = f"{run_dir.name} ({recipe}), all {result['exact_match']:.2f}"
        rows.append((label, binned_distances(result)))
    return distance_markdown(rows, first="run (overrides), exact match")


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    if command == "train":
        train_probe(Path(rest[0]), rest[1:])
    elif command == "score":
        print(score([Path(r) for r in rest]))
    else:
        sys.exit(
            "usage: pretrained_qa1_handoff.py train OUT [section.key=value ...] | score RUN ..."
        )
