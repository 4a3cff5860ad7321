"""The rows of ``memtx bench babilong``: each model id's label, preset and overrides, and
the overrides each bAbI task adds to the presets (qa1's)."""

from __future__ import annotations

__all__ = ["MODELS", "QA1_ONLY", "TASK_OVERRIDES"]

_STORY_CURRICULUM = [
    "task.stages=[4, 4, 4, 8, 16]",
    "task.fact_stages=[1, 2, 4, 4, 4]",
    "task.stage_steps=1500",
    "train.steps=7500",
]
_READER_CURRICULUM = [
    "data.tokenizer=bpe",
    "data.bpe_vocab_size=1024",
    "model.init=fan_in",
    "model.tie_embeddings=false",
    "model.embed_std=1.0",
    "task.segments=8",
    "task.stages=[1, 1, 1, 4, 8]",
    "task.fact_stages=[2, 3, 4, 4, 4]",
    "task.background_stages=[false, false, false, true, true]",
    "task.story_padding=longest",
    "task.stage_steps=2500",
    "train.steps=12500",
    "train.batch_size=32",
]
#: id -> (label, preset in ``configs/``, overrides): the models and the ablation rows
MODELS: dict[str, tuple[str, str, list[str]]] = {
    "armt": ("ARMT", "babilong-armt.toml", []),
    "rmt": ("RMT", "babilong-rmt.toml", []),
    "transformer_xl": ("Transformer-XL (RMT's state)", "babilong-transformer-xl.toml", []),
    "transformer": ("Transformer (no memory)", "babilong-transformer.toml", []),
    "rmt_fixed": (
        "RMT, fixed segments (no vary_segments)",
        "babilong-rmt.toml",
        ["task.vary_segments=false"],
    ),
    "armt_fixed": (
        "ARMT, fixed segments (no vary_segments)",
        "babilong-armt.toml",
        ["task.vary_segments=false"],
    ),
    "armt_no_correction": ("ARMT, no correction", "babilong-armt.toml", ["model.correction=false"]),
    "armt_bounded": ("ARMT, bounded write", "babilong-armt.toml", ["model.write_rule=bounded"]),
    "armt_closed": (
        "ARMT, bounded write, gates start closed",
        "babilong-armt.toml",
        ["model.write_rule=bounded", "model.gate_bias=-4.0"],
    ),
    "armt_deep": (
        "ARMT, bounded write, 4 layers",
        "babilong-armt.toml",
        ["model.write_rule=bounded", "model.n_layers=4"],
    ),
    "armt_floor": (
        "ARMT, bounded write, floored read",
        "babilong-armt.toml",
        ["model.write_rule=bounded", "model.read_floor=true"],
    ),
    "armt_wide": (
        "ARMT, bounded write, wide keys (d_mem 64, nu 3, 16 memory tokens)",
        "babilong-armt.toml",
        ["model.write_rule=bounded", "model.d_mem=64", "model.nu=3", "model.memory_tokens=16"],
    ),
    "rmt_gate": ("RMT, write gate", "babilong-rmt.toml", ["model.write_gate=true"]),
    # The story curriculum: 1, 2 then 4 facts at 4 segments before the segment stages. A
    # transformer that sees the whole 4-fact story at once plateaus at 0.56 exact after
    # 1,500 steps (it reads the place of the wrong person); one fact it learns in 200.
    "armt_story": (
        "ARMT, bounded write, story curriculum 1-2-4 facts",
        "babilong-armt.toml",
        ["model.write_rule=bounded", *_STORY_CURRICULUM],
    ),
    "rmt_story": ("RMT, story curriculum 1-2-4 facts", "babilong-rmt.toml", _STORY_CURRICULUM),
    # Session 17's reader recipe: word-level BPE, fan-in init, an untied head, N(0, 1)
    # embeddings; the bare story (padded only to the longest) at 2, 3, 4 facts in one
    # segment, then hidden in text over up to 4 and 8 segments.
    "armt_reader": (
        "ARMT, bounded write, reader recipe (BPE)",
        "babilong-armt.toml",
        ["model.write_rule=bounded", *_READER_CURRICULUM],
    ),
    "rmt_reader": (
        "RMT, reader recipe (BPE)",
        "babilong-rmt.toml",
        _READER_CURRICULUM,
    ),
}
#: rows whose overrides are qa1's own
QA1_ONLY = frozenset({"armt_story", "rmt_story", "armt_reader", "rmt_reader"})
#: bAbI task -> overrides of the presets (qa1's): longer stories need longer first stages
TASK_OVERRIDES: dict[str, list[str]] = {
    "qa1": [],
    **{qa: [f"task.qa={qa}", "task.stages=[8, 16]"] for qa in ("qa2", "qa3", "qa5")},
    "qa4": ["task.qa=qa4"],
}
