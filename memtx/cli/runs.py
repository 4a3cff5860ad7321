"""The ``memtx`` command line: thin wrappers over library functions.

Bad input (a config typo, a missing file, an unknown corpus) prints one line on stderr
and exits with code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, NoReturn, Optional, ParamSpec

import typer

from memtx.errors import MemtxError
from memtx.paths import check_writable_folder

app = typer.Typer(
    name="memtx",
    help="Memory-augmented transformers: train, evaluate, generate, benchmark.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
repro_app = typer.Typer(
    help="Reproductions of the papers' claims, committed under benchmarks/.", no_args_is_help=True
)
bench_app = typer.Typer(
    help="Benchmarks whose results are committed under benchmarks/.", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")
app.add_typer(repro_app, name="repro")

P = ParamSpec("P")

_state = {"debug": False}


def _fail(message: str) -> NoReturn:
    """Print ``error: message`` on stderr and exit with code 2 (bad input)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def guarded(command: Callable[P, None]) -> Callable[P, None]:
    """Decorate a verb (under ``@app.command()``) so that errors end it cleanly.

    A :class:`MemtxError` (bad input) becomes one line on stderr and exit code 2, or its
    traceback with ``--debug``; an interrupted run (``TrainingInterrupted``) or Ctrl-C
    exits with code 130. ``functools.wraps`` keeps the verb's signature, which typer
    reads for the options.
    """

    @functools.wraps(command)
    def verb(*args: P.args, **kwargs: P.kwargs) -> None:
        from memtx.train import TrainingInterrupted

        try:
            command(*args, **kwargs)
        except TrainingInterrupted as exc:
            typer.echo(f"interrupted: {exc}", err=True)
            raise typer.Exit(130) from None
        except MemtxError as exc:
            if _state["debug"]:
                raise
            _fail(str(exc))
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return verb


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    """memtx: long-context models that carry a small memory between segments."""
    _state["debug"] = debug


SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a config value: section.key=value (repeatable)."),
]


@app.command()
@guarded
def train(
    out: Annotated[Path, typer.Option(help="Run folder to create (or resume).")],
    config: Annotated[
        Optional[Path], typer.Option(help="TOML preset, e.g. configs/demo.toml.")
    ] = None,
    set_: SetOption = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the run in --out from its last checkpoint.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    device: Annotated[
        Optional[str], typer.Option(help="cpu, cuda, cuda:N or auto (= --set train.device=...).")
    ] = None,
    compile_: Annotated[
        bool, typer.Option("--compile", help="torch.compile the model (slow first step).")
    ] = False,
) -> None:
    """Train a model: memtx train --config configs/demo.toml --out runs/demo.

    Several processes: torchrun --nproc_per_node=N -m memtx train ... (train.batch_size
    is the global batch, split over the processes).
    """
    extra = [f"train.device={device}"] if device is not None else []
    extra += ["train.compile=true"] if compile_ else []

    from memtx.config import load_run_config
    from memtx.train import load_saved_run
    from memtx.train import train as train_run

    if resume:
        if config is not None:
            _fail("--resume uses the config saved in --out; drop --config")
        run_cfg = load_saved_run(out, overrides=[*(set_ or []), *extra])
    else:
        run_cfg = load_run_config(config, overrides=[*(set_ or []), *extra])
    result = train_run(run_cfg, out_dir=out, resume=resume, progress=progress)
    summary = {
        "run": str(result.run_dir),
        "steps": result.steps,
        "train_loss": result.final_loss,
        "tokens_per_s": round(result.tokens_per_s),
    }
    summary.update({f"valid_{k}": round(v, 4) for k, v in result.valid.items()})
    typer.echo(json.dumps(summary))


