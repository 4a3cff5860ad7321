"""``memtx repro memformer``: Memformer's efficiency claim at CPU scale, on real text.

The Memformer paper reports quality comparable to Transformer-XL at 8.1x less inference
memory and 3.2x faster inference. This trains, with the same budget (steps, batch, rollout,
segment length, optimizer, data order), on the same corpus:

- Memformer (encoder + decoder, slot memory, MRBP),
- Transformer-XL with caches of 64 ... 2048 tokens per layer (each trained with its cache),
- the transformer without memory,

then measures each on the validation split: bits per byte (``eval_tokens`` tokens as
``eval_rows`` streams) and, in a fresh process per model so the readings are clean,
inference tokens/s and memory while streaming ``infer_tokens`` tokens in each of
``infer_rows`` streams. Memory is reported two ways: the carried state (exact: the
bytes of the memory value between segments) and the process's peak memory above the
loaded model (RSS on CPU, ``max_memory_allocated`` on GPU). FLOPs per token come from
``FlopCounterMode`` on one segment with a full memory.

Results: ``memformer.md``, ``memformer.json`` and ``memformer.png`` (bpc against memory).
Each trained model is kept in ``runs_dir``; a model already trained there (a finished
``result.json``) is measured again but not retrained, so an interrupted reproduction
picks up where it stopped.

    memtx repro memformer --caches 64,128,256,512,1024,2048 --steps 400
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from memtx.bench.common import (
    markdown_table,
    max_rss_mb,
    peak_memory_mb,
    peak_rss_mb,
    report_worker,
    reset_peak_rss,
    run_json_worker,
)

__all__ = ["CACHES", "repro_memformer", "write_report"]

CACHES = (64, 128, 256, 512, 1024, 2048)

#: Shared by every model: width 128, 4 heads, segment 64, 8 streams x rollout 4, AdamW.
_BASE = [
    "model.d_model=128",
    "model.n_heads=4",
    "model.segment_len=64",
    "model.dropout=0.0",
    "train.batch_size=8",
    "train.rollout=4",
    "train.lr=2e-3",
    "train.warmup_steps=50",
    "train.min_lr_ratio=0.1",
    "train.eval_every=0",
    "train.log_every=50",
    "train.checkpoint_every=0",
    "data.corpus=shakespeare",
]


def variants(caches: Sequence[int]) -> dict[str, list[str]]:
    """id -> model overrides. Transformer-XL and the transformer have 4 blocks; Memformer
    2 encoder + 4 decoder blocks (its decoder is the same depth) and 16 slots."""
    table = {
        "memformer": [
            "model.name=memformer",
            "model.encoder_layers=2",
            "model.decoder_layers=4",
            "model.memory_slots=16",
            "train.strategy=mrbp",
        ],
        "transformer": ["model.name=transformer", "model.n_layers=4"],
    }
    for cache in caches:
        table[f"transformer_xl_{cache}"] = [
            "model.name=transformer_xl",
            "model.n_layers=4",
            f"model.mem_len={cache}",
        ]
    return table


def repro_memformer(
    *,
    out_dir: Path,
    runs_dir: Path,
    caches: Sequence[int] = CACHES,
    steps: int = 400,
    eval_tokens: int = 100_000,
    eval_rows: int = 8,
    infer_tokens: int = 4096,
    infer_rows: int = 8,
    device: str = "cpu",
    threads: int | None = None,
    overrides: Sequence[str] = (),
    echo: Callable[[str], None] = print,
) -> Path:
    """Train (or reuse) every model, measure each in a fresh process, write the table/plot."""
    from memtx.config import load_run_config
    from memtx.errors import ConfigError
    from memtx.train import evaluate_run, prepare_data, train

    if any(not isinstance(c, int) or c < 1 for c in caches):
        raise ConfigError(f"caches must be cache lengths >= 1, got {list(caches)}")
    rows: list[dict[str, Any]] = []
    runs_dir.mkdir(parents=True, exist_ok=True)
    valid_path = runs_dir / "valid-tokens.npy"
    for name, settings in variants(caches).items():
        run = load_run_config(
            None,
            overrides=[
                *_BASE,
                *settings,
                f"train.steps={steps}",
                f"train.device={device}",
                f"train.eval_tokens={eval_tokens}",
                *overrides,
            ],
        )
        folder = runs_dir / name
        done = folder / "result.json"
        if done.exists():
            trained = json.loads(done.read_text())
        else:
            if folder.exists():
                import shutil

                shutil.rmtree(folder)
            began = time.perf_counter()
            result = train(run, out_dir=folder, progress=False)
            minutes = (time.perf_counter() - began) / 60
            quality = evaluate_run(folder, max_tokens=eval_tokens, rows=eval_rows)
            trained = {
                "train_minutes": minutes,
                "train_tokens_per_s": result.tokens_per_s,
                "valid_bpc": quality.bpc,
                "parameters": result.model.num_parameters(),
            }
            done.write_text(json.dumps(trained, indent=1) + "\n")
        if not valid_path.exists():
            data = prepare_data(run.data)
            need = infer_rows * infer_tokens + 1
            np.save(valid_path, np.asarray(data.valid[:need], dtype=np.int64))
        args = [
            f"--run={folder}",
            f"--tokens-file={valid_path}",
            f"--rows={infer_rows}",
            f"--device={device}",
        ]
        measured = run_json_worker("memtx.repro.memformer", args, timeout_s=3600, threads=threads)
        row = {"model": name, **trained, **measured}
        rows.append(row)
        echo(json.dumps(row))
    out_dir.mkdir(parents=True, exist_ok=True)
    settings_text = " ".join([*_BASE, f"train.steps={steps}", *overrides])
    results = {
        "rows": rows,
        "steps": steps,
        "settings": settings_text,
        "device": device,
        "eval_tokens": eval_tokens,
        "infer_tokens": infer_tokens,
        "infer_rows": infer_rows,
    }
    (out_dir / "memformer.json").write_text(json.dumps(results, indent=1) + "\n")
    return write_report(out_dir, results)


def write_report(out_dir: Path, results: dict[str, Any]) -> Path:
    """``memformer.md`` and ``memformer.png`` from the results (as in ``memformer.json``)."""
    _write_plot(out_dir / "memformer.png", results["rows"])
    path = out_dir / "memformer.md"
    path.write_text(_markdown(results))
    return path


def measure_inference(
    *, run_dir: Path, tokens_file: Path, rows: int, device: str
) -> dict[str, Any]:
    """Stream ``tokens_file`` as ``rows`` streams through a trained model (no gradient)."""
    import torch

    from memtx.bench.common import count_flops
    from memtx.evaluate import evaluate_tokens
    from memtx.models.protocol import memory_nbytes
    from memtx.recurrence import stream
    from memtx.train import load_trained

    dev = torch.device(device)
    _, model = load_trained(run_dir, device=dev)
    tokens = np.load(tokens_file, allow_pickle=False)
    segment = model.config.segment_len
    # Baseline: the runtime, the weights and the tokens, before any step. A new peak
    # window starts here, so loading the checkpoint (with its optimizer state) does not
    # hide the streaming peak; a warm-up step before it would hide the activations.
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        baseline = peak_memory_mb(dev)
    else:
        gc.collect()
        windowed = reset_peak_rss()
        baseline = peak_rss_mb()
    with torch.no_grad():  # warm-up: the first calls pay one-off costs
        warm = torch.as_tensor(tokens[: rows * segment].reshape(rows, segment), device=dev)
        model.step(warm, model.init_memory(rows, device=dev))
    result = evaluate_tokens(model, tokens, rows=rows, device=dev)
    peak = peak_memory_mb(dev) if dev.type == "cuda" else peak_rss_mb()
    # The memory after a whole stream, and the FLOPs of one more segment reading it.
    grid = torch.as_tensor(tokens[: rows * (len(tokens) // rows)].reshape(rows, -1), device=dev)
    memory = model.init_memory(rows, device=dev)
    # Whole segments only: the state after a full last segment is the steady-state size.
    whole = grid.shape[1] // segment * segment
    if whole:
        for _, out in stream(model, grid[:, :whole], memory, segment_len=segment):
            memory = out.memory
    with torch.no_grad():
        state_bytes = memory_nbytes(memory)
        last = grid[:, :segment]
        flops = count_flops(lambda: model.step(last, memory))
    return {
        "status": "ok",
        "infer_tokens_per_s": result.tokens_per_s,
        "state_mb_per_stream": state_bytes / rows / 2**20,
        "peak_over_model_mb": max(peak - baseline, 0.0),
        "peak_mb": peak,
        "peak_window": dev.type == "cuda" or windowed,
        "flops_per_token": flops / (rows * segment),
        "device": str(dev),
        "max_rss_mb": max_rss_mb(),
    }


def _label(name: str) -> str:
    if name.startswith("transformer_xl_"):
        return f"Transformer-XL, cache {name.rsplit('_', 1)[1]}"
    return {"memformer": "Memformer (16 slots)", "transformer": "transformer, no memory"}[name]


def _markdown(results: dict[str, Any]) -> str:
    rows = [r for r in results["rows"] if r.get("status") == "ok"]
    xl = [r for r in rows if r["model"].startswith("transformer_xl_")]
    best = min(xl, key=lambda r: r["valid_bpc"]) if xl else None
    table = []
    for r in results["rows"]:
        if r.get("status") != "ok":
            table.append([_label(r["model"]), r.get("status", "?"), "", "", "", "", "", ""])
            continue
        table.append(
            [
                _label(r["model"]),
                f"{r['valid_bpc']:.3f}",
                f"{r['state_mb_per_stream'] * 1024:,.1f}",
                f"{r['peak_over_model_mb']:,.1f}",
                f"{r['infer_tokens_per_s']:,.0f}",
                f"{r['flops_per_token'] / 1e6:.2f}",
                f"{r['parameters'] / 1e6:.2f}",
                f"{r['train_minutes']:.1f}",
            ]
        )
    text = (
        "# Memformer vs Transformer-XL caches vs no memory (memtx repro memformer)\n\n"
        f"Shakespeare (byte level, held-out plays). Every model trained with the same budget: "
        f"{results['steps']} steps of 8 streams x rollout 4 x segment 64 bytes, AdamW 2e-3 "
        f"(settings: `{results['settings']}`). Validation bits per byte on "
        f"{results['eval_tokens']:,} bytes. Inference: {results['infer_rows']} streams of "
        f"{results['infer_tokens']:,} bytes each, no gradient, one fresh process per model, "
        f"device {results['device']}. State = the memory carried between segments, per "
        "stream (exact); peak = the process's peak memory above the loaded model (RSS on "
        "CPU: noisy by a few MB).\n\n"
        + markdown_table(
            [
                "model",
                "valid bpc",
                "state KB/stream",
                "peak MB over model",
                "inference tok/s",
                "MFLOP/token",
                "params (M)",
                "train min",
            ],
            table,
        )
    )
    memformer = next((r for r in rows if r["model"] == "memformer"), None)
    if memformer and best:
        gap = memformer["valid_bpc"] / best["valid_bpc"] - 1
        text += (
            f"\nAgainst the best Transformer-XL ({_label(best['model'])}, "
            f"{best['valid_bpc']:.3f} bpc): Memformer's bpc is {gap:+.1%}, its carried state "
            f"{best['state_mb_per_stream'] / memformer['state_mb_per_stream']:.1f}x smaller, "
            f"its peak inference memory over the model "
            f"{_ratio(best['peak_over_model_mb'], memformer['peak_over_model_mb'])} smaller, "
            f"its inference "
            f"{memformer['infer_tokens_per_s'] / best['infer_tokens_per_s']:.2f}x as fast, "
            f"at {memformer['flops_per_token'] / best['flops_per_token']:.2f}x its FLOPs "
            "per token. The paper: comparable quality at 8.1x less memory, 3.2x faster.\n"
        )
    if memformer and xl:
        text += "\nMemformer against each Transformer-XL (ratios > 1 favour Memformer):\n\n"
        text += markdown_table(
            [
                "Transformer-XL cache",
                "bpc difference",
                "state smaller",
                "peak memory smaller",
                "inference speed",
                "FLOPs/token (XL / Memformer)",
            ],
            [
                [
                    r["model"].rsplit("_", 1)[1],
                    f"{memformer['valid_bpc'] / r['valid_bpc'] - 1:+.1%}",
                    f"{r['state_mb_per_stream'] / memformer['state_mb_per_stream']:.1f}x",
                    _ratio(r["peak_over_model_mb"], memformer["peak_over_model_mb"]),
                    f"{memformer['infer_tokens_per_s'] / r['infer_tokens_per_s']:.2f}x",
                    f"{r['flops_per_token'] / memformer['flops_per_token']:.2f}x",
                ]
                for r in xl
            ],
        )
    text += "\nPlot: `memformer.png` (bpc against carried state). Reproduce: "
    text += "`memtx repro memformer` (add `--device cuda` on a GPU).\n"
    return text


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}x" if b > 0.05 else "n/a (below the RSS noise)"


def _write_plot(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.get("status") == "ok"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    xl = sorted(
        (r for r in ok if r["model"].startswith("transformer_xl_")),
        key=lambda r: r["state_mb_per_stream"],
    )
    if xl:
        ax.plot(
            [r["state_mb_per_stream"] * 1024 for r in xl],
            [r["valid_bpc"] for r in xl],
            "o-",
            label="Transformer-XL (cache 64..2048)",
        )
        for r in xl:
            ax.annotate(
                r["model"].rsplit("_", 1)[1],
                (r["state_mb_per_stream"] * 1024, r["valid_bpc"]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=8,
            )
    for name, marker in (("memformer", "*"), ("transformer", "s")):
        for r in ok:
            if r["model"] == name:
                # The transformer carries nothing; draw it at the left edge.
                x = max(r["state_mb_per_stream"] * 1024, 1.0)
                ax.plot([x], [r["valid_bpc"]], marker, markersize=12, label=_label(name))
    ax.set_xscale("log")
    ax.set_xlabel("memory carried between segments, KB per stream (log)")
    ax.set_ylabel("validation bits per byte")
    ax.set_title("Quality against inference memory (shakespeare)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run", type=Path)
    parser.add_argument("--tokens-file", type=Path)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if not args.worker:
        parser.error("run `memtx repro memformer`; this entry point is its worker")
    return report_worker(
        lambda: measure_inference(
            run_dir=args.run, tokens_file=args.tokens_file, rows=args.rows, device=args.device
        )
    )


if __name__ == "__main__":
    raise SystemExit(main())
