"""Can Memformer's decoder read H at all? Every segment repeats the previous one (random
ids, vocab 32, segments of 16); loss on segments 2-4 after 50..300 steps (chance 3.466).

    OMP_NUM_THREADS=1 SEED=0 python benchmarks/memformer-probe/repeat.py pos|nopos \
        [full|mrbp] [rand] [txl]
"""

import os
import sys
import time

import torch
import torch.nn.functional as F

import memtx
from memtx.recurrence import rollout

torch.set_num_threads(1)

pos = sys.argv[1] == "pos"
strategy = sys.argv[2] if len(sys.argv) > 2 else "full"
torch.manual_seed(int(os.environ.get("SEED", "0")))
S, V, B, R = 16, 32, 16, 4
model = memtx.build(
    "memformer",
    vocab_size=V,
    d_model=64,
    n_heads=2,
    segment_len=S,
    encoder_layers=1,
    decoder_layers=2,
    memory_slots=4,
    context_positions=pos,
)
if "rand" in sys.argv:
    for b in model.decoder:
        torch.nn.init.normal_(b.cross_attn.out_proj.weight, std=0.02)
if "txl" in sys.argv:
    model = memtx.build(
        "transformer_xl", vocab_size=V, d_model=64, n_heads=2, segment_len=S, n_layers=3, mem_len=S
    )
opt = torch.optim.AdamW(model.parameters(), lr=2e-3)


def batch():
    seg = torch.randint(0, V, (B, S))
    x = seg.repeat(1, R + 1)  # every segment equals the previous
    return x[:, : R * S], x[:, 1 : R * S + 1]


t0 = time.time()
for step in range(1, int(os.environ.get("STEPS", "300")) + 1):
    inp, tgt = batch()
    opt.zero_grad()
    n = tgt.numel()
    res = rollout(
        model,
        inp,
        tgt,
        model.init_memory(B),
        loss_fn=lambda lg, y: F.cross_entropy(lg.flatten(0, 1), y.flatten(), reduction="sum") / n,  # noqa: B023 (used at once)
        strategy=strategy,
    )
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if step % 50 == 0:
        # loss on segments 2.. only (segment 1 has no previous): evaluate
        with torch.no_grad():
            model.eval()
            inp, tgt = batch()
            mem = model.init_memory(B)
            ls = []
            for s in range(R):
                out = model.step(inp[:, s * S : (s + 1) * S], mem)
                mem = out.memory
                if s >= 1:
                    ls.append(
                        F.cross_entropy(
                            out.logits[:, :-1].flatten(0, 1),
                            tgt[:, s * S : (s + 1) * S - 1].flatten(),
                        ).item()
                    )
            model.train()
        print(
            f"pos={pos} step {step} repeat-loss {sum(ls) / len(ls):.3f} "
            f"(chance {torch.log(torch.tensor(float(V))):.3f}) {time.time() - t0:.0f}s",
            flush=True,
        )
