"""``memtx repro tmr``: ELECTRA with and without TMR's replay, then fine-tuning, as a report.

Pre-trains with and without replay at the same number of generated examples for every
seed, fine-tunes each discriminator (and a randomly initialised one, the floor) on the
downstream tasks, times replay's overhead in a paired measurement, and writes
``tmr.md`` (the table), ``tmr.png`` (the figure) and ``tmr.json`` (every number).
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from memtx.data import prepare_data
from memtx.electra import (
    ElectraModel,
    build_tasks,
    evaluate_downstream,
    load_electra_run,
    load_pretrained,
    measure_replay_overhead,
    pretrain,
)
from memtx.electra.config import TASKS
from memtx.electra.protocol import few_shot
from memtx.errors import ConfigError
from memtx.repro.tmr_protocol import (
    check_protocol,
    mean_sd,
    mean_spread,
    protocol_figures,
    protocol_lines,
    rtd_curve,
)
from memtx.training import free_dir, resolve_device

__all__ = ["repro_tmr"]


def repro_tmr(
    *,
    out_dir: Path,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    config_path: Path = Path("configs/electra-tmr.toml"),
    overrides: Sequence[str] = (),
    work_dir: Path = Path("runs/tmr"),
    scratch_baseline: bool = True,
    overhead_rounds: int = 40,
    threads: int | None = None,
    progress: bool = False,
    probe: bool = False,
    shots: Sequence[int] = (),
    finetune_seeds: Sequence[int] = (0, 1, 2),
    echo: Callable[[str], None] = print,
) -> Path:
    """ELECTRA with and without replay at the same number of generated examples, then fine-tuning.

    For each seed: pre-train without replay and with replay (the preset's ``[replay]``;
    the order alternates between seeds so a drifting machine load hits both alike), then
    fine-tune each discriminator on every task with the same seed; optionally fine-tune a
    randomly initialised discriminator too (the floor). Then time replay's overhead per
    step in a paired measurement (:func:`memtx.electra.measure_replay_overhead`,
    ``overhead_rounds`` steps of each, alternating on the same batches). Writes ``tmr.md``
    (the table) and ``tmr.png`` (the figure) into ``out_dir``; the runs and ``tmr.json``
    (every number) go under ``work_dir``. ``threads`` sets torch's CPU threads
    (1 is much faster than 2 on a machine whose cores other jobs keep busy).

    The low-noise protocol (:mod:`memtx.repro.tmr_protocol`): ``probe`` adds a linear
    probe per task, ``shots`` few-shot fine-tuning at those examples per class (averaged
    over ``finetune_seeds``), for every run and the floor; with the preset's
    ``pretrain.eval_every`` the report also gives replay's examples-to-target ratio.

    Returns:
        The path of ``tmr.md``.

    Raises:
        ConfigError, DataError: bad preset or overrides, unreadable corpus.
    """
    if not seeds:
        raise ConfigError("repro tmr needs at least one seed")
    check_protocol(shots=shots, finetune_seeds=finetune_seeds)
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    base = load_electra_run(config_path, overrides=overrides)
    device = resolve_device(base.pretrain.device)
    if not base.replay.enabled:
        raise ConfigError("the repro preset must enable replay (it runs both conditions)")
    data = prepare_data(base.data)
    # Every run saves this same tokenizer, so the tasks are tokenized once for all of them.
    tasks = build_tasks(dataclasses.replace(base.finetune, tasks=TASKS), tokenizer=data.tokenizer)
    for task in tasks.values() if shots else ():  # a shot count a class cannot give
        few_shot(task, per_class=max(shots), seed=0)  # is refused before pre-training
    work_dir = free_dir(Path(work_dir))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    began = time.perf_counter()

    def protocol(*, run_dir: Path | None, seed: int) -> dict[str, Any]:
        """The protocol's figures of a run's discriminator (None: the floor's random init)."""
        if not (probe or shots):
            return {}
        if run_dir is None:
            model = _floor(base, data, seed=seed, device=device)
        else:
            model = load_pretrained(run_dir, device=device)[1]
        figures = protocol_figures(
            model.discriminator,
            tasks,
            config=base.finetune,
            pad_id=base.electra.pad_id,
            probe=probe,
            shots=shots,
            finetune_seeds=finetune_seeds,
        )
        return {"protocol": figures}

    for position, seed in enumerate(seeds):
        order = (False, True) if position % 2 == 0 else (True, False)
        for replay in order:
            condition = "replay" if replay else "baseline"
            run = dataclasses.replace(
                base,
                replay=dataclasses.replace(base.replay, enabled=replay, seed=seed),
                pretrain=dataclasses.replace(base.pretrain, seed=seed),
            )
            run_dir = work_dir / f"{condition}-seed{seed}"
            result = pretrain(run, out_dir=run_dir, progress=progress, data=data)
            downstream = evaluate_downstream(run_dir, seed=seed, tasks=tasks, device=device)
            runs.append(
                {
                    "condition": condition,
                    "seed": seed,
                    "pretrain": result.summary(),
                    "train_rtd_loss": [
                        (m["step"], m["rtd_loss"]) for m in result.history if m["split"] == "train"
                    ],
                    "rtd_curve": rtd_curve(result.history, batch_size=run.pretrain.batch_size),
                    "downstream": {k: dataclasses.asdict(v) for k, v in downstream.items()},
                    **protocol(run_dir=run_dir, seed=seed),
                }
            )
            echo(
                f"[{time.perf_counter() - began:6.0f}s] {condition} seed {seed}: "
                f"rtd acc {result.valid.get('rtd_accuracy', math.nan):.4f}, "
                + ", ".join(f"{k} {v.test_accuracy:.3f}" for k, v in downstream.items())
                + f", {result.step_seconds_median * 1000:.0f} ms/step"
            )
        if scratch_baseline:
            downstream = evaluate_downstream(
                None,
                seed=seed,
                config=base.finetune,
                electra_config=_vocab_fixed(base, data),
                tasks=tasks,
                device=device,
            )
            runs.append(
                {
                    "condition": "no_pretraining",
                    "seed": seed,
                    "downstream": {k: dataclasses.asdict(v) for k, v in downstream.items()},
                    **protocol(run_dir=None, seed=seed),
                }
            )
    # Per-run medians drift with the machine's load; a paired measurement does not.
    overhead = measure_replay_overhead(base, data=data, rounds=overhead_rounds)
    echo(
        f"paired step timing: {overhead['baseline_ms']:.1f} ms -> {overhead['replay_ms']:.1f} ms "
        f"with replay ({overhead['overhead_pct']:+.1f}%)"
    )
    report = {
        "config": base.to_dict(),
        "overhead": overhead,
        "seeds": list(seeds),
        "finetune_seeds": list(finetune_seeds),
        "seconds": time.perf_counter() - began,
        "runs": runs,
        "tasks": {
            name: {
                "classes": task.classes,
                "train": len(task.train),
                "valid": len(task.valid),
                "test": len(task.test),
                "majority_test": task.majority_accuracy("test"),
            }
            for name, task in tasks.items()
        },
    }
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "tmr.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    _plot(report, out_dir / "tmr.png")
    path = out_dir / "tmr.md"
    path.write_text(_markdown(report), encoding="utf-8")
    echo(f"wrote {path}, {out_dir / 'tmr.png'} and {work_dir / 'tmr.json'}")
    return path


def _floor(run: Any, data: Any, *, seed: int, device: torch.device) -> ElectraModel:
    """The random-init model the floor fine-tunes (as :func:`evaluate_downstream` makes it)."""
    torch.manual_seed(seed)
    return ElectraModel(_vocab_fixed(run, data)).to(device)


def _vocab_fixed(run: Any, data: Any) -> Any:
    return dataclasses.replace(run.electra, vocab_size=data.tokenizer.vocab_size)


_CONDITIONS = (
    ("baseline", "ELECTRA (no replay)"),
    ("replay", "ELECTRA + replay (TMR)"),
    ("no_pretraining", "no pre-training (floor)"),
)


def _summaries(report: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """condition -> figure -> per-seed values."""
    out: dict[str, dict[str, list[float]]] = {}
    for entry in report["runs"]:
        figures = out.setdefault(entry["condition"], {})
        for task, result in entry["downstream"].items():
            for split in ("valid", "test"):
                figures.setdefault(f"{task}_{split}", []).append(result[f"{split}_accuracy"])
        if "pretrain" in entry:
            pre = entry["pretrain"]
            figures.setdefault("rtd_accuracy", []).append(
                pre["valid"].get("rtd_accuracy", math.nan)
            )
            figures.setdefault("rtd_recall", []).append(
                pre["valid"].get("rtd_replaced_recall", math.nan)
            )
            figures.setdefault("step_ms", []).append(pre["step_seconds_median"] * 1000)
            figures.setdefault("replay_ms", []).append(pre["replay_seconds_per_step"] * 1000)
            figures.setdefault("pretrain_s", []).append(pre["seconds"])
            figures.setdefault("generated", []).append(pre["generated_examples"])
            figures.setdefault("replayed", []).append(pre["replayed_examples"])
    return out


def _markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    stats = _summaries(report)
    tasks = report["tasks"]
    lines = [
        "# Transformer with Memory Replay (TMR): ELECTRA with and without replay",
        "",
        "Written by `memtx repro tmr` (`memtx.repro.tmr.repro_tmr`). Every figure is the mean "
        f"± sample standard deviation over seeds {report['seeds']}; accuracies in %.",
        "",
        "| | "
        + " | ".join(
            [f"{t} test acc" for t in tasks]
            + [f"{t} valid acc" for t in tasks]
            + ["RTD acc (valid split)", "RTD recall", "ms / step", "pre-train s"]
        )
        + " |",
        "|---" * (5 + 2 * len(tasks)) + "|",
    ]
    for key, title in _CONDITIONS:
        if key not in stats:
            continue
        figures = stats[key]
        cells = [mean_sd(figures[f"{t}_test"]) for t in tasks]
        cells += [mean_sd(figures[f"{t}_valid"]) for t in tasks]
        if "rtd_accuracy" in figures:
            cells += [
                mean_sd(figures["rtd_accuracy"], digits=2),
                mean_sd(figures["rtd_recall"], digits=1),
                mean_sd(figures["step_ms"], scale=1.0, digits=0),
                mean_sd(figures["pretrain_s"], scale=1.0, digits=0),
            ]
        else:
            cells += ["-", "-", "-", "-"]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    lines.append("")
    if "baseline" in stats and "replay" in stats:
        base_ms = statistics.fmean(stats["baseline"]["step_ms"])
        replay_ms = statistics.fmean(stats["replay"]["step_ms"])
        paired = report["overhead"]
        lines += [
            "Replay's wall-clock overhead per pre-training step, paired measurement (both "
            f"models alternating on the same batches, {int(paired['rounds'])} steps each, "
            f"medians): **{paired['overhead_pct']:+.1f}%** ({paired['baseline_ms']:.1f} -> "
            f"{paired['replay_ms']:.1f} ms); the buffer's own work (sample, add, refresh "
            f"priorities) is {paired['bookkeeping_ms']:.2f} ms of it "
            f"({paired['bookkeeping_pct']:.1f}% of a step), the rest is the discriminator's "
            f"{int(paired['replayed_rows'])} extra replayed rows. From the runs' own medians "
            f"(noisier: the machine is shared): {base_ms:.0f} -> {replay_ms:.0f} ms "
            f"({100 * (replay_ms / base_ms - 1):+.1f}%).",
            "",
            "Generated (fresh) pre-training examples per run: "
            f"{int(statistics.fmean(stats['baseline']['generated'])):,} in both conditions; "
            "replayed on top with replay: "
            f"{int(statistics.fmean(stats['replay']['replayed'])):,}.",
            "",
        ]
        for task in tasks:
            diffs = [
                r - b
                for r, b in zip(stats["replay"][f"{task}_test"], stats["baseline"][f"{task}_test"])
            ]
            mean, spread = mean_spread([100 * d for d in diffs])
            lines.append(
                f"- {task}: replay - baseline, paired by seed: {mean:+.1f} ± {spread:.1f} points "
                f"(per seed: {', '.join(f'{100 * d:+.1f}' for d in diffs)})."
            )
        lines.append("")
    lines += protocol_lines(report)
    e, r, p, f = cfg["electra"], cfg["replay"], cfg["pretrain"], cfg["finetune"]
    lines += [
        "## Setup",
        "",
        f"- Corpus: {cfg['data']['corpus']} ({cfg['data']['tokenizer']} tokens), pre-training "
        "windows from the train split; RTD accuracy on fixed windows of the valid split "
        f"({p['eval_examples']} windows, fixed masks), corrupted by each run's own generator.",
        f"- Discriminator: {e['backbone']} backbone, {e['n_layers']} layers, width "
        f"{e['d_model']}, {e['n_heads']} heads; generator width {e['generator_d_model']}, "
        f"{e['generator_layers']} layers; shared embedding; mask {e['mask_prob']}; "
        f"loss = MLM + {e['discriminator_weight']} x RTD; examples of {e['seq_len']} tokens.",
        f"- Pre-training: {p['steps']} steps x {p['batch_size']} fresh examples, AdamW lr "
        f"{p['lr']}, warmup {p['warmup_steps']}, cosine to {p['min_lr_ratio']} x lr.",
        f"- Replay: capacity {r['capacity']}, ratio {r['ratio']} of each discriminator batch, "
        f"priority {r['priority']}, alpha {r['alpha']}, beta {r['beta']} -> "
        f"{r['beta_final']}, eviction {r['eviction']}, replay from {r['min_fill']} examples.",
        f"- Fine-tuning: {f['epochs']} epochs, batch {f['batch_size']}, lr {f['lr']}, mean "
        "pooling + linear head; last epoch scored.",
    ]
    for name, task in tasks.items():
        lines.append(
            f"- Task `{name}`: {len(task['classes'])} classes, {task['train']} train / "
            f"{task['valid']} valid / {task['test']} test examples (fixed contiguous-block "
            f"splits); majority-class test accuracy {100 * task['majority_test']:.1f}%."
        )
    lines += [
        "- Tuning: the `[replay]` values were chosen on the valid split with separate seeds "
        "(the sweep and its rule are in the header of `configs/electra-tmr.toml`).",
        "",
        f"Total wall-clock: {report['seconds'] / 60:.1f} min.",
        "",
    ]
    return "\n".join(lines)


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = _summaries(report)
    tasks = list(report["tasks"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    keys = [k for k, _ in _CONDITIONS if k in stats]
    colors = {"baseline": "tab:blue", "replay": "tab:orange", "no_pretraining": "tab:gray"}
    width = 0.8 / len(keys)
    for offset, key in enumerate(keys):
        means, spreads = [], []
        for t in tasks:
            mean, spread = mean_spread([100 * v for v in stats[key][f"{t}_test"]])
            means.append(mean)
            spreads.append(spread)
        xs = [i + (offset - (len(keys) - 1) / 2) * width for i in range(len(tasks))]
        label = dict(_CONDITIONS)[key]
        left.bar(xs, means, width, yerr=spreads, capsize=3, color=colors[key], label=label)
        for x, t in zip(xs, tasks):
            values = [100 * v for v in stats[key][f"{t}_test"]]
            left.scatter([x] * len(values), values, color="black", s=8, zorder=3)
    left.set_xticks(range(len(tasks)), [f"{t} (test)" for t in tasks])
    left.set_ylabel("accuracy (%)")
    left.set_title("downstream accuracy, mean ± sd over seeds")
    left.legend(fontsize=8)
    for entry in report["runs"]:
        curve = entry.get("train_rtd_loss")
        if curve:
            steps, losses = zip(*curve)
            right.plot(steps, losses, color=colors[entry["condition"]], alpha=0.6, lw=1)
    right.set_xlabel("pre-training step")
    right.set_ylabel("RTD loss on fresh examples")
    right.set_title("discriminator loss (blue: no replay, orange: replay)")
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
