"""``memtx repro rmt``: the RMT paper's synthetic-task comparison, at CPU/GPU-small scale.

Trains RMT (memory read and written), its "memory at the start only" ablation,
Transformer-XL with the same memory size (``mem_len = memory_tokens``) and the transformer
without memory on copy and reverse (72 tokens as 9 segments of 8, memory 8), each with the
same curriculum over segments (1, 2, ..., 9: the source grows 4, 8, ..., 36 symbols), then
evaluates answer token accuracy and exact match at 9 segments. A second table trains RMT
on facts-in-noise with at most ``facts_train_segments`` segments and evaluates it at
8, 16, 64, 256 and 1024 segments. Results go to ``benchmarks/rmt.md`` and ``rmt.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from memtx.bench.common import markdown_table
from memtx.config import RunConfig, load_run_config
from memtx.sources import evaluate_task

__all__ = ["RMT_VARIANTS", "repro_rmt"]

#: id -> (display name, model overrides); all width 128, 4 layers, 4 heads (~0.9M parameters)
RMT_VARIANTS: dict[str, tuple[str, list[str]]] = {
    "rmt": ("rmt", ["model.name=rmt", "model.memory_tokens=8"]),
    "rmt_start_only": (
        "rmt (memory at start only)",
        ["model.name=rmt", "model.memory_tokens=8", "model.memory_layout=read_only"],
    ),
    "transformer_xl": (
        "transformer_xl (mem_len 8)",
        ["model.name=transformer_xl", "model.mem_len=8"],
    ),
    "transformer": ("transformer (no memory)", ["model.name=transformer"]),
}

_BASE = [
    "model.d_model=128",
    "model.n_layers=4",
    "model.n_heads=4",
    "model.segment_len=8",
    "train.batch_size=32",
    "train.lr=1e-3",
    "train.warmup_steps=50",
    "train.min_lr_ratio=1.0",
    "train.eval_every=50",
    "train.log_every=50",
    "train.checkpoint_every=0",
    "task.eval_samples=256",
    "task.advance_at=0.97",
    "task.stop_at=0.995",
]


def _run_config(
    variant: list[str], task: list[str], *, steps: int, device: str, extra: Sequence[str]
) -> RunConfig:
    return load_run_config(
        None,
        overrides=[
            *_BASE,
            *variant,
            *task,
            f"train.steps={steps}",
            f"train.device={device}",
            *extra,
        ],
    )


def repro_rmt(
    *,
    out_dir: Path,
    runs_dir: Path,
    tasks: Sequence[str] = ("copy", "reverse"),
    variants: Sequence[str] = tuple(RMT_VARIANTS),
    steps: int = 6000,
    stage_steps: int = 600,
    facts: bool = True,
    facts_steps: int = 3000,
    facts_train_segments: int = 8,
    facts_eval_segments: Sequence[int] = (8, 16, 64, 256, 1024),
    facts_eval_samples: int = 200,
    final_samples: int = 1000,
    device: str = "cpu",
    overrides: Sequence[str] = (),
    echo: Callable[[str], None] = print,
) -> Path:
    """Train and evaluate every (task, variant); write ``rmt.md`` and ``rmt.json``."""
    from memtx.train import train

    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for task in tasks:
        for variant in variants:
            settings = [
                f"task.name={task}",
                "task.segments=9",
                "task.stages=[1,2,3,4,5,6,7,8,9]",
                f"task.stage_steps={stage_steps}",
            ]
            display, model_settings = RMT_VARIANTS[variant]
            run = _run_config(model_settings, settings, steps=steps, device=device, extra=overrides)
            folder = runs_dir / f"{task}-{variant}"
            began = time.perf_counter()
            result = train(run, out_dir=_fresh(folder), progress=False)
            final = evaluate_task(
                result.model,
                _task_of(run, 9),
                samples=final_samples,
                device=result.model.device,
                seed=12345,
            )
            row = {
                "task": task,
                "model": display,
                "steps": result.steps,
                "reached_segments": int(result.valid.get("segments", 0)),
                "token_accuracy": final["token_accuracy"],
                "exact_match": final["exact_match"],
                "minutes": (time.perf_counter() - began) / 60,
                "parameters": result.model.num_parameters(),
            }
            rows.append(row)
            echo(json.dumps(row))
    facts_rows: list[dict[str, Any]] = []
    if facts:
        stages = [s for s in (2, 4, 8) if s <= facts_train_segments] or [facts_train_segments]
        settings = [
            "task.name=facts",
            f"task.segments={facts_train_segments}",
            f"task.stages={stages}",
            f"task.stage_steps={stage_steps}",
            "task.num_facts=2",
            "task.value_len=3",
            "model.segment_len=64",
            "model.memory_tokens=16",
            "train.batch_size=16",
        ]
        run = _run_config(
            ["model.name=rmt"], settings, steps=facts_steps, device=device, extra=overrides
        )
        result = train(run, out_dir=_fresh(runs_dir / "facts-rmt"), progress=False)
        from memtx.train import prepare_data

        noise = prepare_data(run).train
        for segments in facts_eval_segments:
            task = _task_of(run, segments, noise=noise)
            metrics = evaluate_task(
                result.model, task, samples=facts_eval_samples, device=result.model.device, seed=777
            )
            facts_rows.append({"segments": segments, "tokens": segments * 64, **metrics})
            echo(json.dumps(facts_rows[-1]))
    results = {
        "copy_reverse": rows,
        "facts": facts_rows,
        "device": device,
        "steps": steps,
        "stage_steps": stage_steps,
    }
    (out_dir / "rmt.json").write_text(json.dumps(results, indent=1) + "\n")
    return write_rmt_table(out_dir, [results])


def write_rmt_table(out_dir: Path, parts: Sequence[dict[str, Any]]) -> Path:
    """Merge results (e.g. of runs done in parallel, one per process) into ``rmt.md``."""
    rows = [r for p in parts for r in p["copy_reverse"]]
    facts_rows = [r for p in parts for r in p["facts"]]
    first = parts[0]
    path = Path(out_dir) / "rmt.md"
    path.write_text(
        _markdown(
            rows,
            facts_rows,
            device=first["device"],
            steps=first["steps"],
            stage_steps=first["stage_steps"],
        )
    )
    return path


def _task_of(run: RunConfig, segments: int, *, noise: Any = None) -> Any:
    from memtx.data.tasks import make_task

    assert run.task is not None
    extra = {"noise": noise} if run.task.name == "facts" else {}
    return make_task(
        run.task.name,
        segments=segments,
        segment_len=run.model.segment_len,
        seed=run.train.seed,
        **run.task.task_params(),
        **extra,
    )


def _fresh(folder: Path) -> Path:
    import shutil

    if folder.exists():
        shutil.rmtree(folder)
    return folder


def _markdown(
    rows: list[dict[str, Any]],
    facts_rows: list[dict[str, Any]],
    *,
    device: str,
    steps: int,
    stage_steps: int,
) -> str:
    table = [
        [
            r["task"],
            r["model"],
            f"{r['token_accuracy']:.3f}",
            f"{r['exact_match']:.3f}",
            f"{r['reached_segments']}/9",
            r["steps"],
            f"{r['minutes']:.1f}",
        ]
        for r in rows
    ]
    text = (
        "# RMT on synthetic tasks (memtx repro rmt)\n\n"
        "Copy and reverse, 72 tokens as 9 segments of 8, memory 8 (RMT: 8 memory tokens; "
        "Transformer-XL: mem_len 8). Width 128, 4 layers, 4 heads, batch 32, AdamW 1e-3. "
        f"Curriculum over segments 1..9 (source 4..36 symbols), a stage ends at answer token "
        f"accuracy >= 0.97 or after {stage_steps} steps; at most {steps} steps. Accuracy on "
        f"1,000 held-out samples at 9 segments. Device: {device}. The paper: RMT 1.00, "
        "Transformer-XL 0.29, no memory 0.10 (copy).\n\n"
        + markdown_table(
            [
                "task",
                "model",
                "token accuracy",
                "exact match",
                "curriculum reached",
                "steps",
                "minutes",
            ],
            table,
        )
    )
    if facts_rows:
        text += (
            "\n## Facts in noise: trained on at most 8 segments of 64, evaluated longer\n\n"
            + markdown_table(
                ["segments", "tokens", "answer token accuracy", "exact match"],
                [
                    [
                        r["segments"],
                        f"{r['tokens']:,}",
                        f"{r['token_accuracy']:.3f}",
                        f"{r['exact_match']:.3f}",
                    ]
                    for r in facts_rows
                ],
            )
        )
    text += "\nReproduce: `memtx repro rmt --device cuda` (or cpu; slower).\n"
    return text
