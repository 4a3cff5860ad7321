"""The bare SmolLM2 on BABILong-style qa1 in its own tokens: full attention against the
last segment only, zero-shot (is full attention a ceiling for `repro pretrained --task qa1`?).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/pretrained_qa1_probe.py 2 4

Session 9 (24 held-out samples, segments of 128): exact 0.00 / token accuracy 0.04 with
full attention at 2 and 4 segments, 0.00 / 0.04 and 0.00 / 0.00 reading the last segment.
"""

from __future__ import annotations

import sys
import time

import torch

from memtx.config import RunConfig
from memtx.data import PretrainedTokenizer, prepare_data
from memtx.evaluate import evaluate_task
from memtx.models.hf import load_hf_model
from memtx.repro.pretrained import smollm2_path
from memtx.repro.references import BareLM, LastSegment
from memtx.training.sources import TaskSource

SEGMENT = 128


def main(lengths: list[int]) -> None:
    torch.set_num_threads(1)
    path = smollm2_path()
    run = RunConfig.from_dict(
        {
            "model": {"name": "rmt", "backbone": "hf", "hf_path": path, "segment_len": SEGMENT},
            "data": {"corpus": "shakespeare", "tokenizer": "hf"},
            "task": {"name": "babilong", "qa": "qa1", "segments": 4, "eval_samples": 8},
        }
    )
    assert run.task is not None
    tokenizer = PretrainedTokenizer.from_pretrained(path)
    data = prepare_data(run.data, tokenizer=tokenizer)
    source = TaskSource(
        run.task,
        segment_len=SEGMENT,
        rows=1,
        rank=0,
        seed=0,
        noise=data.train,
        eval_noise=data.valid,
        tokenizer=tokenizer,
    )
    hf = load_hf_model(run.model, positions=0).eval()  # type: ignore[arg-type]
    vocab = tokenizer.vocab_size
    for length in lengths:
        task = source.task(length, held_out=True)
        readers = {
            "full attention": (BareLM(hf, vocab_size=vocab, segment_len=length * SEGMENT), task),
            "last segment": (
                BareLM(hf, vocab_size=vocab, segment_len=SEGMENT),
                LastSegment(task, SEGMENT),
            ),
        }
        for name, (model, shown) in readers.items():
            began = time.perf_counter()
            with torch.no_grad():
                m = evaluate_task(model, shown, samples=24, device="cpu", seed=12345, batch_size=1)
            print(
                f"{length} segments, {name}: exact {m['exact_match']:.3f}, token accuracy "
                f"{m['token_accuracy']:.3f} ({time.perf_counter() - began:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main([int(arg) for arg in sys.argv[1:]] or [2, 4])
