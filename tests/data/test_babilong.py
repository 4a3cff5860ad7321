"""BABILong-style tasks: bAbI stories in real text, answerable from their facts, scored
BABILong's way; BABILong's published files."""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from memtx.data.tasks import (
    IGNORE_INDEX,
    QA_TASKS,
    PublishedTask,
    answer_accuracy,
    babilong_correct,
    make_story,
    make_task,
    read_babilong,
)
from memtx.data.tasks.babilong import DIRECTIONS, GIVERS, OBJECTS, PEOPLE, PLACES
from memtx.errors import ConfigError, DataError

TEXT = (
    b"It was a bright cold day in April, and the clocks were striking thirteen. "
    b"Who could say what he meant?\nThe hallway smelt of boiled cabbage and old rag mats! "
    b"At one end of it a coloured poster, too large for indoor display, had been tacked "
    b"to the wall. "
)
NOISE = np.frombuffer(TEXT * 400, dtype=np.uint8)  # about 100K tokens
SEGMENT_LEN = 64


def task_of(qa: str, *, segments: int = 12, seed: int = 0, **params: object):
    params = {"noise": NOISE, **params}
    return make_task(
        "babilong", segments=segments, segment_len=SEGMENT_LEN, seed=seed, qa=qa, **params
    )


def row_text(sample, row: int) -> str:
    """The row without the pad after the answer: the inputs and the answer's last byte."""
    last = int(sample.answer_mask[row].nonzero()[-1])  # the answer's last target
    tokens = [*sample.inputs[row, : last + 1].tolist(), int(sample.targets[row, last])]
    return bytes(tokens).decode("ascii")


# An independent reading of the stories: the facts are found in the text by their own
# patterns and a small world is simulated from them.
MOVE = r"(\w+) (?:moved|went|journeyed|travelled) to the (\w+)\."
TAKE = r"(\w+) (?:picked up|got|grabbed|took) the (\w+) there\."
DROP = r"(\w+) (?:dropped|discarded|put down|left) the (\w+)\."
GIVE = r"(\w+) (?:gave|handed|passed) the (\w+) to (\w+)\."
RELATION = r"The (\w+) is (north|south|east|west) of the (\w+)\."
FACT = re.compile("|".join(f"(?:{p})" for p in (MOVE, TAKE, DROP, GIVE, RELATION)))
OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}


def solve(facts: list[str], question: str) -> str:
    at: dict[str, str] = {}
    holder: dict[str, str] = {}
    places: dict[str, list[str]] = {thing: [] for thing in OBJECTS}
    gifts: list[tuple[str, str, str]] = []
    relations: list[tuple[str, str, str]] = []

    def put(thing: str, place: str) -> None:
        if not places[thing] or places[thing][-1] != place:
            places[thing].append(place)

    for fact in facts:
        if m := re.fullmatch(MOVE, fact):
            at[m[1]] = m[2]
            for thing in [t for t, p in holder.items() if p == m[1]]:
                put(thing, m[2])
        elif m := re.fullmatch(TAKE, fact):
            holder[m[2]] = m[1]
            if m[1] in at:
                put(m[2], at[m[1]])
        elif m := re.fullmatch(DROP, fact):
            holder.pop(m[2], None)
            if m[1] in at:
                put(m[2], at[m[1]])
        elif m := re.fullmatch(GIVE, fact):
            holder[m[2]] = m[3]
            gifts.append((m[1], m[2], m[3]))
        elif m := re.fullmatch(RELATION, fact):
            relations.append((m[1], m[2], m[3]))
            relations.append((m[3], OPPOSITE[m[2]], m[1]))
        else:
            raise AssertionError(f"not a fact: {fact!r}")
    if m := re.fullmatch(r"Where is (\w+)\?", question):
        return at[m[1]]
    if m := re.fullmatch(r"Where is the (\w+)\?", question):
        return places[m[1]][-1]
    if m := re.fullmatch(r"Where was the (\w+) before the (\w+)\?", question):
        history = places[m[1]]
        return history[len(history) - 1 - history[::-1].index(m[2]) - 1]
    if m := re.fullmatch(r"What is (\w+) of the (\w+)\?", question):
        (answer,) = {a for a, d, b in relations if (d, b) == (m[1], m[2])}
        return answer
    if m := re.fullmatch(r"What is the (\w+) (\w+) of\?", question):
        (answer,) = {b for a, d, b in relations if (a, d) == (m[1], m[2])}
        return answer
    questions = {
        r"Who gave the (\w+) to (\w+)\?": lambda g, t, r, q: (t, r) == q and g,
        r"Who did (\w+) give the (\w+) to\?": lambda g, t, r, q: (g, t) == q and r,
        r"What did (\w+) give to (\w+)\?": lambda g, t, r, q: (g, r) == q and t,
        r"Who received the (\w+)\?": lambda g, t, r, q: (t,) == q and r,
    }
    for pattern, answer_of in questions.items():
        if m := re.fullmatch(pattern, question):
            return [a for g, t, r in gifts if (a := answer_of(g, t, r, m.groups()))][-1]
    raise AssertionError(f"not a question: {question!r}")


