"""Snapshots: exact after a long read, a few kilobytes, and reading once beats reading again.

1. ``exact``: a run's model reads ``--tokens`` (1M) tokens; the snapshot is saved; this
   process continues reading and takes the next-token logits at several points of a
   continuation, and a fresh process loads the snapshot and does the same. Reported: the
   largest absolute difference (0 on CPU: the same arithmetic on the same values).
2. ``sizes``: the snapshot file of each model at the demo's size beside what
   Transformer-XL's cache (its memory) and a full key/value cache of the same 1M tokens
   would take (2 x layers x tokens x d_model float32 values).
3. ``questions``: read a haystack once and save it, then answer three questions from the
   snapshot (load + read the question + generate), against reading the haystack again
   for each question. Reported: seconds per answer and their ratio.

    python -m memtx.bench.snapshots --run runs/babilong/rmt-qa1 --out benchmarks/snapshots.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

import memtx
from memtx import snapshot
from memtx.data import load_tokenizer
from memtx.generate import Generation, Sampler
from memtx.models.protocol import SegmentModel, memory_nbytes
from memtx.reading import Context, next_logits, read, start_context
from memtx.train import load_trained

__all__ = ["continuation_logits", "main"]

#: where the continuation's next-token logits are taken (tokens into it)
POINTS = (0, 1, 37, 200, 1000)
QUESTIONS = (" Where is Mary?", " Where is John?", " Where is the apple?")
DEMO = {"vocab_size": 256, "d_model": 192, "n_layers": 4, "n_heads": 4, "segment_len": 128}


def _text_tokens(run: Path, count: int) -> torch.Tensor:
    """``count`` tokens of the repository's own text (README, benchmarks), repeated."""
    root = Path(__file__).resolve().parents[2]
    text = "\n".join(
        p.read_text() for p in [root / "README.md", *sorted(root.glob("benchmarks/*.md"))]
    )
    ids = torch.from_numpy(load_tokenizer(run).encode(text).astype("int64"))
    return ids.repeat(count // len(ids) + 1)[:count][None]


def continuation_logits(
    model: SegmentModel, context: Context, tokens: torch.Tensor
) -> torch.Tensor:
    """Next-token logits [len(POINTS), V] after reading ``tokens[:, :p]`` for each point p."""
    return torch.stack([next_logits(model, read(model, tokens[:, :p], context))[0] for p in POINTS])


def _fresh_process(run: Path, mem: Path, continuation: Path, out: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from memtx.bench.snapshots import _fresh_main; "
        "_fresh_main(*map(Path, sys.argv[1:]))"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(run), str(mem), str(continuation), str(out)], check=True
    )


def _fresh_main(run: Path, mem: Path, continuation: Path, out: Path) -> None:
    """In a new process: load the run and the snapshot, write the continuation's logits."""
    _, model = load_trained(run)
    saved = snapshot.load(mem, model=model)
    context = Context(saved.memory, saved.pending, saved.tokens_read)
    tokens = load_file(continuation)["tokens"]
    save_file({"logits": continuation_logits(model, context, tokens)}, out)


def measure_exact(run: Path, *, tokens: int, folder: Path) -> dict[str, Any]:
    _, model = load_trained(run)
    text = _text_tokens(run, tokens + max(POINTS))
    began = time.perf_counter()
    context = read(model, text[:, :tokens], start_context(model))
    seconds = time.perf_counter() - began
    mem = snapshot.save(folder / "read.mem", model=model, context=context)
    continuation = text[:, tokens:].contiguous()
    save_file({"tokens": continuation}, folder / "continuation.st")
    here = continuation_logits(model, context, continuation)
    _fresh_process(run, mem, folder / "continuation.st", folder / "there.st")
    there = load_file(folder / "there.st")["logits"]
    return {
        "model": str(snapshot.identify(model, run=run)),
        "tokens_read": tokens,
        "read_seconds": round(seconds, 1),
        "read_tokens_per_s": round(tokens / seconds),
        "snapshot_bytes": mem.stat().st_size,
        "points": list(POINTS),
        "max_abs_diff": float((here - there).abs().max()),
    }


def measure_sizes(*, tokens: int, folder: Path) -> list[dict[str, Any]]:
    rows = []
    models = {
        "transformer": {},
        "transformer_xl": {"mem_len": 128},
        "memformer": {"memory_slots": 32, "encoder_layers": 2, "decoder_layers": 2},
        "rmt": {"memory_tokens": 16},
        "armt": {"memory_tokens": 16, "d_mem": 32},
    }
    for name, fields in models.items():
        model = memtx.build(name, **DEMO, **fields).eval()
        context = read(
            model, torch.randint(0, 256, (1, 3 * DEMO["segment_len"] + 5)), start_context(model)
        )
        path = snapshot.save(folder / f"{name}.mem", model=model, context=context)
        memory_bytes = memory_nbytes(context.memory)
        layers, width = DEMO["n_layers"], DEMO["d_model"]
        rows.append(
            {
                "model": name,
                "memory_kb": round(memory_bytes / 1024, 1),
                "snapshot_file_kb": round(path.stat().st_size / 1024, 1),
                "transformer_xl_cache_kb": round(layers * 128 * width * 4 / 1024, 1),
                "full_kv_cache_kb": round(2 * layers * tokens * width * 4 / 1024),
            }
        )
    return rows


