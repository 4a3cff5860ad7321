"""What a trained Memformer's slots hold and whether anything reads them.

    OMP_NUM_THREADS=1 python benchmarks/memformer-probe/slots.py RUN_DIR

Streams 8 rows of the test split through the model, one segment at a time, and prints:

- the encoder readers' output norm against the residual stream they add to (a reader that
  adds the same vector for every input is a bias, not a memory);
- the writer's weight on the slot itself (its retention) and the norms of what BMN adds:
  the retained part, the written part and the bias v_i;
- how far the slots sit from the terminal state, and how much they differ across streams
  and over time (slots that hold content differ between streams reading other text);
- the gradient of the next segment's loss with respect to the slots read;
- each memory weight's norm against its initial norm (0.02 * sqrt(numel)): a part that
  learned nothing stays at (or, with weight decay, just under) its initial norm;
- each part's gradient norm over its weight norm in training's setting (32 continuous
  streams of the train split, rollouts of 2 segments, full BPTT, the memory carried from
  two earlier rollouts): how strongly training pulls on the writer against the decoder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from memtx.models.memformer import Memformer
from memtx.modules.attention import merge_heads, split_heads
from memtx.recurrence import rollout
from memtx.train import load_trained, prepare_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=4096, help="per row")
    args = parser.parse_args()
    torch.manual_seed(0)
    run, model = load_trained(args.run)
    assert isinstance(model, Memformer) and model.writer is not None, "a Memformer with memory"
    model.eval()
    seg = run.model.segment_len
    test = torch.as_tensor(prepare_data(run.data).test[: args.rows * args.tokens]).long()
    ids = test.view(args.rows, -1)  # (B, T)

    reads: dict[int, list[tuple[float, float]]] = {i: [] for i in range(len(model.encoder))}

    def hook(index: int):
        def record(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            reads[index].append(
                (output.norm(dim=-1).mean().item(), inputs[0].norm(dim=-1).mean().item())
            )

        return record

    for index, block in enumerate(model.encoder):
        assert block.cross_attn is not None
        block.cross_attn.register_forward_hook(hook(index))

    memory = model.init_memory(args.rows)
    kept, history = [], []
    with torch.no_grad():
        for start in range(0, ids.shape[1] - seg, seg):
            out = model.step(ids[:, start : start + seg], memory)
            memory = out.memory
            if start >= 2 * seg:  # past a stream's start
                kept.append(out.aux["write_attention"][..., 0].mean().item())
                history.append(memory.slots.clone())
    print("encoder reader |output| / |residual|, per block:")
    for index, pairs in reads.items():
        pairs = pairs[2:]
        out_norm = sum(p[0] for p in pairs) / len(pairs)
        res_norm = sum(p[1] for p in pairs) / len(pairs)
        print(f"  block {index}: {out_norm:.2f} / {res_norm:.2f}")
    print(f"writer weight on the slot itself (retention): {sum(kept) / len(kept):.4f}")
    slots = torch.stack(history)  # (T, B, k, d)
    terminal = model.terminal_state().detach()
    print(f"slots' distance to the terminal state: {(slots - terminal).norm(dim=-1).mean():.4f}")
    print(f"slots' spread across streams: {slots.std(1).norm(dim=-1).mean():.4f}")
    print(f"slots' spread over time: {slots.std(0).norm(dim=-1).mean():.4f}")

    with torch.no_grad():
        hidden = model.encode(
            ids[:, 20 * seg : 21 * seg],
            torch.ones_like(ids[:, :seg], dtype=torch.bool),
            memory.slots,
        )
        written, attention = model.writer(memory.slots, hidden, None)
        # The writer's retained part, as SlotWriter.forward computes it.
        per_head = split_heads(memory.slots, attention.shape[1])  # (B, h, k, hd)
        retained = merge_heads(attention[..., :1] * per_head)  # (B, k, d)
    bias = model.slot_bias.norm(dim=-1).mean().item() if model.slot_bias is not None else 0.0
    print(
        f"BMN's sum: |retained| {retained.norm(dim=-1).mean():.3f}, "
        f"|written| {(written - retained).norm(dim=-1).mean():.3f}, |v_i| {bias:.3f}"
    )

    segment = ids[:, 11 * seg : 12 * seg + 1]
    leaf = memory.slots.clone().requires_grad_(True)
    out = model.step(segment[:, :-1], memory._replace(slots=leaf))
    F.cross_entropy(out.logits.flatten(0, 1), segment[:, 1:].flatten()).backward()
    assert leaf.grad is not None
    print(f"|d loss / d slots| per slot: {leaf.grad.norm(dim=-1).mean():.2e}")

    print("|gradient| / |weight| per part, one training rollout:")
    train_ids = torch.as_tensor(prepare_data(run.data).train[: 32 * 6 * seg + 1]).long()
    inputs, targets = train_ids[:-1].view(32, -1), train_ids[1:].view(32, -1)

    def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (
            F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="sum")
            / target.numel()
        )

    model.train()
    carried = model.init_memory(32)
    for index in range(3):
        model.zero_grad()
        window = slice(index * 2 * seg, (index + 1) * 2 * seg)
        result = rollout(model, inputs[:, window], targets[:, window], carried, loss_fn=loss_fn)
        carried = result.memory
    parts: dict[str, list[float]] = {}
    for name, param in model.named_parameters():
        if param.grad is None:
            continue
        part = "reader" if ".cross_attn." in name else name.split(".")[0]
        sums = parts.setdefault(part, [0.0, 0.0])
        sums[0] += param.grad.norm().item() ** 2
        sums[1] += param.norm().item() ** 2
    for part, (grad, weight) in parts.items():
        print(f"  {part}: {(grad / weight) ** 0.5:.1e}")

    print("weight norm / initial norm:")
    for name, param in model.named_parameters():
        memory_part = name.startswith("writer.") or ".cross_attn." in name
        if param.dim() == 2 and (memory_part or name.startswith("decoder.1.")):
            ratio = param.norm().item() / (0.02 * param.numel() ** 0.5)
            print(f"  {name}: {ratio:.2f}")


if __name__ == "__main__":
    main()
