"""``memtx bench babilong``: BABILong-style qa tasks from 0 to 1M tokens, model by model.

Trains each model of :data:`MODELS` on each bAbI task (``qa1``, ``qa2``, ...) with the
recipe of its preset (``configs/babilong-*.toml``: a segment curriculum up to 16 segments
of 64, ``task.vary_segments``, fresh train-split background every step, the loss on the
answer only), then scores exact match of the answer word at each evaluation length:

- length 0: the story alone (BABILong's 0), in the curriculum's first stage's segments;
- length L > 0: ``L / segment_len`` segments, the story hidden in held-out background.

Evaluation streams a batch of haystacks together (:func:`memtx.evaluate.evaluate_haystacks`),
so memory does not grow with L. Its background is held-out text: the corpus's valid and
test documents concatenated (``--data`` another corpus). When a haystack needs more than
that (shakespeare: ~520K bytes, so at 1M), the held-out text is repeated; how often is
written in the report.

Training runs go to ``runs_dir/<model>-<qa>`` and are reused when finished (``loss.png``
written) with the same config; an unfinished one resumes. Every (model, task, length)
cell is saved to ``babilong.json`` as it finishes, so a killed run continues where it
was; ``babilong.md`` (a task x length table per model, like BABILong's) and
``babilong.png`` (a heatmap) are written from the saved cells.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from memtx.bench.babilong_models import MODELS, QA1_ONLY, TASK_OVERRIDES
from memtx.bench.common import binned_distances, distance_markdown, markdown_table
from memtx.config import RunConfig, load_run_config
from memtx.data.tasks.backgrounds import (
    background_note,
    eval_background,
    haystack_background,
)
from memtx.errors import ConfigError

__all__ = [
    "DEFAULT_LENGTHS",
    "LONG",
    "MODELS",
    "QA1_ONLY",
    "TASK_OVERRIDES",
    "bench_babilong",
    "length_label",
    "write_report",
]

DEFAULT_LENGTHS = (0, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 262144, 1048576)
#: lengths above this get ``long_samples`` samples instead of ``samples``
LONG = 65536
_CONFIGS = Path(__file__).resolve().parents[2] / "configs"
_EVAL_SEED = 12345


def length_label(length: int) -> str:
    """0, 1K, 64K, 1M."""
    if length >= 2**20 and length % 2**20 == 0:
        return f"{length // 2**20}M"
    return f"{length // 1024}K" if length >= 1024 and length % 1024 == 0 else str(length)


def run_config(model: str, qa: str, *, overrides: Sequence[str] = (), configs: Path = _CONFIGS):
    """The training config of ``model`` on ``qa``: its preset, the task's and the caller's
    overrides."""
    _, preset, extra = MODELS[model]
    if model in QA1_ONLY and qa != "qa1":
        raise ConfigError(f"model {model!r} is a qa1 row (its story curriculum ends at 4 facts)")
    return load_run_config(configs / preset, overrides=[*extra, *TASK_OVERRIDES[qa], *overrides])


def _ensure_trained(run: RunConfig, run_dir: Path, echo: Callable[[str], None]) -> None:
    from memtx.train import train

    wanted = json.loads(json.dumps(run.to_dict()))
    if (run_dir / "config.json").is_file():
        saved = json.loads((run_dir / "config.json").read_text())
        if run.data.tokenizer != "byte":  # the run sets it from the tokenizer it trained
            wanted["model"]["vocab_size"] = saved.get("model", {}).get("vocab_size")
        if saved != wanted:
            raise ConfigError(
                f"{run_dir} holds a run of another config: delete it or choose another --runs"
            )
        if (run_dir / "loss.png").is_file():
            echo(f"reusing the finished run {run_dir}")
            return
        echo(f"resuming {run_dir}")
        train(run, out_dir=run_dir, resume=True, progress=False)
        return
    echo(f"training {run_dir}")
    train(run, out_dir=run_dir, progress=False)


class _Pace:
    """Evaluation tokens/s and the time left (training time left out of both)."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.seconds = total, 0, 0.0

    def add(self, result: dict[str, float]) -> None:
        self.done += int(result["tokens"])
        self.seconds += result["tokens"] / max(result["tokens_per_s"], 1e-9)

    def eta(self, bar: Any) -> str:
        if not self.done:
            return ""
        rate = self.done / max(self.seconds, 1e-9)
        left = (self.total - self.done) / rate
        return f", eval {rate:,.0f} tok/s, ETA {left / 60:.1f} min"