def measure_questions(
    run: Path, *, tokens: int, folder: Path, new_tokens: int = 16
) -> dict[str, Any]:
    _, model = load_trained(run)
    tokenizer = load_tokenizer(run)
    haystack = _text_tokens(run, tokens)
    greedy = Sampler(temperature=0)

    def answer(context: Context, question: str) -> list[int]:
        ids = torch.from_numpy(tokenizer.encode(question).astype("int64"))[None]
        generation = Generation(
            model, read(model, ids, context), max_new_tokens=new_tokens, sampler=greedy
        )
        return [int(t[0]) for t in generation]

    began = time.perf_counter()
    snapshot.save(
        folder / "haystack.mem", model=model, context=read(model, haystack, start_context(model))
    )
    read_once = time.perf_counter() - began
    from_snapshot, again, answers_equal = [], [], True
    for question in QUESTIONS:
        began = time.perf_counter()
        saved = snapshot.load(folder / "haystack.mem", model=model)
        first = answer(Context(saved.memory, saved.pending, saved.tokens_read), question)
        from_snapshot.append(time.perf_counter() - began)
        began = time.perf_counter()
        second = answer(read(model, haystack, start_context(model)), question)
        again.append(time.perf_counter() - began)
        answers_equal &= first == second
    per_snapshot, per_reread = sum(from_snapshot) / 3, sum(again) / 3
    return {
        "haystack_tokens": tokens,
        "read_and_save_once_s": round(read_once, 2),
        "answer_from_snapshot_s": round(per_snapshot, 3),
        "answer_by_rereading_s": round(per_reread, 2),
        "ratio": round(per_reread / per_snapshot, 1),
        "three_questions_total_s": {
            "snapshot": round(read_once + sum(from_snapshot), 2),
            "reread": round(sum(again), 2),
        },
        "answers_equal": answers_equal,
    }


def _markdown(result: dict[str, Any]) -> str:
    exact, questions = result["exact"], result["questions"]
    totals = questions["three_questions_total_s"]
    lines = [
        "# Snapshots: read once, answer later",
        "",
        f"Reproduce: `{result['command']}`. Shared 2-core CPU, one thread.",
        "",
        f"## Exact after {exact['tokens_read']:,} tokens",
        "",
        f"{exact['model']} read {exact['tokens_read']:,} tokens in {exact['read_seconds']} s "
        f"({exact['read_tokens_per_s']:,} tokens/s); snapshot {exact['snapshot_bytes']:,} bytes. "
        f"Next-token logits {exact['points']} tokens into the continuation, this process "
        f"continuing vs a fresh process loading the snapshot: max abs difference "
        f"**{exact['max_abs_diff']}**.",
        "",
        f"## Size per stream (demo size: d_model {DEMO['d_model']}, {DEMO['n_layers']} layers, "
        f"segment {DEMO['segment_len']}), beside caches of {result['size_tokens']:,} tokens",
        "",
        "| model | memory KB | snapshot file KB | Transformer-XL cache KB (mem_len 128) "
        "| full KV cache KB |",
        "|---|---|---|---|---|",
        *(
            f"| {r['model']} | {r['memory_kb']} | {r['snapshot_file_kb']} "
            f"| {r['transformer_xl_cache_kb']} | {r['full_kv_cache_kb']:,} |"
            for r in result["sizes"]
        ),
        "",
        "The snapshot file also holds the pending tokens (under one segment, int64) and the "
        "header.",
        "",
        "## Read a haystack once, answer three questions "
        f"({questions['haystack_tokens']:,} tokens)",
        "",
        "| | seconds |",
        "|---|---|",
        f"| read + save once | {questions['read_and_save_once_s']} |",
        "| one answer from the snapshot (load + question + 16 tokens) | "
        f"{questions['answer_from_snapshot_s']} |",
        f"| one answer by re-reading the haystack | {questions['answer_by_rereading_s']} |",
        f"| ratio (re-read / snapshot) | **{questions['ratio']}x** |",
        f"| three answers, total (snapshot incl. the one read / re-read) | "
        f"{totals['snapshot']} / {totals['reread']} |",
        "",
        f"The answers are the same either way: {questions['answers_equal']}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--haystack", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        result = {
            "command": "python -m memtx.bench.snapshots " + " ".join(argv or sys.argv[1:]),
            "exact": measure_exact(args.run, tokens=args.tokens, folder=folder),
            "size_tokens": args.tokens,
            "sizes": measure_sizes(tokens=args.tokens, folder=folder),
            "questions": measure_questions(args.run, tokens=args.haystack, folder=folder),
        }
    print(json.dumps(result))
    if args.out is not None:
        args.out.write_text(_markdown(result))
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
