"""Synthetic tasks: deterministic, solvable from the inputs, scored only on the answer."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from memtx.data.tasks import (
    IGNORE_INDEX,
    TASKS,
    TaskSample,
    answer_accuracy,
    make_task,
)
from memtx.errors import ConfigError, DataError

TEXT = (
    b"Now is the winter of our discontent made glorious summer by this sun of York; "
    b"and all the clouds that lour'd upon our house in the deep bosom of the ocean buried. "
)
NOISE = np.frombuffer(TEXT * 40, dtype=np.uint8)

# name -> (lengths and parameters) small enough to be instant
SETUPS: dict[str, dict[str, object]] = {
    "copy": {"segments": 9, "segment_len": 8, "alphabet": 8},
    "reverse": {"segments": 4, "segment_len": 8, "source_len": 6},
    "associative": {"segments": 4, "segment_len": 8, "pairs": 6},
    "facts": {"segments": 6, "segment_len": 64, "noise": NOISE, "num_facts": 3},
    "babilong": {"segments": 6, "segment_len": 64, "noise": NOISE, "qa": "qa2"},
}


def task_of(name: str, seed: int = 0, **overrides: object):
    return make_task(name, seed=seed, **{**SETUPS[name], **overrides})  # type: ignore[arg-type]


def text(row: torch.Tensor) -> str:
    return bytes(row.tolist()).decode("ascii")


def test_every_task_has_a_setup() -> None:
    assert set(SETUPS) == set(TASKS)


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("name", list(TASKS))
def test_same_seed_same_sample_and_different_seed_different(name: str) -> None:
    a, b = task_of(name, seed=3).sample(4), task_of(name, seed=3).sample(4)
    for field in ("inputs", "targets", "answer_mask"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    c = task_of(name, seed=4).sample(4)
    assert not torch.equal(a.inputs, c.inputs)
    # sample(seed=...) ignores the task's own generator; successive calls advance it.
    task = task_of(name)
    assert torch.equal(
        task.sample(2, seed=9).inputs, task_of(name, seed=1).sample(2, seed=9).inputs
    )
    assert not torch.equal(task.sample(4).inputs, task.sample(4).inputs)
    generator = torch.Generator().manual_seed(5)
    again = torch.Generator().manual_seed(5)
    assert torch.equal(
        task.sample(2, generator=generator).inputs, task.sample(2, generator=again).inputs
    )


@pytest.mark.parametrize("name", list(TASKS))
def test_shapes_dtypes_and_byte_vocabulary(name: str) -> None:
    task = task_of(name)
    sample = task.sample(5)
    assert task.total_len == task.segments * task.segment_len
    assert sample.inputs.shape == sample.targets.shape == sample.answer_mask.shape
    assert sample.inputs.shape == (5, task.total_len)
    assert sample.inputs.dtype == sample.targets.dtype == torch.long
    assert sample.answer_mask.dtype == torch.bool
    assert task.vocab_size == 256
    assert int(sample.inputs.min()) >= 0 and int(sample.inputs.max()) < 256


@pytest.mark.parametrize("name", list(TASKS))
def test_scored_positions_are_exactly_the_answer(name: str) -> None:
    task = task_of(name)
    sample = task.sample(6)
    assert torch.equal(sample.answer_mask, sample.targets != IGNORE_INDEX)
    # Every row's answer has answer_len tokens (babilong: its word, at most answer_len).
    lengths = sample.answer_mask.sum(dim=1)
    assert (lengths >= 1).all() and (lengths <= task.answer_len).all()
    if name != "babilong":
        assert (lengths == task.answer_len).all()
    # The answer is the end of the sequence: the last targets, nothing else (babilong: then
    # the pad spaces that make every answer answer_len long, unscored).
    expected = torch.zeros_like(sample.answer_mask)
    for row, length in enumerate(lengths.tolist()):
        pad = task.answer_len - length if name == "babilong" else 0
        end = expected.shape[1] - pad
        expected[row, end - length : end] = True
    assert torch.equal(sample.answer_mask, expected)
    # Teacher forcing: a scored target is the next input token (except the very last).
    scored = sample.answer_mask[:, :-1]
    assert torch.equal(sample.targets[:, :-1][scored], sample.inputs[:, 1:][scored])


# --------------------------------------------------------------------------- solvers


def answers(sample: TaskSample) -> list[list[int]]:
    return [row[mask].tolist() for row, mask in zip(sample.targets, sample.answer_mask)]


@pytest.mark.parametrize("name", ["copy", "reverse"])
@pytest.mark.parametrize("source_len", [None, 5])
def test_copy_and_reverse_answer_is_the_source(name: str, source_len: int | None) -> None:
    task = task_of(name, source_len=source_len) if source_len else task_of(name)
    sample = task.sample(8)
    for row, answer in zip(sample.inputs, answers(sample)):
        line = text(row)
        source = line[: task.source_len]
        assert re.fullmatch(r"[a-h]+", source), line
        # source, filler, separator, then the copy (whose last symbol is only a target)
        assert line[task.source_len : line.index("=")] == "." * (
            task.total_len - 2 * task.source_len
        )
        wanted = source if name == "copy" else source[::-1]
        assert bytes(answer).decode() == wanted


@pytest.mark.parametrize("name", ["copy", "reverse"])
def test_filler_at_start_puts_the_source_next_to_its_copy(name: str) -> None:
    task = task_of(name, source_len=3, filler_at="start")
    sample = task.sample(4)
    for row, answer in zip(sample.inputs, answers(sample)):
        line = text(row)
        filler = task.total_len - 2 * task.source_len
        assert line[:filler] == "." * filler
        source = line[filler : filler + 3]
        assert line[filler + 3] == "="
        assert bytes(answer).decode() == (source if name == "copy" else source[::-1])


def test_copy_72_tokens_as_9_segments_of_8_layout() -> None:
    task = make_task("copy", segments=9, segment_len=8, seed=0)
    assert (task.total_len, task.source_len, task.answer_len) == (72, 36, 36)
    sample = task.sample(1)
    assert text(sample.inputs[0])[36] == "="
    assert sample.answer_mask[0].nonzero().flatten().tolist() == list(range(36, 72))


def test_associative_answer_is_the_value_of_the_query() -> None:
    task = task_of("associative")
    sample = task.sample(16)
    for row, answer in zip(sample.inputs, answers(sample)):
        line = text(row)
        pairs = line[: 2 * task.pairs]
        table = dict(zip(pairs[0::2], pairs[1::2]))
        assert len(table) == task.pairs  # distinct keys
        assert line[-2] == "?"
        assert bytes(answer).decode() == table[line[-1]]


def test_facts_answer_is_in_a_fact_hidden_in_the_noise() -> None:
    task = task_of("facts")
    sample = task.sample(8)
    for row, answer in zip(sample.inputs, answers(sample)):
        line = text(row)
        question = re.search(r"What is the key of (\w+)\? (\d*)$", line)
        assert question is not None, line
        facts = dict(re.findall(r"The key of (\w+) is (\d+)\. ", line))
        assert len(facts) == task.num_facts
        assert bytes(answer).decode() == facts[question.group(1)]
        # The rest is the noise text.
        rest = re.sub(r"The key of \w+ is \d+\. ", "", line[: question.start()])
        assert rest in TEXT.decode() * 40


def test_facts_accept_bytes_tensors_and_uint16() -> None:
    for noise in (TEXT * 40, torch.tensor(NOISE, dtype=torch.int16), NOISE.astype(np.uint16)):
        sample = task_of("facts", noise=noise).sample(2, seed=1)
        assert torch.equal(sample.inputs, task_of("facts").sample(2, seed=1).inputs)


# --------------------------------------------------------------------------- accuracy


def test_answer_accuracy_counts_answer_tokens_and_whole_rows() -> None:
    sample = task_of("reverse").sample(2)
    logits = torch.zeros(2, sample.inputs.shape[1], 256)
    logits.scatter_(2, sample.targets.clamp(min=0).unsqueeze(-1), 1.0)
    logits[~sample.answer_mask] = torch.randn(int((~sample.answer_mask).sum()), 256)
    assert answer_accuracy(logits, sample) == {"token_accuracy": 1.0, "exact_match": 1.0}
    wrong = logits.clone()
    last = int(sample.answer_mask[0].nonzero()[-1])
    wrong[0, last] = 0.0
    wrong[0, last, 0] = 1.0  # byte 0 is never an answer
    assert answer_accuracy(wrong, sample) == {"token_accuracy": 11 / 12, "exact_match": 0.5}
    with pytest.raises(DataError, match="do not match"):
        answer_accuracy(logits[:, :-1], sample)


# --------------------------------------------------------------------------- bad parameters


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: make_task("sort", total_len=8), r"unknown task 'sort' \(known: copy, reverse"),
        (lambda: make_task("copy", total_len=8, colours=3), r"unknown parameter 'colours'"),
        (lambda: make_task("copy"), "give total_len, or segments and segment_len"),
        (lambda: make_task("copy", total_len=0), "total_len must be an integer >= 1, got 0"),
        (
            lambda: make_task("copy", total_len=70, segments=9, segment_len=8),
            r"total_len \(70\) must equal segments \* segment_len \(9 \* 8 = 72\)",
        ),
        (
            lambda: make_task("copy", total_len=10, source_len=6),
            r"total_len \(10\) is too small for source_len 6: it needs .* = 12",
        ),
        (lambda: make_task("copy", total_len=10, alphabet=1), "alphabet must be an integer >= 2"),
        (lambda: make_task("copy", total_len=10, alphabet=60), "alphabet must be <= 52"),
        (lambda: make_task("copy", total_len=10, filler_at="end"), "filler_at must be"),
        (
            lambda: make_task("associative", total_len=9, pairs=4),
            r"total_len \(9\) is too small for 4 pairs: it needs 2 \* pairs \+ 2 = 10",
        ),
        (lambda: make_task("associative", total_len=40, pairs=8, keys=4), "pairs .* <= keys"),
        (
            lambda: make_task("associative", segments=10, segment_len=2),
            r"question and answer \(2 \+ 1 = 3 tokens\) must fit in one segment.* is 2",
        ),
        (
            lambda: make_task("facts", segments=20, segment_len=16, noise=NOISE),
            r"question and answer .* must fit in one segment, but segment_len is 16",
        ),
        (
            lambda: make_task("facts", segments=2, segment_len=40, noise=NOISE, num_facts=3),
            r"total_len \(80\) is too small for 3 facts",
        ),
        (lambda: make_task("facts", total_len=200), "facts needs noise"),
        (lambda: make_task("facts", total_len=200, noise=TEXT[:50]), "noise has 50 tokens"),
        (
            lambda: make_task("facts", total_len=200, noise=np.full(300, 300, dtype=np.uint16)),
            r"token ids must be in \[0, 256\)",
        ),
        (lambda: make_task("facts", total_len=200, noise=np.zeros(300)), "dtype float64"),
        (lambda: task_of("copy").sample(0), "batch_size must be >= 1"),
        (lambda: task_of("copy").sample(2, seed=1, generator=torch.Generator()), "not both"),
    ],
)
def test_bad_parameters_raise_config_errors(call, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        call()
