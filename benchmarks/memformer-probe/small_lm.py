"""Issue 20's small LM probe: a small Memformer (or Transformer-XL / transformer) on kjv
windows for 300 steps in a hand-written loop (warm-up 50, lr 2e-3, clip 1), then test bpc
overall, at a segment's first 8 positions and at the rest, with and without H.

    OMP_NUM_THREADS=1 python benchmarks/memformer-probe/small_lm.py [pos] [txl|tf] [joint]
    env: STEPS, NL (tf depth), DIAG_TRAIN (a diagnostic during training), DETACH_H=1
    (no gradient from the decoder into H), OWN_EMB=1 (the encoder gets its own embedding)
"""

import os
import sys

import torch
import torch.nn.functional as F

import memtx
from memtx.config import load_run_config
from memtx.recurrence import rollout
from memtx.train import prepare_data

torch.set_num_threads(1)

torch.manual_seed(0)
run = load_run_config("configs/memformer-shakespeare.toml", overrides=["data.corpus=kjv"])
data = prepare_data(run.data)
train = torch.as_tensor(data.train).long()
test = torch.as_tensor(data.test).long()
S, B, R = 32, 16, 4
pos = "pos" in sys.argv
SIZES = {"vocab_size": 256, "d_model": 96, "n_heads": 4, "segment_len": S}
model = memtx.build(
    "memformer",
    **SIZES,
    encoder_layers=1,
    decoder_layers=2,
    memory_slots=16,
    context_positions=pos and "joint" not in sys.argv,
    context_attention="joint" if "joint" in sys.argv else "cross",
    use_memory="nomem" not in sys.argv,
)
if "tf" in sys.argv:
    model = memtx.build("transformer", **SIZES, n_layers=int(os.environ.get("NL", "2")))
if "txl" in sys.argv:
    model = memtx.build("transformer_xl", **SIZES, n_layers=3, mem_len=S)
if os.environ.get("OWN_EMB"):
    import types

    model.enc_embed = torch.nn.Embedding(256, 96)
    torch.nn.init.normal_(model.enc_embed.weight, std=0.02)
    orig_encode = model.encode

    def encode(self, tokens, keys, slots):
        self.embed_tokens = lambda t: self.enc_embed(t)
        try:
            return orig_encode(tokens, keys, slots)
        finally:
            del self.embed_tokens

    model.encode = types.MethodType(encode, model)
if os.environ.get("DETACH_H"):
    orig = model._decoder_context

    def patched(hidden, keys, prev_len):
        return orig(None if hidden is None else hidden.detach(), keys, prev_len)

    model._decoder_context = patched
if os.environ.get("DIAG_TRAIN"):
    model.set_diagnostic(os.environ["DIAG_TRAIN"])
opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
strategy = os.environ.get("STRAT", "full")
for step in range(1, int(os.environ.get("STEPS", "300")) + 1):
    starts = torch.randint(0, len(train) - R * S - 2, (B,))
    x = torch.stack([train[s : s + R * S + 1] for s in starts.tolist()])
    inp, tgt = x[:, :-1], x[:, 1:]
    n = tgt.numel()
    opt.zero_grad()
    rollout(
        model,
        inp,
        tgt,
        model.init_memory(B),
        strategy=strategy,
        loss_fn=lambda lg, y: F.cross_entropy(lg.flatten(0, 1), y.flatten(), reduction="sum") / n,  # noqa: B023 (used at once)
    )
    if step % 50 == 0 or step < 4:
        groups = {}
        for name, prm in model.named_parameters():
            if prm.grad is not None:
                groups.setdefault(name.split(".")[0], []).append(prm.grad.norm() ** 2)
        print(step, {k: round(float(sum(v)) ** 0.5, 3) for k, v in groups.items()}, flush=True)
    torch.nn.utils.clip_grad_norm_(model.parameters(), float(os.environ.get("CLIP", "1.0")))
    for g in opt.param_groups:
        g["lr"] = 2e-3 * min(1.0, step / 50)
    opt.step()
model.eval()
trained = model.state_dict()
for diag in ("none", "context_masked"):
    if "txl" in sys.argv:
        if diag != "none":
            # the same weights without the cache
            model = memtx.build("transformer_xl", **SIZES, n_layers=3, mem_len=0).eval()
            model.load_state_dict(trained)
    elif "tf" in sys.argv:
        pass
    else:
        model.set_diagnostic(diag)
    x = test[: 8 * 4096].view(8, -1)
    mem = model.init_memory(8)
    tot = torch.zeros(S)
    c = 0
    with torch.no_grad():
        for s in range(0, x.shape[1] - S - 1, S):
            out = model.step(x[:, s : s + S], mem)
            mem = out.memory
            if s:
                tot += (
                    F.cross_entropy(
                        out.logits.flatten(0, 1),
                        x[:, s + 1 : s + S + 1].flatten(),
                        reduction="none",
                    )
                    .view(8, S)
                    .sum(0)
                )
                c += 8
    per = tot / c / 0.6931
    print(
        f"pos={pos} {strategy} {diag}: overall {per.mean():.4f} "
        f"first8 {per[:8].mean():.3f} rest {per[8:].mean():.3f}",
        flush=True,
    )
