"""The CLI verbs that train, evaluate, generate from and inspect one run.

``train``, ``eval``, ``demo``, ``pretrain``, ``generate`` and ``inspect``: each parses its
options and calls one library function, imported inside the verb so that ``memtx --help``
stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from memtx.cli.common import app, fail, guarded
from memtx.cli.options import SetOption

__all__ = ["demo", "eval_", "generate", "inspect", "pretrain", "train"]


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
            fail("--resume uses the config saved in --out; drop --config")
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
    by_distance: Annotated[
        bool,
        typer.Option(help="BABILong-style runs: also split by how far back the fact ends."),
    ] = False,
    diagnostic: Annotated[
        str,
        typer.Option(
            help="Memformer text runs: evaluate with part of the history ablated: "
            "memory_reset (slots reset every segment), no_reader (the w/o-memory path), "
            "context_masked (the decoder never sees the previous segment's encoding)."
        ),
    ] = "none",
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
            "--diagnostic": diagnostic != "none",
        }
        given = [name for name, used in text_only.items() if used]
        if given:
            fail(f"{', '.join(given)}: for text runs; a task run takes --segments and --samples")
        metrics = evaluate_task_run(
            run, segments=segments, samples=samples, by_distance=by_distance
        )
        if as_json:
            typer.echo(json.dumps(metrics))
        else:
            typer.echo("  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        return

    if by_distance:
        fail("--by-distance: for BABILong-style task runs, not text runs")
    result = evaluate_run(
        run,
        split=split,
        corpus=data,
        overrides=set_ or [],
        max_tokens=max_tokens,
        rows=rows,
        progress=progress,
        diagnostic=diagnostic,
    )
    if as_json:
        typer.echo(json.dumps({"split": split, **result.to_dict()}))
    else:
        typer.echo(
            f"{split}: {result.tokens:,} tokens  bpc {result.bpc:.4f}  ppl {result.ppl:.3f}  "
            f"{result.tokens_per_s:,.0f} tokens/s  peak {result.peak_memory_mb:,.0f} MB"
        )
        head = max(1, len(result.bits_by_position) // 8)
        first, rest = result.bits_by_position[:head], result.bits_by_position[head:]
        if rest:  # how much a segment's start suffers from what the memory does not carry
            typer.echo(
                f"  bits/token at the first {head} positions of a segment "
                f"{sum(first) / len(first):.4f}, at the other {len(rest)} "
                f"{sum(rest) / len(rest):.4f}"
            )


@app.command()
@guarded
def demo(
    out: Annotated[
        Path, typer.Option(help="Run folder (replaced if it holds a finished demo).")
    ] = Path("runs/demo"),
    config: Annotated[Path, typer.Option(help="Preset to train.")] = Path("configs/demo.toml"),
    set_: SetOption = None,
    memory: Annotated[
        bool, typer.Option(help="Then let the shipped ARMT find a story in a long haystack.")
    ] = True,
    haystack_tokens: Annotated[
        int, typer.Option(help="Length of that haystack in tokens (a multiple of 64).")
    ] = 1 << 20,
) -> None:
    """The main job on the bundled defaults: train the demo preset on shakespeare, evaluate
    it; then memory at work: a small shipped ARMT reads one bAbI story hidden in about a
    million tokens of held-out text and answers its question from memory."""

    from memtx.demo import run_demo
    from memtx.haystack import DEMO_RUN, memory_demo

    if memory and (haystack_tokens < 1024 or haystack_tokens % 64):
        fail(f"--haystack-tokens must be a multiple of 64 and >= 1024, got {haystack_tokens}")
    if memory and not DEMO_RUN.is_dir():
        typer.echo(f"(memory at work skipped: the demo's ARMT is not in {DEMO_RUN})")
        memory = False
    run_demo(config=config, out_dir=out, overrides=set_ or [], echo=typer.echo)
    if memory:
        memory_demo(length=haystack_tokens, echo=typer.echo)


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
        fail("--resume uses the config saved in --out; drop --config")
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
    memory: Annotated[
        Optional[Path], typer.Option(help="Continue from this snapshot (memtx read --out).")
    ] = None,
    save_memory: Annotated[
        Optional[Path], typer.Option(help="Save the memory generation ends with here.")
    ] = None,
) -> None:
    """Continue a prompt, streamed to the terminal, with constant memory (from a snapshot
    of a text read earlier with --memory)."""

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
        memory=memory,
        save_memory=save_memory,
    )
    sys.stdout.write("\n")


@app.command()
@guarded
def inspect(
    run: Annotated[Path, typer.Option(help="A trained Memformer or ARMT run folder.")],
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
    """What the memory does, as heatmaps: Memformer (retention vs writing per slot) or
    ARMT (norm of A, write gate and correction per layer)."""

    from memtx.inspect import inspect_memory

    report = inspect_memory(
        run, corpus=data, document=document, split=split, max_segments=max_segments, out_dir=out
    )
    typer.echo(report.summary())
    typer.echo("wrote " + ", ".join(str(f) for f in report.files))
