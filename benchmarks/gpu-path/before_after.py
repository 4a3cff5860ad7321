"""CPU step times of two checkouts side by side: one worker process per checkout, steps
alternated (the order flipping every round), so a load that drifts over time hits both.

    python benchmarks/gpu-path/before_after.py /tmp/before /work/main --rounds 6

Rows: training steps of the reference config (the peers table's rows and the other
models: batch 8, rollout 8 segments of 128, forward + backward + clip + AdamW) and
no-grad streaming of 4,096 tokens at batch 1 (the scaling table's 4K point). Prints one
JSON line per row: each checkout's median seconds and the median of per-round ratios
(second checkout / first).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

WORKER = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import torch
import torch.nn.functional as F
import memtx
from memtx.bench.throughput import COMMON, REFERENCE
from memtx.recurrence import rollout, stream
from memtx.training import apply_update

torch.set_num_threads(1)
spec = json.loads(sys.argv[2])
torch.manual_seed(0)
fields = {**COMMON, **REFERENCE[spec["model"]]}
model = memtx.build(spec["model"], **fields)
if spec["kind"] == "train":
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch, rollout_len, seg = 8, 8, fields["segment_len"]
    data = torch.randint(0, 256, (batch, rollout_len * seg + 1))
    count = batch * rollout_len * seg

    def loss_fn(logits, y):
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum") / count

    def one():
        optimizer.zero_grad(set_to_none=True)
        result = rollout(model, data[:, :-1], data[:, 1:], model.init_memory(batch),
                         loss_fn=loss_fn, strategy=spec["strategy"])
        apply_update(model, optimizer, grad_clip=1.0, loss=float(result.loss))
else:
    model.eval()
    data = torch.randint(0, 256, (1, 4096))

    def one():
        for _ in stream(model, data, model.init_memory(1)):
            pass

for line in sys.stdin:
    start = time.perf_counter()
    one()
    print(time.perf_counter() - start, flush=True)
"""

ROWS = [
    {"kind": "train", "model": "memformer", "strategy": "full"},
    {"kind": "train", "model": "memformer", "strategy": "mrbp"},
    {"kind": "train", "model": "rmt", "strategy": "full"},
    {"kind": "train", "model": "rmt", "strategy": "mrbp"},
    {"kind": "train", "model": "armt", "strategy": "full"},
    {"kind": "train", "model": "armt", "strategy": "mrbp"},
    {"kind": "train", "model": "transformer_xl", "strategy": "full"},
    {"kind": "train", "model": "transformer", "strategy": "full"},
    {"kind": "stream", "model": "memformer", "strategy": "-"},
    {"kind": "stream", "model": "rmt", "strategy": "-"},
    {"kind": "stream", "model": "armt", "strategy": "-"},
    {"kind": "stream", "model": "transformer_xl", "strategy": "-"},
]


def compare(roots: list[str], spec: dict[str, str], *, rounds: int, warmup: int) -> dict:
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, root, json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        )
        for root in roots
    ]
    times: list[list[float]] = [[], []]
    for index in range(warmup + rounds):
        order = [0, 1] if index % 2 == 0 else [1, 0]
        for which in order:
            worker = workers[which]
            assert worker.stdin is not None and worker.stdout is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
            seconds = float(worker.stdout.readline())
            if index >= warmup:
                times[which].append(seconds)
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.close()
        worker.wait()
    per_round = [b / a for a, b in zip(times[0], times[1], strict=True)]
    return {
        **spec,
        "before_s": statistics.median(times[0]),
        "after_s": statistics.median(times[1]),
        "ratio_after_over_before": statistics.median(per_round),
        "ratio_min": min(per_round),
        "ratio_max": max(per_round),
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--only", nargs="*", default=None, help="model names to keep")
    parser.add_argument("--kind", choices=["train", "stream"], default=None, help="rows to keep")
    args = parser.parse_args()
    for spec in ROWS:
        if (args.only and spec["model"] not in args.only) or args.kind not in (None, spec["kind"]):
            continue
        row = compare([args.before, args.after], spec, rounds=args.rounds, warmup=args.warmup)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