def _save(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    tmp.replace(path)


def bench_babilong(
    *,
    out_dir: Path,
    runs_dir: Path,
    models: Sequence[str] = ("armt", "rmt", "transformer_xl", "transformer"),
    tasks: Sequence[str] = ("qa1", "qa2"),
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    samples: int = 200,
    long_samples: int = 32,
    batch_size: int = 32,
    corpus: str | None = None,
    overrides: Sequence[str] = (),
    device: str = "cpu",
    progress: bool = True,
    command: str = "",
    echo: Callable[[str], None] = print,
) -> Path:
    """Train (or reuse) every (model, task), score every length; write the report.

    Returns the path of ``babilong.md``.

    Raises:
        ConfigError: an unknown model or task, a length that is not a multiple of the
            segment length or too short for the task's story, samples < 1.
    """
    import torch

    from memtx.data import load_tokenizer
    from memtx.data.tasks import BabilongTask, make_task
    from memtx.evaluate import evaluate_haystacks
    from memtx.progress import progress_bar
    from memtx.train import load_trained

    for name, known, kind in ((models, MODELS, "model"), (tasks, TASK_OVERRIDES, "task")):
        for item in name:
            if item not in known:
                raise ConfigError(f"unknown {kind} {item!r} (known: {', '.join(known)})")
    for name, value in (("samples", samples), ("long_samples", long_samples)):
        if value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if not lengths or any(length < 0 for length in lengths):
        raise ConfigError(f"--lengths must be token counts >= 0, got {list(lengths)}")
    runs = {
        (m, qa): run_config(m, qa, overrides=[*overrides, f"train.device={device}"])
        for m in models
        for qa in tasks
    }
    plans = []  # (model, qa, length, segments, background, samples)
    for (model, qa), run in runs.items():
        assert run.task is not None
        segment_len = run.model.segment_len
        for length in lengths:
            if length % segment_len:
                raise ConfigError(f"length {length} is not a multiple of {segment_len} tokens")
            segments = length // segment_len if length else run.task.stage_segments[0]
            count = samples if length <= LONG else long_samples
            plans.append((model, qa, length, segments, length > 0, count))
            if run.data.tokenizer != "byte":
                continue  # lengths in a tokenizer's ids are checked once it is trained
            make_task(  # a length too short for the story fails before any training
                "babilong",
                segments=segments,
                segment_len=segment_len,
                **{**run.task.task_params(), "background": False, "story_padding": "row"},
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "babilong.json"
    saved = json.loads(json_path.read_text()) if json_path.is_file() else {}
    # One held-out background per tokenizer ("byte", or the run folder whose tokenizer it is).
    backgrounds: dict[str, tuple[np.ndarray, str, Any]] = {"byte": (*eval_background(corpus), None)}

    def held_out_of(model: str, qa: str) -> tuple[np.ndarray, str, Any] | None:
        """The held-out background in the run's tokens, its note and tokenizer (None
        for bytes); None while a run with its own tokenizer has not made it yet."""
        run, run_dir = runs[(model, qa)], runs_dir / f"{model}-{qa}"
        key, tokenizer = "byte", None
        if run.data.tokenizer != "byte":
            if not (run_dir / "tokenizer.json").is_file():
                return None
            key, tokenizer = str(run_dir), load_tokenizer(run_dir)
        if key not in backgrounds:
            backgrounds[key] = (*eval_background(corpus, tokenizer=tokenizer), tokenizer)
        return backgrounds[key]

    cells: dict[str, Any] = saved.get("cells", {})
    payload = {
        "background": backgrounds["byte"][1],
        "models": {m: MODELS[m][0] for m in models},
        "cells": cells,
    }

    def fresh(model: str, qa: str, length: int, count: int) -> bool:
        cell, held = cells.get(f"{model}/{qa}/{length}"), held_out_of(model, qa)
        if cell is None or held is None:
            return False
        note = background_note(held[1], held_out=len(held[0]), length=length)
        return cell["samples"] == count and cell["background"] == note

    todo = [p for p in plans if not fresh(p[0], p[1], p[2], p[5])]
    echo(f"babilong: {len(plans) - len(todo)} of {len(plans)} cells already saved in {json_path}")
    total = sum(
        count * (segments * runs[(m, qa)].model.segment_len)
        for m, qa, _, segments, _, count in todo
    )
    pace = _Pace(total)
    with progress_bar(total=total, desc="babilong", unit="tok", disable=not progress) as bar:
        for model, qa in runs:
            mine = [p for p in todo if p[:2] == (model, qa)]
            if not mine:
                continue
            run_dir = runs_dir / f"{model}-{qa}"
            _ensure_trained(runs[(model, qa)], run_dir, echo)
            run, net = load_trained(run_dir, device=torch.device(device))
            assert run.task is not None
            held = held_out_of(model, qa)
            assert held is not None  # the run is trained: its tokenizer is there
            held_out, base_note, tokenizer = held
            for _, _, length, segments, hidden, count in mine:
                background, note = haystack_background(held_out, base_note, length)
                params: dict[str, Any] = {
                    **run.task.task_params(),
                    "background": hidden,
                    "story_padding": "row",  # length 0: the story alone in its segments
                    "tokenizer": tokenizer,
                }
                if hidden:
                    params["noise"] = background
                task = BabilongTask(
                    total_len=segments * run.model.segment_len,
                    segments=segments,
                    segment_len=run.model.segment_len,
                    seed=_EVAL_SEED,
                    **params,
                )
                bar.set_postfix_str(f"{model} {qa} {length_label(length)}{pace.eta(bar)}")
                result = evaluate_haystacks(
                    net,
                    task,
                    samples=count,
                    device=device,
                    seed=_EVAL_SEED,
                    batch_size=batch_size,
                    bar=bar,
                    by_distance=True,
                )
                pace.add(result)
                by_distance = binned_distances(result)
                cells[f"{model}/{qa}/{length}"] = {
                    "model": model,
                    "qa": qa,
                    "length": length,
                    "segments": segments,
                    "samples": count,
                    "batch_size": batch_size,
                    "background": note,
                    "run": str(run_dir),
                    **result,
                    "by_distance": by_distance,
                }
                _save(json_path, payload)
                (bar.write if progress else echo)(
                    f"{model} {qa} {length_label(length)}: exact "
                    f"{result['exact_match']:.3f} ({result['tokens_per_s']:,.0f} tok/s)"
                )
    _save(json_path, payload)
    return write_report(
        out_dir, payload, models=models, tasks=tasks, lengths=lengths, command=command
    )


def _samples_line(cells: dict[str, Any], *, tasks: Sequence[str]) -> str:
    """ "- Samples per length: ..." of the cells, per group of tasks measured alike."""
    by_task: dict[str, tuple[tuple[int, int], ...]] = {}
    for qa in tasks:
        pairs = {(c["length"], c["samples"]) for c in cells.values() if c.get("qa") == qa}
        if pairs:
            by_task[qa] = tuple(sorted(pairs))
    groups: dict[tuple[tuple[int, int], ...], list[str]] = {}
    for qa, pairs in by_task.items():
        groups.setdefault(pairs, []).append(qa)
    parts = [
        ", ".join(f"{length_label(n)}: {s}" for n, s in pairs)
        + ("" if len(groups) == 1 else f" ({', '.join(qas)})")
        for pairs, qas in groups.items()
    ]
    return "- Samples per length: " + "; ".join(parts) + "."


def write_report(
    out_dir: Path,
    payload: dict[str, Any],
    *,
    models: Sequence[str],
    tasks: Sequence[str],
    lengths: Sequence[int],
    command: str = "",
) -> Path:
    """``babilong.md`` (exact match, task x length, per model) and ``babilong.png``."""
    cells = payload["cells"]
    header = ["model", "task", *[length_label(n) for n in lengths]]
    rows, grid = [], []
    for model in models:
        for qa in tasks:
            values = [cells.get(f"{model}/{qa}/{n}", {}).get("exact_match") for n in lengths]
            if all(v is None for v in values):
                continue  # a (model, task) not measured: no empty row
            rows.append([MODELS[model][0], qa, *["" if v is None else f"{v:.2f}" for v in values]])
            grid.append([math.nan if v is None else v for v in values])
    samples = _samples_line(cells, tasks=tasks)
    rates = [c["tokens_per_s"] for c in cells.values() if c["length"] >= LONG]
    lines = [
        "# BABILong-style qa tasks from 0 to 1M tokens",
        "",
        "Exact match of the answer word (our byte models' form of BABILong's rule), each",
        "model trained on at most 16 segments of 64 tokens and evaluated at every length.",
        "",
        markdown_table(header, rows),
        "",
        f"- Background of the haystacks: {payload['background']}.",
        *sorted(
            {
                f"- At {length_label(c['length'])}: {c['background'].split('; ', 1)[1]}."
                for c in cells.values()
                if "; " in c["background"]
            }
        ),
        samples,
    ]
    if rates:
        lines.append(
            f"- Evaluation speed at >= 64K tokens: {min(rates):,.0f} to "
            f"{max(rates):,.0f} tokens/s (batches of haystacks streamed together)."
        )
    against = [
        f"- {MODELS[model][0]} at {length_label(length)}: {got:.2f} "
        f"({got - target:+.2f} against {target})"
        for model in models
        for length, target in ((65536, 0.9), (1048576, 0.8))
        if (got := cells.get(f"{model}/qa1/{length}", {}).get("exact_match")) is not None
    ]
    if against:  # the target is qa1's; a run of other tasks has nothing to set against it
        lines += [
            "",
            "Against the target (qa1: >= 0.9 exact at 64K = 1,024 segments, >= 0.8 at 1M):",
            "",
            *against,
        ]
    lines += _distance_lines(cells, models=models, tasks=tasks, lengths=lengths)
    lines += [
        "",
        "Recipe (`configs/babilong-*.toml`): segment curriculum up to 16 segments of 64,",
        "`task.vary_segments` (each batch draws its number of segments from the first",
        "stage's to the stage's), fresh train-split background every step, the loss on the",
        "answer only; ARMT with its normaliser's correction. Chance is 1/6 for qa1 (six",
        "places); exact match at length 0 is the story alone, without background. The",
        "rows after a model's first are its ablations, each the preset with the overrides",
        "of `memtx.bench.babilong.MODELS` (write rule, read floor, gate init, depth, keys).",
    ]
    if command:
        lines += ["", "Made by:", "", f"    {command}"]
    md = out_dir / "babilong.md"
    md.write_text("\n".join(lines) + "\n")
    _heatmap(
        out_dir / "babilong.png",
        grid,
        [f"{r[0]} {r[1]}" for r in rows],
        [length_label(n) for n in lengths],
    )
    return md


def _distance_lines(
    cells: dict[str, Any], *, models: Sequence[str], tasks: Sequence[str], lengths: Sequence[int]
) -> list[str]:
    """The cells measured by distance (``by_distance``), as a table; [] if none were."""
    rows = []
    for model in models:
        for qa in tasks:
            for n in lengths:
                split = cells.get(f"{model}/{qa}/{n}", {}).get("by_distance")
                if n and split:
                    rows.append((f"{MODELS[model][0]}, {qa}, {length_label(n)}", split))
    if not rows:
        return []
    return [
        "",
        "Exact match by how many segments before the question's the (earliest) supporting",
        "fact ends (0: in the question's own segment), with the samples in each bin:",
        "",
        distance_markdown(rows, first="model, task, length"),
    ]


def _heatmap(path: Path, grid: list[list[float]], names: list[str], columns: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.array(grid, dtype=float).reshape(len(names), len(columns))
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * len(columns), 1 + 0.45 * len(names)))
    image = ax.imshow(values, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        if not math.isnan(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("haystack length (tokens)")
    fig.colorbar(image, ax=ax, label="exact match")
    fig.savefig(path, dpi=120, bbox_inches="tight")  # grows to hold the longest row label
    plt.close(fig)
