"""Reading into a context: pieces equal one read, the pending tail is bounded and a copy."""

from __future__ import annotations

import pytest
import torch

from memtx.errors import DataError
from memtx.models.protocol import memory_leaves
from memtx.reading import next_logits, read, start_context
from memtx.recurrence import stream
from tests.models.small import SMALL, small_model, tokens

SEG = 8


@pytest.mark.parametrize("key", [k for k in SMALL if not k.endswith("_hf")])
def test_reading_in_pieces_equals_one_read_and_one_stream(key: str) -> None:
    model = small_model(key).eval()
    text = tokens(2, 5 * SEG + 3)
    whole = read(model, text, start_context(model, batch_size=2))
    pieces = start_context(model, batch_size=2)
    for start, stop in [(0, 1), (1, SEG), (SEG, 3 * SEG + 2), (3 * SEG + 2, text.shape[1])]:
        pieces = read(model, text[:, start:stop], pieces)
    assert pieces.tokens_read == whole.tokens_read == text.shape[1]
    assert torch.equal(pieces.pending, whole.pending)
    for a, b in zip(memory_leaves(pieces.memory), memory_leaves(whole.memory)):
        assert torch.equal(a, b)
    # The next-token logits are those of one stream over the whole text.
    with torch.no_grad():
        *_, (_, last) = stream(model, text, model.init_memory(2))
    assert torch.equal(next_logits(model, pieces), last.logits[:, -1])


def test_pending_is_one_to_segment_len_tokens_and_a_copy() -> None:
    model = small_model("rmt").eval()
    for length in (1, SEG - 1, SEG, SEG + 1, 4 * SEG):
        context = read(model, tokens(1, length), start_context(model))
        assert context.pending.shape[1] == (length - 1) % SEG + 1
    long = tokens(1, 1000 * SEG)
    context = read(model, long, start_context(model))
    assert context.pending.untyped_storage().nbytes() == SEG * 8  # not a view of `long`


def test_bad_reads() -> None:
    model = small_model("transformer").eval()
    context = start_context(model)
    with pytest.raises(DataError, match="integer tensor"):
        read(model, torch.zeros(1, 3), context)
    with pytest.raises(DataError, match="holds 1 rows"):
        read(model, tokens(2, 3), context)
    with pytest.raises(DataError, match="nothing was read"):
        next_logits(model, context)
    assert read(model, tokens(1, 0), context) is context
