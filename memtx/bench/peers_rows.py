"""The rows of ``memtx bench peers``: each implementation at the same sizes, and its timing.

A row (:data:`ROWS`) is memtx's Memformer or RMT, or lucidrains' ``memformer==0.3.1`` or
``recurrent-memory-transformer-pytorch==0.7.0``, built at :class:`PeerSizes` (default:
the reference config) with one full training step on random tokens (:func:`make_trainer`).
memtx rows update through the training loop's ``memtx.training.apply_update`` (clip +
AdamW); the peer rows call their optimizer themselves, as their own examples do.
:func:`run_worker` times one row in this process (meant to be a fresh one, so its peak
RSS is its own); :func:`profile_row` shows where one step's time goes;
:func:`mapping_notes` says how the sizes map onto the peers' constructors.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memtx.bench.common import GRAD_CLIP, count_flops, markdown_table, max_rss_mb
from memtx.bench.throughput import COMMON, REFERENCE

__all__ = [
    "PEER_INSTALL",
    "PEER_VERSIONS",
    "ROWS",
    "PeerSizes",
    "RowSpec",
    "Trainer",
    "make_trainer",
    "mapping_notes",
    "missing_modules",
    "profile_row",
    "run_worker",
]

#: What to install for the peer rows (pip brings einops and hyper-connections along).
PEER_INSTALL = "pip install memformer==0.3.1 recurrent-memory-transformer-pytorch==0.7.0"
#: The versions whose constructors this file maps the reference config onto.
PEER_VERSIONS = {"memformer": "0.3.1", "recurrent-memory-transformer-pytorch": "0.7.0"}


@dataclass(frozen=True)
class PeerSizes:
    """The sizes every row is built and trained with (default: the reference config)."""

    vocab_size: int = COMMON["vocab_size"]
    d_model: int = COMMON["d_model"]
    n_heads: int = COMMON["n_heads"]
    d_ff: int = COMMON["d_ff"]
    segment_len: int = COMMON["segment_len"]
    batch_size: int = 8
    rollout: int = 8
    encoder_layers: int = REFERENCE["memformer"]["encoder_layers"]
    decoder_layers: int = REFERENCE["memformer"]["decoder_layers"]
    memory_slots: int = REFERENCE["memformer"]["memory_slots"]
    rmt_layers: int = REFERENCE["rmt"]["n_layers"]
    memory_tokens: int = REFERENCE["rmt"]["memory_tokens"]

    def overrides(self) -> dict[str, int]:
        """The fields that differ from the reference config."""
        reference = PeerSizes()
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(reference, f.name)
        }


@dataclass(frozen=True)
class RowSpec:
    """One row of the table: who implements it, how it is trained, where its loss is."""

    implementation: str
    model: str
    gradient: str
    loss_on: str
    package: str | None = None  # the peer's distribution name; None for memtx rows
    strategy: str = "full"  # memtx rows: the driver's gradient strategy


ROWS: dict[str, RowSpec] = {
    "memtx-memformer-full": RowSpec("memtx", "memformer", "full BPTT", "every segment"),
    "memtx-memformer-mrbp": RowSpec("memtx", "memformer", "MRBP", "every segment", strategy="mrbp"),
    "peer-memformer-mrbp": RowSpec(
        "memformer 0.3.1",
        "memformer",
        "its MRBP helper (`memory_replay_backprop`)",
        "LAST segment only",
        package="memformer",
    ),
    "peer-memformer-full": RowSpec(
        "memformer 0.3.1",
        "memformer",
        "full BPTT (loop over its forward)",
        "every segment",
        package="memformer",
    ),
    "memtx-rmt-full": RowSpec("memtx", "rmt", "full BPTT", "every segment"),
    "peer-rmt-full": RowSpec(
        "recurrent-memory-transformer-pytorch 0.7.0",
        "rmt",
        "full BPTT (its wrapper's forward)",
        "every segment",
        package="recurrent-memory-transformer-pytorch",
    ),
}
#: Modules a peer row imports (the package and what it needs at import time).
_PEER_MODULES = {
    "memformer": ("memformer", "einops"),
    "recurrent-memory-transformer-pytorch": (
        "recurrent_memory_transformer_pytorch",
        "einops",
        "hyper_connections",
    ),
}


def mapping_notes(s: PeerSizes) -> dict[str, list[str]]:
    """How the sizes map onto the peers' constructors, and what could not be matched."""
    head = s.d_model // s.n_heads
    geglu = int(s.d_ff * 2 / 3)
    return {
        "memformer": [
            f"`Memformer(dim={s.d_model}, num_memory_slots={s.memory_slots}, "
            f"mem_update_attn_heads={s.n_heads}, enc_depth={s.encoder_layers}, "
            f"enc_heads={s.n_heads}, dec_depth={s.decoder_layers}, dec_heads={s.n_heads}, "
            f"enc/dec_num_tokens={s.vocab_size}, enc/dec_max_seq_len={s.segment_len})`: "
            f"{s.n_heads} heads of {head}; its FFN is fixed at 4 x width "
            f"(= {4 * s.d_model}, GELU; the config asks for {s.d_ff}).",
            "Layout as in memtx: the encoder reads segment t-1 (cross-attending to the slots), "
            "the decoder predicts segment t cross-attending to that encoding, and the encoding "
            "updates the slots. The peer takes `src` = segment t-1 and `tgt` = segment t plus "
            "its next token (its wrapper shifts `tgt` by one), so it scores the same "
            "batch x rollout x segment tokens. memtx has no previous segment at the start of "
            "a stream and skips its encoder there; the peer gets a real previous segment, so "
            "it runs its encoder `rollout` times to memtx's `rollout - 1`.",
            "Not matchable: positions are T5 relative-position buckets (memtx: rotary); "
            "attention is einsum + softmax (memtx: SDPA); the slot update is attention + "
            "GRUCell + FFN (memtx: slot attention with the BMN forgetting bias); untied "
            "embedding and head.",
            "`memory_replay_backprop(model, src, tgt)` (its MRBP) puts the target on the LAST "
            "segment only: `src` = the rollout's segments, `tgt` = the segment after them. "
            "Its decoder runs once per step, so this row does about 1/rollout of the decoder "
            "work; its tokens/s counts the tokens read (batch x rollout x segment).",
        ],
        "rmt": [
            f"`RecurrentMemoryTransformer({s.d_model}, num_tokens={s.vocab_size}, "
            f"depth={s.rmt_layers}, num_memory_tokens={s.memory_tokens}, "
            f"seq_len={s.segment_len}, dim_head={head}, heads={s.n_heads}, "
            f"ff_mult={s.d_ff / s.d_model:g}, use_flash_attn=True, use_xl_memories=False, "
            "num_residual_streams=1)` in `RecurrentMemoryTransformerWrapper`, called as "
            "`wrapper(tokens, return_loss=True)` on batch x (rollout x segment + 1) tokens: "
            "a loss on every segment, BPTT through all of them.",
            "Chosen to match memtx: `num_residual_streams=1` turns its default 4-stream hyper "
            "connections into plain residuals; `use_xl_memories=False` (its wrapper's forward "
            "never passes them back in anyway); `use_flash_attn=True` is "
            "`scaled_dot_product_attention`, as in memtx.",
            f"Its FFN is GEGLU with inner width int({s.d_ff} x 2/3) = {geglu}: three "
            f"{s.d_model} x {geglu} matrices, about the parameters and FLOPs of memtx's "
            f"{s.d_model} -> {s.d_ff} -> {s.d_model}.",
            "Not matchable: learned absolute positions (memtx: rotary); RMSNorm and bias-free "
            "projections; a learned null key/value per layer; a value-residual mix in every "
            "block after the first; write slots are fresh learned tokens each segment (memtx "
            "writes into the memory it read); untied head with bias; 0.1 gradient fraction "
            "on the embedding. The wrapper weights each segment's mean loss by its length "
            "fraction (a mean over the rollout, as memtx's loss here).",
        ],
        "measurements": [
            "FLOPs: `FlopCounterMode` over one step, with a formula added for CPU SDPA "
            "(`aten._scaled_dot_product_flash_attention_for_cpu` and its backward), which "
            "torch's counter leaves at 0: without it, SDPA rows would miss their attention. "
            "Attention backward is counted as 2x its forward (the math count, as an einsum "
            "implementation is counted), not flash's recomputation.",
            "Peak MB: the worker process's peak RSS (Python, torch, the weights and AdamW "
            "state included; compare rows); 'after build' is the RSS after building the "
            "model and the optimizer, before the first step.",
            "The update: memtx rows take the training loop's own "
            f"(`memtx.training.apply_update`: global-norm clip to {GRAD_CLIP:g}, then AdamW); "
            "the peer rows call their optimizer's `step()` with no clip. The clip is one "
            "pass over the gradients, a small share of a step.",
        ],
    }


