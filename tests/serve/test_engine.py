"""The engine: sessions' segments read in one batch equal each session read alone."""

from __future__ import annotations

import threading

import pytest
import torch

from memtx.data.tokenizers import ByteTokenizer
from memtx.generate import Generation, Sampler, TextDecoder
from memtx.models.protocol import memory_leaves
from memtx.reading import Context, read, start_context
from memtx.serve.engine import Engine, GenerationJob
from tests.models.small import SMALL, small_model, tokens


@pytest.mark.parametrize("key", [k for k in SMALL if not k.endswith("_hf")])
def test_batched_reads_equal_single_reads(key: str) -> None:
    model = small_model(key).eval()
    engine = Engine(model)
    try:
        # Sessions at different places: fresh, mid-segment, several segments in.
        starts = [start_context(model), read(model, tokens(1, 3, seed=2), start_context(model))]
        starts.append(read(model, tokens(1, 21, seed=3), start_context(model)))
        texts = [tokens(1, 40 + 9 * i, seed=10 + i) for i in range(len(starts))]
        hold = threading.Event()
        engine.call(hold.wait)  # the thread waits while every read is queued
        futures = [engine.read(c, t) for c, t in zip(starts, texts)]
        hold.set()
        for future, context, text in zip(futures, starts, texts):
            got, expected = future.result(timeout=60), read(model, text, context)
            assert got.tokens_read == expected.tokens_read
            assert torch.equal(got.pending, expected.pending)
            for a, b in zip(memory_leaves(got.memory), memory_leaves(expected.memory)):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        assert engine.batches[0] == len(starts)  # one forward pass for all of them
    finally:
        engine.close()


def test_generation_jobs_emit_text_then_the_context() -> None:
    model = small_model("rmt").eval()
    engine = Engine(model)
    items: list[object] = []
    done = threading.Event()

    def emit(item: object) -> None:
        items.append(item)
        if not isinstance(item, str):
            done.set()

    try:
        context = read(model, tokens(1, 5), start_context(model))
        generation = Generation(model, context, max_new_tokens=12, sampler=Sampler(temperature=0))
        engine.generate(GenerationJob(generation, TextDecoder(ByteTokenizer()), emit=emit))
        assert done.wait(60)
    finally:
        engine.close()
    final = items[-1]
    assert isinstance(final, Context) and final.tokens_read == 5 + 12
    expected = list(Generation(model, context, max_new_tokens=12, sampler=Sampler(temperature=0)))
    text = "".join(i for i in items if isinstance(i, str))
    assert text == ByteTokenizer().decode([int(t[0]) for t in expected])
