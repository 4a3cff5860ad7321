"""Greedy tokens/s of ``memtx.generate.Generation`` on the demo model, batch 1.

    python benchmarks/generation/rate.py REPO THREADS TOKENS REPEATS

REPO is a checkout of memtx (e.g. ``git worktree add /tmp/gen-before <commit>``), so the
code before and after a change can be run alternately (see ../generation.md). Prints the
best and median rate of REPEATS generations of TOKENS tokens after a 16-token prompt, and
a checksum of the tokens (the same for both checkouts: same tokens).
"""

import sys
import time

repo, threads, tokens, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, repo)

import torch  # noqa: E402

from memtx.config import load_run_config  # noqa: E402
from memtx.generate import Generation, Sampler  # noqa: E402
from memtx.models import from_config  # noqa: E402
from memtx.reading import read, start_context  # noqa: E402

torch.set_num_threads(threads)
torch.manual_seed(0)
model = from_config(load_run_config(repo + "/configs/demo.toml", overrides=[]).model).eval()
prompt = torch.randint(0, model.config.vocab_size, (1, 16))
context = read(model, prompt, start_context(model))
rates, out = [], []
for _ in range(repeats):
    generation = Generation(model, context, max_new_tokens=tokens, sampler=Sampler(temperature=0))
    start = time.perf_counter()
    out = list(generation)
    rates.append(tokens / (time.perf_counter() - start))
median = sorted(rates)[len(rates) // 2]
checksum = int(torch.stack(out).sum())
print(f"{repo} threads={threads} best={max(rates):.0f} median={median:.0f} tok/s sum={checksum}")
