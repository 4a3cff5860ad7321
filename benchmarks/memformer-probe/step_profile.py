"""Where a Memformer training step's time goes: forward time per part (module hooks),
the rest of the step (backward, clipping, AdamW), at a run preset's size.

    OMP_NUM_THREADS=1 python benchmarks/memformer-probe/step_profile.py \
        configs/memformer-shakespeare.toml
"""

import statistics
import sys
import time
from collections import defaultdict

import torch
import torch.nn.functional as F

import memtx
from memtx.bench.throughput import preset_sizes
from memtx.recurrence import rollout
from memtx.training import apply_update

torch.set_num_threads(1)

name, sizes, train = preset_sizes(sys.argv[1])
model = memtx.build(name, **sizes).train()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
batch, segments, seg = train["batch_size"], train["rollout"], sizes["segment_len"]
tokens = torch.randint(0, sizes["vocab_size"], (batch, segments * seg + 1))
count = batch * segments * seg
spent: dict[str, float] = defaultdict(float)
started: dict[int, float] = {}


def timed(label: str, module: torch.nn.Module) -> None:
    def before(mod: torch.nn.Module, args: object) -> None:
        started[id(mod)] = time.perf_counter()

    def after(mod: torch.nn.Module, args: object, out: object) -> None:
        spent[label] += time.perf_counter() - started.pop(id(mod))

    module.register_forward_pre_hook(before)
    module.register_forward_hook(after)


for block in model.encoder:
    timed("encoder blocks (forward)", block)
for block in model.decoder:
    timed("decoder blocks (forward)", block)
if model.writer is not None:
    timed("slot writer (forward)", model.writer)


def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum") / count


steps = []
for index in range(6):
    began = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    result = rollout(
        model,
        tokens[:, :-1],
        tokens[:, 1:],
        model.init_memory(batch),
        loss_fn=loss_fn,
        strategy=train["strategy"],
    )
    apply_update(model, optimizer, grad_clip=1.0, loss=float(result.loss))
    if index >= 1:  # the first step warms up
        steps.append(time.perf_counter() - began)
    else:
        spent.clear()
step = statistics.median(steps)
print(f"{sys.argv[1]}: {name}, strategy {train['strategy']}, {batch} x {segments} x {seg}")
print(f"step {step:.3f} s (median of {len(steps)})")
forward = 0.0
for label, seconds in spent.items():
    per_step = seconds / len(steps)
    forward += per_step
    print(f"  {label}: {per_step:.3f} s ({per_step / step:.0%})")
print(
    f"  the rest (embedding, head, loss, backward, AdamW): {step - forward:.3f} s "
    f"({(step - forward) / step:.0%})"
)