@pytest.mark.parametrize("qa", QA_TASKS)
def test_samples_are_deterministic_per_seed(qa: str) -> None:
    first, again, other = (task_of(qa, seed=s).sample(4) for s in (0, 0, 1))
    assert torch.equal(first.inputs, again.inputs) and torch.equal(first.targets, again.targets)
    assert not torch.equal(first.inputs, other.inputs)
    assert torch.equal(task_of(qa).sample(3, seed=5).inputs, task_of(qa).sample(3, seed=5).inputs)


@pytest.mark.parametrize("qa", QA_TASKS)
def test_facts_in_order_at_sentence_starts_question_last_answer_scored(qa: str) -> None:
    task = task_of(qa)
    sample = task.sample(16, seed=3)
    assert sample.inputs.shape == (16, 12 * SEGMENT_LEN)
    for row in range(16):
        text = row_text(sample, row)
        question, answer = re.search(r"([A-Z][^.!?]*\?) (\w+)$", text).groups()  # type: ignore[union-attr]
        scored = bytes(sample.targets[row][sample.answer_mask[row]].tolist()).decode()
        assert scored == answer and (sample.targets[row] != IGNORE_INDEX).sum() == len(answer)
        assert answer not in question
        found = list(FACT.finditer(text))
        assert found, text
        facts = [m[0] for m in found]
        # The question comes after every fact; each fact starts a sentence.
        assert found[-1].end() < text.rindex(question)
        for m in found:  # (a window can start just after a sentence end)
            before = text[max(m.start() - 2, 0) : m.start()]
            assert re.fullmatch(r"[.!?][ \n]|[ \n]?", before), (before, text)
        # The rest is the background, in its own order (a slice of it).
        rest = re.sub(f"(?:{FACT.pattern}) ", "", text[: text.rindex(question)])
        assert rest.encode() in TEXT * 12
        assert solve(facts, question) == answer


@pytest.mark.parametrize("qa", QA_TASKS)
def test_each_answer_follows_from_its_supporting_facts(qa: str) -> None:
    rng = random.Random(0)
    kinds = set()
    for _ in range(300):
        story = make_story(qa, {"qa4": 3}.get(qa, 8), rng)
        assert story.answer not in story.question
        assert solve(list(story.facts), story.question) == story.answer
        supporting = [story.facts[i] for i in story.supporting]
        assert solve(supporting, story.question) == story.answer, story
        # One fact answers qa1, qa4 and qa5; qa2 needs two, qa3 three (four when a drop
        # is part of the object's way).
        assert len(story.supporting) in {"qa2": (2,), "qa3": (3, 4)}.get(qa, (1,))
        entities = {*PLACES, *OBJECTS, *DIRECTIONS, *PEOPLE, *GIVERS}
        kinds.add(" ".join(w for w in story.question[:-1].split() if w not in entities))
    assert len(kinds) >= {"qa4": 2, "qa5": 4}.get(qa, 1)  # every question form occurs


def test_story_facts_sets_the_story_and_relations_stay_on_a_grid() -> None:
    rng = random.Random(1)
    for facts in (1, 3, 5):
        story = make_story("qa4", facts, rng)
        assert len(story.facts) == facts
        assert all(re.fullmatch(RELATION, f) for f in story.facts)
    assert set(DIRECTIONS) == set(OPPOSITE)
    assert len(make_story("qa1", 7, rng).facts) == 7


