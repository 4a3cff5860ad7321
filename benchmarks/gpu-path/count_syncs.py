"""Host syncs per 4-segment training rollout, per model and strategy.

Run from a checkout's root (the counter is its tests/test_host_syncs.py, copied into an
older checkout to count there):

    OMP_NUM_THREADS=1 python benchmarks/gpu-path/count_syncs.py
"""

import collections
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, ".")
import memtx
from memtx.recurrence import rollout
from tests.models.small import SMALL, small_model, tokens
from tests.test_host_syncs import HostSyncs

torch.set_num_threads(1)
print("memtx from", memtx.__file__)
for key in SMALL:
    row = []
    for strategy, truncate in (("full", 1), ("truncated", 2), ("mrbp", 1)):
        model = small_model(key).train()
        batch, seg = 3, model.config.segment_len
        data = tokens(batch, 4 * seg + 1)  # 4 full segments
        with HostSyncs() as syncs:
            rollout(
                model,
                data[:, :-1],
                data[:, 1:],
                model.init_memory(batch),
                loss_fn=lambda logits, y: F.cross_entropy(logits.flatten(0, 1), y.flatten()),
                strategy=strategy,
                truncate=truncate,
            )
        kinds = collections.Counter(entry.split(" ")[0] for entry in syncs.where)
        row.append(f"{strategy}: {len(syncs.where)} {dict(kinds)}")
    print(key, " | ".join(row))