# --------------------------------------------------------------------------- rows


@dataclass
class Trainer:
    """What a worker times: one full training step, and what it reads and scores."""

    model: Any
    step: Callable[[], None]
    tokens_per_step: int  # tokens read (batch x rollout x segment)
    scored_per_step: int  # positions with a loss


def _memtx_trainer(spec: RowSpec, sizes: PeerSizes) -> Trainer:
    import torch
    import torch.nn.functional as F

    import memtx
    from memtx.recurrence import rollout
    from memtx.training import apply_update

    fields: dict[str, Any] = {
        "vocab_size": sizes.vocab_size,
        "d_model": sizes.d_model,
        "n_heads": sizes.n_heads,
        "d_ff": sizes.d_ff,
        "segment_len": sizes.segment_len,
    }
    if spec.model == "memformer":
        fields |= {
            "encoder_layers": sizes.encoder_layers,
            "decoder_layers": sizes.decoder_layers,
            "memory_slots": sizes.memory_slots,
        }
    else:
        fields |= {"n_layers": sizes.rmt_layers, "memory_tokens": sizes.memory_tokens}
    model = memtx.build(spec.model, **fields).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch, length = sizes.batch_size, sizes.rollout * sizes.segment_len
    tokens = torch.randint(0, sizes.vocab_size, (batch, length + 1))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]  # [B, rollout x segment]
    count = targets.numel()

    def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum") / count

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        memory = model.init_memory(batch)
        result = rollout(model, inputs, targets, memory, loss_fn=loss_fn, strategy=spec.strategy)
        apply_update(model, optimizer, grad_clip=GRAD_CLIP, loss=float(result.loss))

    return Trainer(model, step, tokens_per_step=count, scored_per_step=count)