@pytest.mark.parametrize("qa", QA_TASKS)
def test_the_question_ends_at_one_distance_from_the_row_end_whatever_the_answer(qa: str) -> None:
    """Otherwise where the question starts in its segment gives the answer's length away
    to a model without memory (it scored 0.48-0.56 on qa1, chance 1/6)."""
    sample = task_of(qa).sample(64, seed=4)
    ends, lengths = set(), set()
    for row in range(64):
        text = bytes([*sample.inputs[row].tolist(), 32]).decode("ascii")
        ends.add(len(text) - text.rindex("?"))
        lengths.add(int(sample.answer_mask[row].sum()))
    assert len(ends) == 1 and len(lengths) > 1


def test_no_background_is_the_story_alone_padded_to_the_row() -> None:
    task = make_task("babilong", segments=4, segment_len=SEGMENT_LEN, qa="qa1", background=False)
    sample = task.sample(1, seed=0)
    text = row_text(sample, 0)
    pad = task.answer_len - len(text.rsplit("? ", 1)[1])  # spaces after the answer
    assert len(text) + pad == 4 * SEGMENT_LEN + 1
    story = text.lstrip(" ")
    facts = [m[0] for m in FACT.finditer(story)]
    assert len(facts) == 4 and story.startswith(facts[0])
    question, answer = story.rsplit("? ", 1)
    assert solve(facts, question.rsplit(". ", 1)[1] + "?") == answer


