"""The tables of ``memtx repro pretrained``: the markdown it writes from its results."""

from __future__ import annotations

from typing import Any

from memtx.bench.common import binned_distances, distance_markdown, markdown_table

__all__ = ["distance_table", "markdown"]

#: a :class:`memtx.repro.pretrained.PretrainedRepro` (not imported: that module imports this)
Settings = Any


def markdown(results: dict[str, Any], settings: Settings) -> str:
    """``pretrained.md`` from ``pretrained.json``'s ``results`` and the run's settings."""
    cells = results["cells"]
    names = list(dict.fromkeys(key.rsplit(" @ ", 1)[0] for key in cells))
    wrapped = tuple(f"{m}-SmolLM2" for m in settings.models)
    names.sort(key=lambda name: not name.startswith(wrapped))  # the memory rows first
    rows = []
    for name in names:
        row = [name]
        for length in settings.lengths:
            cell = cells.get(f"{name} @ {length}")
            if cell is None:
                row.append("-")
            elif cell["token_accuracy"] is None:  # a generated answer: right or wrong
                row.append(f"{cell['exact_match']:.2f}")
            else:
                row.append(f"{cell['exact_match']:.2f} / {cell['token_accuracy']:.2f}")
        rows.append(row)
    header = [
        "model",
        *(
            f"{n} seg ({n * settings.segment_len} tok)" if n else "0 (story alone)"
            for n in settings.lengths
        ),
    ]
    by_distance = distance_table(cells, names, settings)
    rates = results.get("throughput", {})
    bare = rates.get("bare")
    speed = [
        f"- {name}: {rate:,.0f} tokens/s"
        + (f" ({rate / bare:.2f}x the bare model)" if bare else "")
        for name, rate in rates.items()
    ]
    training = results.get("training", {})
    trained = [
        f"- {name}-SmolLM2: {info['steps']} steps in {info['seconds'] / 60:.1f} min"
        for name, info in training.items()
    ]
    s = settings
    threads = results.get("threads", 1)
    title = "facts in noise" if s.task == "facts" else f"BABILong-style {s.task}"
    return "\n".join(
        [
            f"# RMT and ARMT around a pretrained SmolLM2-135M ({title})",
            "",
            f"Reproduce: `OMP_NUM_THREADS={threads} memtx repro pretrained {_flags(s)}` "
            f"(segments of {s.segment_len}, curriculum {list(s.stages)} x {s.stage_steps} steps"
            f"{', segments drawn per batch' if s.vary_segments else ''}, "
            f"batch {s.batch_size}, lr {s.lr}, LoRA rank {s.lora_rank}"
            f"{' on ' + ', '.join(s.lora_targets) if s.lora_targets else ''}, {s.eval_samples} "
            f"held-out samples per length, corpus {s.corpus} (evaluated on its held-out "
            f"documents), {threads} CPU thread{'s' if threads > 1 else ''}).",
            "",
            "Cells: exact match / answer token accuracy "
            f"({'3 digits' if s.task == 'facts' else 'the answer word'}) on the same samples"
            + (
                "; the asked-in-words row: the share of greedy answers in which the target is "
                "the only candidate label (BABILong's rule)."
                if s.task != "facts"
                else "."
            ),
            "",
            markdown_table(header, rows).rstrip("\n"),
            "",
            *by_distance,
            "Training:",
            *trained,
            "",
            *(["Speed (streamed, 8 segments, batch 1, no gradient):", *speed, ""] if speed else []),
        ]
    )


def distance_table(cells: dict[str, Any], names: list[str], settings: Settings) -> list[str]:
    """The memory models' exact match by how many segments back the supporting fact
    ends (binned), one row per (model, length) read in more than one segment; [] if none."""
    rows = []
    for name in names:
        for length in settings.lengths:
            split = binned_distances(dict(cells.get(f"{name} @ {length}", {})))
            if len(split) > 1:
                rows.append((f"{name}, {length or 'story alone'}", split))
    if not rows:
        return []
    return [
        "Memory rows by how many segments back the (earliest) supporting fact ends "
        "(0: in the question's own segment): exact match (samples).",
        "",
        distance_markdown(rows, first="model, length").rstrip("\n"),
        "",
    ]


def _flags(s: Settings) -> str:
    """The ``memtx repro pretrained`` options that give ``s`` (those not at their default)."""
    default = type(s)()
    flags = [f"--stage-steps {s.stage_steps}", f"--samples {s.eval_samples}"]
    for name, flag in (("task", "--task"), ("batch_size", "--batch-size"), ("lr", "--lr")):
        if getattr(s, name) != getattr(default, name):
            flags.append(f"{flag} {getattr(s, name)}")
    for name, flag in (("stages", "--stages"), ("lengths", "--lengths")):
        if getattr(s, name) != getattr(default, name):
            flags.append(f"{flag} {','.join(map(str, getattr(s, name)))}")
    if s.vary_segments:
        flags.append("--vary-segments")
    if s.models != default.models:
        flags.append(f"--models {','.join(s.models)}")
    flags += [f"--set {item}" for item in s.overrides]
    if s.lora_targets:
        flags.append(f"--lora-targets {','.join(s.lora_targets)}")
    for name, flag in (("init_from", "--init-from"), ("in_view_from", "--in-view-from")):
        if getattr(s, name):
            flags.append(f"{flag} {getattr(s, name)}")
    return " ".join(flags)