def _peer_memformer_trainer(sizes: PeerSizes, *, last_only: bool) -> Trainer:
    import torch
    from memformer import Memformer, memory_replay_backprop

    seg = sizes.segment_len
    model = Memformer(
        dim=sizes.d_model,
        num_memory_slots=sizes.memory_slots,
        mem_update_attn_heads=sizes.n_heads,
        enc_num_tokens=sizes.vocab_size,
        enc_max_seq_len=seg,
        enc_depth=sizes.encoder_layers,
        enc_heads=sizes.n_heads,
        dec_num_tokens=sizes.vocab_size,
        dec_max_seq_len=seg,
        dec_depth=sizes.decoder_layers,
        dec_heads=sizes.n_heads,
    ).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = sizes.batch_size
    # Segment 0 is the "previous segment" of the first one scored; +1 for the last target.
    tokens = torch.randint(0, sizes.vocab_size, (batch, (sizes.rollout + 1) * seg + 1))
    read = batch * sizes.rollout * seg

    if last_only:
        src = tokens[:, : sizes.rollout * seg]  # [B, rollout x segment], read by the encoder
        tgt = tokens[:, sizes.rollout * seg :]  # [B, segment + 1]: the one scored segment

        def replay_step() -> None:
            optimizer.zero_grad(set_to_none=True)
            memory_replay_backprop(model, src, tgt)
            optimizer.step()

        return Trainer(model, replay_step, tokens_per_step=read, scored_per_step=batch * seg)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        mems = None
        total = tokens.new_zeros((), dtype=torch.float32)
        for index in range(sizes.rollout):
            src = tokens[:, index * seg : (index + 1) * seg]  # [B, L]: segment t-1
            tgt = tokens[:, (index + 1) * seg : (index + 2) * seg + 1]  # [B, L + 1]: t, shifted
            _, mems, loss = model(src, tgt, mems=mems)  # loss: the segment's mean CE
            total = total + loss
        (total / sizes.rollout).backward()
        optimizer.step()

    return Trainer(model, step, tokens_per_step=read, scored_per_step=read)


def _peer_rmt_trainer(sizes: PeerSizes) -> Trainer:
    import torch
    from recurrent_memory_transformer_pytorch import (
        RecurrentMemoryTransformer,
        RecurrentMemoryTransformerWrapper,
    )

    transformer = RecurrentMemoryTransformer(
        sizes.d_model,
        num_tokens=sizes.vocab_size,
        depth=sizes.rmt_layers,
        num_memory_tokens=sizes.memory_tokens,
        seq_len=sizes.segment_len,
        dim_head=sizes.d_model // sizes.n_heads,
        heads=sizes.n_heads,
        ff_mult=sizes.d_ff / sizes.d_model,
        use_flash_attn=True,
        use_xl_memories=False,
        num_residual_streams=1,
    )
    model = RecurrentMemoryTransformerWrapper(transformer).train()
    # Its SDPA call sits in the deprecated ``torch.backends.cuda.sdp_kernel``: one warning a call.
    warnings.filterwarnings("ignore", message=r".*sdp_kernel.*", category=FutureWarning)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    length = sizes.rollout * sizes.segment_len
    tokens = torch.randint(0, sizes.vocab_size, (sizes.batch_size, length + 1))
    count = sizes.batch_size * length

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss, _ = model(tokens, return_loss=True)  # shifts by one, splits into segments
        loss.backward()
        optimizer.step()

    return Trainer(model, step, tokens_per_step=count, scored_per_step=count)