def test_story_padding_longest_pads_the_story_alone_only_to_the_longest_story() -> None:
    kwargs = {"segments": 4, "segment_len": SEGMENT_LEN, "qa": "qa1", "background": False}
    task = make_task("babilong", **kwargs, story_facts=2, story_padding="longest")
    row_padded = make_task("babilong", **kwargs, story_facts=2)
    assert task.total_len == task.longest_row - 1 < row_padded.total_len == 4 * SEGMENT_LEN
    assert task.segments == -(-task.total_len // SEGMENT_LEN)
    for seed in range(20):  # the same story, answer and scored tokens, with fewer pads
        short, long = task.sample(1, seed=seed), row_padded.sample(1, seed=seed)
        assert row_text(short, 0).lstrip(" ") == row_text(long, 0).lstrip(" ")
        n = task.total_len
        assert torch.equal(short.targets, long.targets[:, -n:])
        assert int((long.targets[:, :-n] != -100).sum()) == 0
    hidden = task_of("qa1", segments=4, story_padding="longest")
    assert hidden.total_len == 4 * SEGMENT_LEN  # with background the row is the haystack's
    with pytest.raises(ConfigError, match="story_padding must be 'row' or 'longest', got 'x'"):
        make_task("babilong", **kwargs, story_padding="x")


def test_a_million_token_haystack_is_made_in_well_under_a_second() -> None:
    background = np.tile(NOISE, 12)  # about 1.2M tokens
    task = make_task(
        "babilong", segments=16384, segment_len=SEGMENT_LEN, qa="qa2", noise=background
    )
    began = time.perf_counter()
    sample = task.sample(1, seed=0)
    elapsed = time.perf_counter() - began
    assert sample.inputs.shape == (1, 2**20)
    assert elapsed < 0.5, f"{elapsed:.2f} s"


def test_teacher_forced_exact_match_is_exact_match_of_the_answer_word() -> None:
    sample = task_of("qa1").sample(4, seed=0)
    perfect = torch.nn.functional.one_hot(sample.targets.clamp(min=0), 256).float()
    assert answer_accuracy(perfect, sample) == {"token_accuracy": 1.0, "exact_match": 1.0}
    wrong = perfect.clone()
    last = int(sample.answer_mask[0].nonzero()[-1])
    wrong[0, last] = wrong[0, last].roll(1)  # one byte of row 0's word is wrong
    assert answer_accuracy(wrong, sample)["exact_match"] == 0.75


def test_babilongs_scoring_rule() -> None:
    where = "Where is the football?"
    assert babilong_correct("The football is in the kitchen.", "kitchen", where, "qa2")
    assert babilong_correct("KITCHEN", "kitchen", where, "qa2")
    assert not babilong_correct("kitchen or garden", "kitchen", where, "qa2")
    assert not babilong_correct("garden", "kitchen", where, "qa2")
    assert not babilong_correct("", "kitchen", where, "qa2")
    # Only the first sentence counts; labels the question names are not predictions.
    assert babilong_correct("kitchen. Or the garden.", "kitchen", where, "qa2")
    before = "Where was the apple before the kitchen?"
    assert babilong_correct("In the garden, then the kitchen", "garden", before, "qa3")
    assert babilong_correct("Fred gave it to Bill", "Fred", "Who gave the milk to Bill?", "qa5")
    assert babilong_correct("apple,milk", "apple,milk", "What is he carrying?", ["apple", "milk"])
    assert not babilong_correct("apple", "apple,milk", "What is he carrying?", ["apple", "milk"])
    with pytest.raises(ConfigError, match="unknown babilong task 'qa9'"):
        babilong_correct("x", "y", "z", "qa9")


def test_the_reader_reads_babilongs_files_into_samples(tmp_path: Path) -> None:
    rows = [
        {"input": "Some text. Mary went to the office. More text.", "question": "Where is "
         "Mary?", "target": "office"},
        {"input": "A longer background\u2014with a dash. John moved to the garden. " * 3,
         "question": "Where is John?", "target": "garden"},
    ]  # fmt: skip
    (tmp_path / "0k.json").write_text(json.dumps(rows))
    (tmp_path / "qa1.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    for name in ("0k.json", "qa1.jsonl"):
        records = read_babilong(tmp_path / name)
        assert [r.target for r in records] == ["office", "garden"]
        task = PublishedTask(records, segment_len=16)
        sample = task.sample(2)
        assert sample.inputs.shape[1] % 16 == 0
        for row, record in enumerate(records):
            scored = bytes(sample.targets[row][sample.answer_mask[row]].tolist())
            assert scored == record.target.encode()
            whole = bytes([*sample.inputs[row].tolist(), int(sample.targets[row, -1])])
            expected = f"{record.input} {record.question} {record.target}".encode()
            assert whole.lstrip(b" ") == expected.lstrip(b" ")
        assert torch.equal(
            task.sample(1).inputs, PublishedTask(records, segment_len=16).sample(1).inputs
        )


def test_a_model_is_scored_on_a_published_file(tmp_path: Path) -> None:
    import memtx
    from memtx.evaluate import evaluate_task

    row = {"input": "Mary went to the office.", "question": "Where is Mary?", "target": "office"}
    (tmp_path / "1k.json").write_text(json.dumps([row] * 3))
    model = memtx.build(
        "rmt", vocab_size=256, d_model=16, n_layers=1, n_heads=2, segment_len=16, memory_tokens=2
    )
    task = PublishedTask(read_babilong(tmp_path / "1k.json"), segment_len=16)
    metrics = evaluate_task(model, task, samples=3, device="cpu", seed=0, batch_size=2)
    assert set(metrics) == {"loss", "token_accuracy", "exact_match"}
    assert 0 <= metrics["exact_match"] <= 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read BABILong file"),
        ("{not json", "is not JSON or JSON lines"),
        ('[{"input": "x", "question": "y"}]', "row 1 must be an object with string fields"),
        ("[]", "has no rows"),
    ],
)
def test_bad_published_files(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "qa1.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message) as error:
        read_babilong(path)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: task_of("qa3", segments=2), "total_len \\(128\\) is too short for 10 facts"),
        (lambda: make_task("babilong-qa9", total_len=512), "unknown task 'babilong-qa9'"),
        (lambda: task_of("qa9"), "unknown babilong task 'qa9'"),
        (lambda: task_of("qa4", story_facts=6), "story_facts must be in 1..5"),
        (lambda: task_of("qa3", story_facts=2), "story_facts must be >= 3"),
        (lambda: task_of("qa1", story_facts=-1), "story_facts must be an integer >= 0"),
        (
            lambda: task_of("qa1", noise=b"no sentence ends in here, none at all " * 100),
            "no sentence boundary",
        ),
        (lambda: task_of("qa1", noise=NOISE[:600]), "a row needs a window of up to 769"),
        (lambda: task_of("qa1", noise=None), "babilong needs background text"),
        (lambda: task_of("qa1", noise=np.zeros(900)), "dtype float64"),
        (lambda: task_of("qa1", segments=0), "segments must be an integer >= 1, got 0"),
        (
            lambda: make_task("babilong", segments=4, segment_len=16, qa="qa1", background=False),
            "must fit in one segment",
        ),
    ],
)
def test_bad_inputs_are_one_line_errors(make, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        make()
    assert "\n" not in str(error.value)


def test_token_rows_are_the_rows_of_sample() -> None:
    task = task_of("qa2")
    tokens, spans = task.token_rows(5, torch.Generator().manual_seed(7))
    sample = task.sample(5, seed=7)
    assert tokens.dtype == np.uint8 and tokens.shape == (5, task.total_len + 1)
    assert torch.equal(torch.from_numpy(tokens[:, :-1]).long(), sample.inputs)
    for row, (first, stop) in enumerate(spans.tolist()):  # the scored targets, no more
        assert sample.answer_mask[row].nonzero().flatten().tolist() == list(range(first, stop))


@pytest.mark.parametrize("background", [True, False])
@pytest.mark.parametrize("qa", QA_TASKS)
def test_layout_ends_each_fact_where_it_is_and_support_rows_name_the_earliest(
    qa: str, background: bool
) -> None:
    task = task_of(qa, background=background)
    for seed in range(8):
        row, story, ends = task.layout(seed)
        assert np.array_equal(row, task.row(seed)[0])
        assert len(ends) == len(story.facts) and list(ends) == sorted(ends)
        for fact, end in zip(story.facts, ends, strict=True):
            written = f"{fact} ".encode()
            assert bytes(row[end + 1 - len(written) : end + 1].tolist()) == written
    tokens, spans, support = task.support_rows(6, torch.Generator().manual_seed(4))
    again, spans_again = task.token_rows(6, torch.Generator().manual_seed(4))
    assert np.array_equal(tokens, again) and np.array_equal(spans, spans_again)
    seeds = torch.randint(0, 2**62, (6,), generator=torch.Generator().manual_seed(4)).tolist()
    for index, seed in enumerate(seeds):
        _, story, ends = task.layout(seed)
        assert support[index] == ends[min(story.supporting)] < spans[index, 0]


@pytest.mark.parametrize("qa", QA_TASKS)
def test_answer_span_is_the_answer_then_only_its_pad(qa: str) -> None:
    task = task_of(qa)
    for seed in range(20):
        row, story = task.row(seed)
        start, end = task.answer_span(story)
        assert bytes(row[start:end].tolist()).decode("ascii") == story.answer
        assert bytes(row[end:].tolist()) == b" " * task.pad_of(story)
        assert row[start - 1] == ord(" ") and bytes(row[:start]).rstrip().endswith(b"?")


# --------------------------------------------------------------------------- in a tokenizer's ids


@pytest.fixture(scope="module")
def bpe():
    """A small byte-level BPE standing in for a pretrained model's tokenizer."""
    from memtx.data.tokenizers import BPETokenizer

    words = " ".join([*PEOPLE, *GIVERS, *PLACES, *OBJECTS, "Where is the moved went to"])
    return BPETokenizer.train([TEXT * 4, words.encode()], vocab_size=420)


def bpe_task(bpe, qa: str, **params: object):
    return task_of(qa, noise=bpe.encode(TEXT * 400), tokenizer=bpe, **params)


@pytest.mark.parametrize("qa", QA_TASKS)
def test_in_a_tokenizers_ids_the_row_reads_as_the_story_in_the_text(bpe, qa: str) -> None:
    task = bpe_task(bpe, qa)
    assert task.vocab_size == bpe.vocab_size > 256
    distances = set()
    for seed in range(12):
        row, story = task.row(seed)
        assert row.dtype == np.uint16 and len(row) == task.total_len + 1
        text = bpe.decode_bytes(row).decode("ascii")
        pad = " " * task.pad_of(story)
        assert text.endswith(f" {story.question} {story.answer}{pad}")
        place = 0
        for fact in story.facts:  # in order, each after a sentence's end
            place = text.index(f" {fact}", place)
            assert text[:place].rstrip()[-1] in ".!?"
        start, end = task.answer_span(story)
        assert row[start:end].tolist() == bpe.encode(f" {story.answer}").tolist()
        distances.add(len(row) - start)  # where the question ends, from the row end
    assert len(distances) == 1  # the question ends at one distance from the row's end


def test_in_a_tokenizers_ids_token_rows_are_sample_and_the_answer_is_scored(bpe) -> None:
    task = bpe_task(bpe, "qa2")
    tokens, spans = task.token_rows(4, torch.Generator().manual_seed(3))
    sample = task.sample(4, seed=3)
    assert tokens.dtype == np.uint16
    assert torch.equal(torch.from_numpy(tokens[:, :-1].astype(np.int64)), sample.inputs)
    for row, (first, stop) in enumerate(spans.tolist()):
        assert sample.answer_mask[row].nonzero().flatten().tolist() == list(range(first, stop))
        answer = bpe.decode_bytes(sample.targets[row, first:stop].tolist()).decode()
        assert answer.strip() in PLACES


def test_in_a_tokenizers_ids_without_background_the_story_is_padded(bpe) -> None:
    task = task_of("qa1", tokenizer=bpe, background=False)
    row, story = task.row(0)
    assert bpe.decode_bytes(row).decode("ascii").lstrip(" ").startswith(story.facts[0])


def test_a_tokenizer_without_a_one_token_space_is_refused(bpe) -> None:
    class TwoTokenSpace:
        vocab_size = bpe.vocab_size

        def encode(self, text: str) -> np.ndarray:
            return (
                np.concatenate([bpe.encode(text), bpe.encode(" ")])
                if text == " "
                else bpe.encode(text)
            )

        def decode_bytes(self, ids) -> bytes:
            return bpe.decode_bytes(ids)

    with pytest.raises(ConfigError, match="encode a space as one token"):
        task_of("qa1", noise=bpe.encode(TEXT * 400), tokenizer=TwoTokenSpace())


# --------------------------------------------------------------------------- sentences and bounds


@pytest.mark.parametrize("qa", QA_TASKS)
def test_sentences_hold_every_fact_and_question_a_story_writes(qa: str) -> None:
    from memtx.data.tasks.babi import LONGEST_FACT, LONGEST_QUESTION, sentences

    facts, questions = sentences(qa)
    for seed in range(300):
        story = make_story(qa, 4 if qa == "qa4" else 8, random.Random(seed))
        assert set(story.facts) <= set(facts) and story.question in questions
    assert LONGEST_FACT[qa] == max(len(f) for f in facts) + 1  # with its space
    assert LONGEST_QUESTION[qa] == max(len(q) for q in questions)


def test_in_a_tokenizers_ids_the_story_must_fit_in_its_tokens_not_its_bytes() -> None:
    from memtx.data.tasks import BabilongTask, task_vocabulary
    from memtx.data.tasks.babi import sentences
    from memtx.data.tokenizers import BPETokenizer

    # A BPE that learned the task's words: each name, verb and place one token.
    vocabulary = task_vocabulary("babilong", qa="qa1")
    words = BPETokenizer.train([TEXT, *(s for s in vocabulary for _ in range(50))], vocab_size=600)
    assert len(words.encode(" Daniel journeyed to the hallway.")) == 6
    # 4 facts, the question and the answer: 161 bytes, but 4 * 6 + 4 + 1 = 29 tokens.
    with pytest.raises(ConfigError, match="needs up to 160 input tokens"):
        task_of("qa1", segments=1, background=False)
    task = task_of("qa1", segments=1, background=False, tokenizer=words)
    for seed in range(50):
        row, story = task.row(seed)
        assert len(row) == SEGMENT_LEN + 1
        assert words.decode_bytes(row).decode().strip().startswith(story.facts[0])
    # A story that does not fit in tokens either is refused, naming the count.
    facts, questions = sentences("qa1")
    fact = max(len(words.encode(f" {f}")) for f in facts)
    question = max(len(words.encode(f" {q}")) for q in questions)
    needed = 4 * fact + question + 1 - 1  # a one-token answer; the last is a target only
    assert needed < 40
    with pytest.raises(ConfigError, match=f"needs up to {needed} input tokens"):
        BabilongTask(
            total_len=16,
            segments=1,
            segment_len=16,
            seed=0,
            story_facts=4,
            background=False,
            tokenizer=words,
        )


def test_task_vocabulary_is_the_text_tasks_sentences() -> None:
    from memtx.data.tasks import task_vocabulary

    qa2 = task_vocabulary("babilong", qa="qa2", story_facts=3, background=False)
    assert "Where is the milk?" in qa2 and "John picked up the apple there." in qa2
    assert set(PLACES) <= set(qa2)
    facts = task_vocabulary("facts", num_facts=2)
    assert "The key of Alice is" in facts and "What is the key of Alice?" in facts
    assert task_vocabulary("copy") == ()
    with pytest.raises(ConfigError, match="unknown task 'nope'"):
        task_vocabulary("nope")
    with pytest.raises(ConfigError, match="unknown babilong task 'qa9'"):
        task_vocabulary("babilong", qa="qa9")
