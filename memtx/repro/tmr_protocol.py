"""``memtx repro tmr``'s low-noise protocol (issue 18): its figures per run, and its report.

Per pre-trained discriminator (and the random-init floor): a linear probe on frozen
features per task, and few-shot fine-tuning at ``shots`` examples per class averaged over
``finetune_seeds``; per run, the held-out RTD accuracy against generated examples (the
pre-training's ``eval_every`` points). The report gives, per figure, each condition's
mean ± sd over seeds, replay minus no replay paired by seed with its 95% interval, the
paired seeds a t-test needs to detect 1 point (power 0.8) at the spread measured, and the
test set's own standard error; then the generated examples replay needs to reach the
no-replay run's final RTD accuracy, as a ratio.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from memtx.electra.config import FinetuneConfig
from memtx.electra.finetune import finetune_task
from memtx.electra.model import Discriminator
from memtx.electra.protocol import (
    accuracy_standard_error,
    examples_to_reach,
    few_shot,
    linear_probe,
    mean_interval,
    paired_difference,
    seeds_to_detect,
)
from memtx.electra.tasks import ClassificationTask
from memtx.errors import ConfigError

__all__ = ["mean_sd", "mean_spread", "protocol_figures", "protocol_lines", "rtd_curve"]


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value; NaN for none)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def mean_sd(values: Sequence[float], *, scale: float = 100.0, digits: int = 1) -> str:
    """``values`` x ``scale`` as "mean ± sd" (accuracies in %, by default)."""
    mean, spread = mean_spread([v * scale for v in values])
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def protocol_figures(
    discriminator: Discriminator,
    tasks: dict[str, ClassificationTask],
    *,
    config: FinetuneConfig,
    pad_id: int,
    probe: bool,
    shots: Sequence[int],
    finetune_seeds: Sequence[int],
) -> dict[str, float]:
    """Figure name -> test accuracy: ``probe/<task>`` and ``<k>-shot/<task>`` (the mean
    over ``finetune_seeds``, each drawing its own k examples per class and its own head)."""
    figures: dict[str, float] = {}
    for name, task in tasks.items():
        if probe:
            figures[f"probe/{name}"] = linear_probe(
                discriminator, task, pad_id=pad_id
            ).test_accuracy
        for k in shots:
            scores = [
                finetune_task(
                    discriminator,
                    few_shot(task, per_class=k, seed=seed),
                    config=config,
                    seed=seed,
                    pad_id=pad_id,
                ).test_accuracy
                for seed in finetune_seeds
            ]
            figures[f"{k}-shot/{name}"] = statistics.fmean(scores)
    return figures


def rtd_curve(history: Sequence[dict[str, Any]], *, batch_size: int) -> list[tuple[int, float]]:
    """(generated examples, held-out RTD accuracy) at each of a run's validations."""
    return [
        (int(m["step"]) * batch_size, float(m["rtd_accuracy"]))
        for m in history
        if m.get("split") == "valid" and "rtd_accuracy" in m
    ]


def protocol_lines(report: dict[str, Any]) -> list[str]:
    """The protocol's section of ``tmr.md`` (empty when the report has no protocol)."""
    by_condition: dict[str, dict[int, dict[str, float]]] = {}
    for entry in report["runs"]:
        if "protocol" in entry:
            by_condition.setdefault(entry["condition"], {})[entry["seed"]] = entry["protocol"]
    if not by_condition:
        return []
    names = sorted({f for runs in by_condition.values() for p in runs.values() for f in p})
    test_sizes = {name: task["test"] for name, task in report["tasks"].items()}
    lines = [
        "## Low-noise protocol",
        "",
        "Test accuracy (%), mean ± sd over pre-training seeds: `probe/<task>` a linear probe "
        "on the frozen discriminator's pooled features; `<k>-shot/<task>` fine-tuning on k "
        "examples per class, averaged over the fine-tuning seeds "
        f"{report.get('finetune_seeds')}.",
        "",
        "| | " + " | ".join(names) + " |",
        "|---" * (1 + len(names)) + "|",
    ]
    for condition, runs in by_condition.items():
        cells = []
        for name in names:
            cells.append(mean_sd([runs[s][name] for s in sorted(runs) if name in runs[s]]))
        lines.append(f"| {condition} | " + " | ".join(cells) + " |")
    lines.append("")
    replay, baseline = by_condition.get("replay", {}), by_condition.get("baseline", {})
    seeds = sorted(set(replay) & set(baseline))
    if len(seeds) >= 2:
        lines += [
            "Replay minus no replay, paired by seed (points, 95% t-interval), the paired "
            "seeds a t-test at 95% needs to detect 1 point with power 0.8 at that spread, "
            "and the test set's standard error at the no-replay mean:",
            "",
        ]
        for name in names:
            a = [100 * replay[s][name] for s in seeds]
            b = [100 * baseline[s][name] for s in seeds]
            diff = paired_difference(a, b)
            needed = seeds_to_detect(sd=diff.sd) if diff.sd > 0 else 2
            task = name.split("/", 1)[1]
            error = 100 * accuracy_standard_error(statistics.fmean(b) / 100, test_sizes[task])
            lines.append(
                f"- {name}: {diff.mean:+.2f} ± {diff.half_width:.2f} (sd {diff.sd:.2f}, "
                f"n {diff.n}); {needed} seeds to detect 1 point; test-set error {error:.2f}."
            )
        lines.append("")
    lines += _efficiency_lines(report)
    return lines


def _efficiency_lines(report: dict[str, Any]) -> list[str]:
    curves: dict[str, dict[int, list[tuple[int, float]]]] = {}
    for entry in report["runs"]:
        if entry.get("rtd_curve"):
            curves.setdefault(entry["condition"], {})[entry["seed"]] = entry["rtd_curve"]
    seeds = sorted(set(curves.get("replay", {})) & set(curves.get("baseline", {})))
    if not seeds:
        return []
    ratios = []
    for seed in seeds:
        base, replay = curves["baseline"][seed], curves["replay"][seed]
        target_examples, target = max(base)  # the no-replay run's final point
        ratios.append(examples_to_reach(replay, target) / target_examples)
    finite = [r for r in ratios if math.isfinite(r)]
    text = ", ".join(f"{r:.2f}" for r in ratios)
    lines = [
        "Sample efficiency: generated examples replay needs to reach the no-replay run's "
        f"final held-out RTD accuracy, over the no-replay run's, per seed: {text}"
    ]
    if len(finite) >= 2:
        ratio = mean_interval(finite)
        lines[-1] += f" (mean {ratio.mean:.2f} ± {ratio.half_width:.2f}, 95%)."
    else:
        lines[-1] += " (inf: never reached)." if len(finite) < len(ratios) else "."
    return [*lines, ""]


def check_protocol(*, shots: Sequence[int], finetune_seeds: Sequence[int]) -> None:
    """Refuse shot counts or fine-tuning seeds that cannot run (before any pre-training)."""
    if any(k < 1 for k in shots):
        raise ConfigError(f"--shots must be >= 1 examples per class, got {list(shots)}")
    if shots and not finetune_seeds:
        raise ConfigError("few-shot fine-tuning needs at least one fine-tuning seed")
