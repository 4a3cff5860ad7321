"""ATen calls made for one greedy token of the demo model, by top-level op.

    python benchmarks/generation/aten_calls.py REPO

Counts every ATen call (nested ones too: the 645 of ../generation.md) and the top-level
ones (each a Python-to-C++ call), for token 21 of a ``Generation`` after a 16-token prompt.
"""

import sys
from collections import Counter

repo = sys.argv[1]
sys.path.insert(0, repo)

import torch  # noqa: E402
from torch.profiler import profile  # noqa: E402

from memtx.config import load_run_config  # noqa: E402
from memtx.generate import Generation, Sampler  # noqa: E402
from memtx.models import from_config  # noqa: E402
from memtx.reading import read, start_context  # noqa: E402

torch.set_num_threads(1)
torch.manual_seed(0)
model = from_config(load_run_config(repo + "/configs/demo.toml", overrides=[]).model).eval()
context = read(model, torch.randint(0, 256, (1, 16)), start_context(model))
generation = Generation(model, context, max_new_tokens=100, sampler=Sampler(temperature=0))
for _ in range(20):
    next(generation)
with profile() as prof:
    next(generation)
events = [e for e in prof.events() if e.name.startswith("aten::")]


def is_top(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return False
        parent = parent.cpu_parent
    return True


def calls(event) -> int:
    return 1 + sum(calls(c) for c in event.cpu_children if c.name.startswith("aten::"))


nested, top = Counter(), Counter()
for event in filter(is_top, events):
    nested[event.name] += calls(event)
    top[event.name] += 1
print(f"ATen calls: {len(events)} in all, {sum(top.values())} top-level")
for name, count in nested.most_common():
    print(f"{name:45s} top-level {top[name]:3d}  with nested {count}")