def make_trainer(row: str, sizes: PeerSizes) -> Trainer:
    spec = ROWS[row]
    if spec.package is None:
        return _memtx_trainer(spec, sizes)
    if spec.model == "memformer":
        return _peer_memformer_trainer(sizes, last_only=row == "peer-memformer-mrbp")
    return _peer_rmt_trainer(sizes)


def missing_modules(package: str) -> list[str]:
    """The modules a peer row needs that are not importable here."""
    return [m for m in _PEER_MODULES[package] if importlib.util.find_spec(m) is None]


def run_worker(*, row: str, sizes: PeerSizes, steps: int, warmup: int) -> dict[str, Any]:
    """Build ``row``, time ``steps`` training steps after ``warmup``; FLOPs and peak RSS."""
    import torch

    if row not in ROWS:
        raise ValueError(f"unknown row {row!r} (known: {', '.join(ROWS)})")
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps must be >= 1 and warmup >= 0, got {steps} and {warmup}")
    spec = ROWS[row]
    if spec.package is not None:
        try:
            for module in _PEER_MODULES[spec.package]:
                importlib.import_module(module)
        except ImportError as exc:
            return {"status": f"skipped ({PEER_INSTALL}: {exc})"}
    torch.manual_seed(0)
    trainer = make_trainer(row, sizes)
    after_build = max_rss_mb()
    for _ in range(warmup):
        trainer.step()
    try:
        flops: int | None = count_flops(trainer.step)
        flops_note = None
    except Exception as exc:  # the counter's module tracker trips on some peer code paths
        flops, flops_note = None, f"FLOP counter failed: {type(exc).__name__}: {exc}"
    start = time.perf_counter()
    for _ in range(steps):
        trainer.step()
    seconds = (time.perf_counter() - start) / steps
    version = importlib.metadata.version(spec.package) if spec.package is not None else "memtx"
    return {
        "status": "ok",
        "version": version,
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "tokens_per_step": trainer.tokens_per_step,
        "scored_per_step": trainer.scored_per_step,
        "seconds_per_step": seconds,
        "tokens_per_s": trainer.tokens_per_step / seconds,
        "flops_per_step": flops,
        "gflops_per_s": flops / seconds / 1e9 if flops is not None else None,
        "flops_note": flops_note,
        "peak_rss_mb": max_rss_mb(),
        "after_build_mb": after_build,
        "threads": torch.get_num_threads(),
    }


def profile_row(*, row: str, sizes: PeerSizes, out_dir: Path, warmup: int = 1) -> Path:
    """One training step of ``row`` under ``torch.profiler``: where its time goes.

    Writes ``profile-<row>.md``: the operators by self CPU time, and the step's time
    split into matrix multiplies, attention and everything else.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    trainer = make_trainer(row, sizes)
    for _ in range(warmup):
        trainer.step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    groups = {"matmul (mm, addmm, bmm)": 0.0, "attention (SDPA fwd + bwd)": 0.0, "other": 0.0}
    for e in events:
        if e.key in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul"):
            groups["matmul (mm, addmm, bmm)"] += e.self_cpu_time_total
        elif "scaled_dot_product" in e.key:
            groups["attention (SDPA fwd + bwd)"] += e.self_cpu_time_total
        else:
            groups["other"] += e.self_cpu_time_total
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:20]
    text = (
        f"# Profile of one training step: `{row}`\n\n"
        f"torch.profiler, CPU, {torch.get_num_threads()} threads, reference sizes "
        f"(`{json.dumps(dataclasses.asdict(sizes))}`). Self CPU time {total / 1e6:.2f} s.\n\n"
        + markdown_table(
            ["group", "share of self CPU time"],
            [[name, f"{value / total:.1%}"] for name, value in groups.items()],
        )
        + "\n"
        + markdown_table(
            ["operator", "calls", "self CPU ms", "share"],
            [
                [
                    f"`{e.key}`",
                    e.count,
                    f"{e.self_cpu_time_total / 1e3:,.1f}",
                    f"{e.self_cpu_time_total / total:.1%}",
                ]
                for e in top
            ],
        )
        + f"\nReproduce: `python -m memtx.bench.peers --profile {row}`\n"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"profile-{row}.md"
    path.write_text(text)
    return path
