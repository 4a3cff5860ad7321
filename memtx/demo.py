"""``memtx demo``'s language-model part: the demo preset trained, evaluated before and after.

(Its memory-at-work part, a haystack read by a shipped model, is :mod:`memtx.haystack`.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from memtx.data import prepare_data
from memtx.evaluate import evaluate_tokens
from memtx.models import from_config
from memtx.train import TrainResult, train
from memtx.training import free_dir, seed_everything

__all__ = ["run_demo"]


def run_demo(
    *,
    config: Path,
    out_dir: Path,
    overrides: list[str] | None = None,
    echo: Callable[[str], None] = print,
) -> TrainResult:
    """Train the demo preset, evaluate before and after, print a table, plot the losses."""
    from memtx.config import load_run_config

    run = load_run_config(config, overrides=overrides or [])
    out_dir = free_dir(Path(out_dir))
    data = prepare_data(run.data)
    seed_everything(run.train.seed)
    untrained = from_config(dataclasses.replace(run.model, vocab_size=data.tokenizer.vocab_size))
    budget = run.train.eval_tokens
    before = evaluate_tokens(
        untrained,
        data.valid,
        rows=8,
        max_tokens=budget,
        bytes_per_token=data.bytes_per_token["valid"],
    )
    echo(
        f"demo: {run.model.name}, {untrained.num_parameters() / 1e6:.2f}M parameters, "
        f"{run.train.steps} steps of {run.train.batch_size} x {run.train.rollout} x "
        f"{run.model.segment_len} tokens on {run.data.corpus} -> {out_dir}"
    )
    result = train(run, out_dir=out_dir, data=data)
    after_bpc = result.valid["bpc"]
    rows = [
        ("", "valid bpc", "tokens/s"),
        ("before training", f"{before.bpc:.3f}", f"{before.tokens_per_s:,.0f} (eval)"),
        ("after training", f"{after_bpc:.3f}", f"{result.tokens_per_s:,.0f} (train)"),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(r, widths)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    echo("\n".join(lines))
    echo(f"loss curves: {out_dir / 'loss.png'}   metrics: {out_dir / 'metrics.jsonl'}")
    return result
