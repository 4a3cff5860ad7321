"""Token streams: document encoding, Transformer-XL batches, resume and ranks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from memtx.data import (
    Batch,
    ByteTokenizer,
    Document,
    StreamLoader,
    as_rows,
    encode_documents,
)
from memtx.errors import DataError


def _tokens(n: int) -> np.ndarray:
    return (np.arange(n) % 60_000).astype(np.uint16)


def test_encode_documents_joins_with_the_separator() -> None:
    docs = [Document("a", "a", b"one"), Document("b", "b", b"\xfftwo"), Document("c", "c", b"3")]
    tokenizer = ByteTokenizer()
    tokens = encode_documents(docs, tokenizer)
    assert tokens.dtype == np.uint16 and tokens.ndim == 1
    assert tokenizer.decode_bytes(tokens) == b"one\n\n\xfftwo\n\n3"
    assert (
        tokenizer.decode_bytes(encode_documents(docs, tokenizer, separator=b"")) == b"one\xfftwo3"
    )
    assert encode_documents([], tokenizer).shape == (0,)


def test_batches_follow_contiguous_rows() -> None:
    tokens = _tokens(1000)
    loader = StreamLoader(tokens, batch_size=3, window=7)
    row_length = 1000 // 3
    assert loader.row_length == row_length
    assert loader.steps_per_epoch == (row_length - 1) // 7
    previous = None
    for step in range(loader.steps_per_epoch):
        assert loader.position == step * 7
        batch = loader.next_batch()
        assert isinstance(batch, Batch)
        assert batch.tokens.dtype == torch.int64
        assert batch.tokens.shape == (3, 8)
        for row in range(3):
            start = row * row_length + step * 7
            assert batch.tokens[row].tolist() == tokens[start : start + 8].tolist()
        if previous is not None:
            # One-token overlap: the last target of a batch is the next batch's first input.
            assert torch.equal(previous.tokens[:, -1], batch.tokens[:, 0])
        assert batch.reset == (step == 0)
        previous = batch
    assert loader.epoch == 0


def test_wrap_sets_reset_and_counts_epochs() -> None:
    loader = StreamLoader(_tokens(100), batch_size=2, window=6)  # rows of 50: 8 steps
    assert loader.steps_per_epoch == 8
    first = [loader.next_batch() for _ in range(8)]
    assert [batch.reset for batch in first] == [True] + [False] * 7
    assert loader.epoch == 0
    wrapped = loader.next_batch()
    assert wrapped.reset and loader.epoch == 1
    assert torch.equal(wrapped.tokens, first[0].tokens)
    assert not loader.next_batch().reset
    for _ in range(7):
        loader.next_batch()
    assert loader.epoch == 2


@given(
    n=st.integers(40, 400),
    batch_size=st.integers(1, 4),
    window=st.integers(1, 9),
    skip=st.integers(0, 30),
)
def test_state_dict_resumes_the_same_batches(
    n: int, batch_size: int, window: int, skip: int
) -> None:
    tokens = _tokens(n)
    if n // batch_size < window + 1:
        return
    loader = StreamLoader(tokens, batch_size=batch_size, window=window)
    for _ in range(skip):
        loader.next_batch()
    state = loader.state_dict()
    assert all(isinstance(value, int) for value in state.values())
    expected = [loader.next_batch() for _ in range(12)]
    resumed = StreamLoader(tokens, batch_size=batch_size, window=window)
    resumed.load_state_dict(dict(state))
    assert (resumed.position, resumed.epoch) == (state["position"], state["epoch"])
    for batch in expected:
        again = resumed.next_batch()
        assert torch.equal(again.tokens, batch.tokens)
        assert again.reset == batch.reset
    assert resumed.state_dict() == loader.state_dict()


def test_load_state_dict_rejects_another_layout() -> None:
    state = StreamLoader(_tokens(100), batch_size=2, window=5).state_dict()
    with pytest.raises(DataError, match="rows=2, but this loader has rows=3"):
        StreamLoader(_tokens(100), batch_size=3, window=5).load_state_dict(state)
    with pytest.raises(DataError, match="row_length=50, but this loader has row_length=60"):
        StreamLoader(_tokens(120), batch_size=2, window=5).load_state_dict(state)
    with pytest.raises(DataError, match="lacks epoch"):
        StreamLoader(_tokens(100), batch_size=2, window=5).load_state_dict({"position": 0})


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_together_equal_one_process(world_size: int) -> None:
    tokens = _tokens(1001)
    single = StreamLoader(tokens, batch_size=2 * world_size, window=5)
    ranks = [
        StreamLoader(tokens, batch_size=2, window=5, rank=rank, world_size=world_size)
        for rank in range(world_size)
    ]
    assert {loader.steps_per_epoch for loader in ranks} == {single.steps_per_epoch}
    for _ in range(single.steps_per_epoch + 3):  # across a wrap
        expected = single.next_batch()
        parts = [loader.next_batch() for loader in ranks]
        assert torch.equal(torch.cat([part.tokens for part in parts]), expected.tokens)
        assert {part.reset for part in parts} == {expected.reset}


def test_too_short_data_names_the_numbers() -> None:
    with pytest.raises(
        DataError,
        match="30 tokens cut into 4 rows give 7 tokens per row, fewer "
        r"than window \+ 1 = 8",
    ):
        StreamLoader(_tokens(30), batch_size=2, window=7, world_size=2)
    StreamLoader(_tokens(32), batch_size=4, window=7)  # exactly one window per row


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0, "window": 4}, "batch_size must be a positive integer"),
        ({"batch_size": 2, "window": 0}, "window must be a positive integer"),
        ({"batch_size": 2, "window": 4, "rank": 2, "world_size": 2}, r"rank must be .*\[0, 2\)"),
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(DataError, match=message):
        StreamLoader(_tokens(100), **kwargs)


def test_as_rows_cuts_contiguous_rows() -> None:
    tokens = _tokens(103)
    rows = as_rows(tokens, rows=4)
    assert rows.dtype == torch.int64
    assert rows.shape == (4, 25)
    assert rows.flatten().tolist() == tokens[:100].tolist()


def test_as_rows_reduces_rows_for_short_data() -> None:
    assert as_rows(_tokens(7), rows=10).shape == (3, 2)
    assert as_rows(_tokens(2), rows=10).shape == (1, 2)
    with pytest.raises(DataError, match="at least 2 tokens, got 1"):
        as_rows(_tokens(1), rows=10)
    with pytest.raises(DataError, match="1-D integer array"):
        as_rows(np.zeros((2, 3), dtype=np.uint16), rows=1)