@app.command("eval")
@guarded
def eval_(
    run: Annotated[Path, typer.Option(help="Run folder written by memtx train.")],
    split: Annotated[str, typer.Option(help="valid or test.")] = "valid",
    data: Annotated[
        Optional[str], typer.Option(help="Corpus to score instead of the run's.")
    ] = None,
    set_: SetOption = None,
    max_tokens: Annotated[int, typer.Option(help="Score at most this many tokens (0: all).")] = 0,
    rows: Annotated[int, typer.Option(help="Parallel streams.")] = 8,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    segments: Annotated[
        Optional[int], typer.Option(help="Task runs: evaluate at this many segments.")
    ] = None,
    samples: Annotated[int, typer.Option(help="Task runs: held-out samples.")] = 500,
) -> None:
    """Evaluate a trained run, streamed segment by segment: bits per byte / perplexity,
    or answer accuracy for a task run (--segments to evaluate longer than trained)."""

    from memtx.train import evaluate_run, evaluate_task_run, load_saved_run

    if segments is not None or load_saved_run(run).task is not None:
        text_only = {
            "--split": split != "valid",
            "--data": data is not None,
            "--set": bool(set_),
            "--max-tokens": max_tokens != 0,
            "--rows": rows != 8,
        }
        given = [name for name, used in text_only.items() if used]
        if given:
            _fail(f"{', '.join(given)}: for text runs; a task run takes --segments and --samples")
        metrics = evaluate_task_run(run, segments=segments, samples=samples)
        if as_json:
            typer.echo(json.dumps(metrics))
        else:
            typer.echo("  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        return

    result = evaluate_run(
        run,
        split=split,
        corpus=data,
        overrides=set_ or [],
        max_tokens=max_tokens,
        rows=rows,
        progress=progress,
    )
    if as_json:
        typer.echo(json.dumps({"split": split, **result.to_dict()}))
    else:
        typer.echo(
            f"{split}: {result.tokens:,} tokens  bpc {result.bpc:.4f}  ppl {result.ppl:.3f}  "
            f"{result.tokens_per_s:,.0f} tokens/s  peak {result.peak_memory_mb:,.0f} MB"
        )


@app.command()
@guarded
def demo(
    out: Annotated[
        Path, typer.Option(help="Run folder (replaced if it holds a finished demo).")
    ] = Path("runs/demo"),
    config: Annotated[Path, typer.Option(help="Preset to train.")] = Path("configs/demo.toml"),
    set_: SetOption = None,
) -> None:
    """The main job on the bundled defaults: train the demo preset on shakespeare, evaluate it."""

    from memtx.train import run_demo

    run_demo(config=config, out_dir=out, overrides=set_ or [], echo=typer.echo)


@app.command()
@guarded
def pretrain(
    out: Annotated[Path, typer.Option(help="Run folder to create (or resume).")],
    config: Annotated[
        Optional[Path], typer.Option(help="ELECTRA preset (default configs/electra-small.toml).")
    ] = None,
    set_: SetOption = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the run in --out from its last checkpoint.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """ELECTRA pre-training, with the TMR replay buffer unless --set replay.enabled=false."""

    from memtx.electra import pretrain_from_config

    if resume and config is not None:
        _fail("--resume uses the config saved in --out; drop --config")
    summary = pretrain_from_config(
        config or Path("configs/electra-small.toml"),
        overrides=set_ or [],
        out_dir=out,
        progress=progress,
        resume=resume,
    )
    typer.echo(json.dumps(summary, default=str))


@app.command()
@guarded
def generate(
    run: Annotated[Path, typer.Option(help="Run folder written by memtx train.")],
    prompt: Annotated[str, typer.Option(help="Text to continue (any length).")],
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = 200,
    temperature: Annotated[float, typer.Option(help="0 is greedy.")] = 0.8,
    top_k: Annotated[int, typer.Option(help="Sample among the k most likely (0: all).")] = 0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass (1: all).")] = 0.95,
    seed: Annotated[Optional[int], typer.Option(help="Sampling seed.")] = None,
    stop: Annotated[
        Optional[list[str]], typer.Option(help="Stop when this text appears (repeatable).")
    ] = None,
) -> None:
    """Continue a prompt, streamed to the terminal, with constant memory."""

    from memtx.generate import generate_text

    def stream(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    generate_text(
        run,
        prompt,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop=stop or [],
        stream=stream,
    )
    sys.stdout.write("\n")


@app.command()
@guarded
def inspect(
    run: Annotated[Path, typer.Option(help="A trained Memformer run folder.")],
    data: Annotated[
        Optional[str], typer.Option(help="Corpus to read instead of the run's.")
    ] = None,
    document: Annotated[int, typer.Option(help="Index of the document in the split.")] = 0,
    split: Annotated[str, typer.Option(help="valid or test.")] = "valid",
    max_segments: Annotated[int, typer.Option(help="Segments of the document to read.")] = 64,
    out: Annotated[
        Optional[Path], typer.Option(help="Folder for the PNGs (default RUN/inspect).")
    ] = None,
) -> None:
    """What Memformer's memory does: retention vs writing per slot and segment, as heatmaps."""

    from memtx.inspect import inspect_memory

    report = inspect_memory(
        run, corpus=data, document=document, split=split, max_segments=max_segments, out_dir=out
    )
    typer.echo(report.summary())
    typer.echo("wrote " + ", ".join(str(f) for f in report.files))


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

    lengths = _int_list(rollouts, name="--rollouts")
    _at_least(steps, 1, name="--steps")
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

    names = _names(models, name="--models", known=list(MODELS))
    points = _int_list(lengths, name="--lengths")
    _at_least(mem_len, 0, name="--mem-len")
    _device(device)
    check_writable_folder(out)
    run_scaling_benchmark(out_dir=out, models=names, lengths=points, mem_len=mem_len, device=device)
    typer.echo(f"wrote {out / 'scaling.md'} and {out / 'scaling.png'}")


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
        str, typer.Option(help="Comma-separated: rmt, rmt_start_only, transformer_xl, transformer.")
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

    chosen = _names(variants, name="--variants", known=list(RMT_VARIANTS))
    names = _names(tasks, name="--tasks", known=["copy", "reverse"])
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
        _fail(f"--caches: expected comma-separated integers, got {caches!r}")
    if not lengths:
        _fail(f"--caches expects at least one cache length, got {caches!r}")
    _at_least(steps, 1, name="--steps")
    _at_least(threads, 1, name="--threads")
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

    _at_least(steps, 1, name="--steps")
    _at_least(threads, 1, name="--threads")
    check_writable_folder(out)
    run_peers_benchmark(out_dir=out, steps=steps, threads=threads)
    typer.echo(f"wrote {out / 'peers.md'}")


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
) -> None:
    """ELECTRA with and without replay at equal generated examples, 5 seeds, then fine-tuning."""

    from memtx.repro.tmr import repro_tmr as run_repro

    check_writable_folder(out)
    path = run_repro(
        out_dir=out,
        seeds=_int_list(seeds, name="--seeds", minimum=0),
        config_path=config,
        overrides=set_ or [],
        work_dir=runs,
        threads=threads,
        echo=typer.echo,
    )
    typer.echo(f"wrote {path}")


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
        _fail(f"--dtype must be fp32 or bf16, got {dtype!r}")
    _device(device)
    for size in _int_list(sizes, name="--sizes"):
        flops = measure_matmul_peak(device=device, dtype=dtype, size=size)
        typer.echo(f"{size}x{size} {dtype} matmul on {device}: {flops / 1e9:,.1f} GFLOP/s")


def _int_list(text: str, *, name: str, minimum: int = 1) -> list[int]:
    """The comma-separated integers of option ``name``, each >= ``minimum`` (at least one)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        _fail(f"{name} expects comma-separated integers, got {text!r}")
    if not values or min(values) < minimum:
        _fail(f"{name} expects integers >= {minimum}, got {text!r}")
    return values


def _names(text: str, *, name: str, known: Sequence[str]) -> list[str]:
    """The comma-separated names of option ``name``: at least one, each one of ``known``."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        _fail(f"{name} expects at least one of {', '.join(known)}, got {text!r}")
    unknown = [n for n in names if n not in known]
    if unknown:
        _fail(f"{name}: unknown {unknown[0]!r} (known: {', '.join(known)})")
    return names


def _at_least(value: int | None, minimum: int, *, name: str) -> None:
    """Exit 2 unless option ``name`` is unset (None) or >= ``minimum``."""
    if value is not None and value < minimum:
        _fail(f"{name} must be >= {minimum}, got {value}")


def _device(device: str) -> None:
    """Exit 2 unless ``--device`` is cpu, or cuda / cuda:N with that GPU present."""
    index = device.removeprefix("cuda:")
    if device not in ("cpu", "cuda") and not (device.startswith("cuda:") and index.isdigit()):
        _fail(f"--device must be cpu, cuda or cuda:N, got {device!r}")
    if device != "cpu":
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (int(index) if index.isdigit() else 0) >= count:
            _fail(f"--device is {device!r} but this machine has {count} CUDA GPU(s)")


def run() -> None:
    """Console-script entry point."""
    try:
        app()
    except SystemExit as exc:
        # click reports usage errors with exit code 2 already; keep others as they are.
        raise exc


if __name__ == "__main__":
    sys.exit(app())
