"""BABILong-style tasks: bAbI reasoning about a small world, hidden in long real text.

Our own generator of bAbI worlds (Weston et al. 2015) in the layout of BABILong (Kuratov
et al. 2024): a story of facts about people, places and objects (the facts that answer the
question and distractor facts about the rest of the world), each fact inserted, in order,
at a sentence boundary of real background text at a random place; then the question, then
the answer (the only scored tokens). One task, ``babilong``, with the bAbI task in ``qa``:

- ``qa1`` single supporting fact: "Mary moved to the bathroom." ... "Where is Mary?"
- ``qa2`` two supporting facts: "John picked up the football. John went to the garden."
  ... "Where is the football?" (an object is where the person carrying it is, or where
  it was dropped).
- ``qa3`` three supporting facts: "Where was the football before the kitchen?" (the
  object's place before it last came to the kitchen).
- ``qa4`` two-argument relations: "The kitchen is north of the hallway." ... "What is
  north of the hallway?" or "What is the kitchen north of?"
- ``qa5`` three-argument relations: "Fred gave the milk to Bill." ... "Who gave the milk
  to Bill?", "Who did Fred give the milk to?", "What did Fred give to Bill?", "Who
  received the milk?" (the latest such event answers).

A row is ``total_len + 1`` bytes: ``[background with the facts][question] [answer][pad]``,
the pad spaces making every answer as long as the task's longest label, so the question
sits at the same distance from the row's end whatever the answer (without the pad, where
the question starts in its segment gives away the answer's length: a transformer without
memory scored 0.48-0.56 exact on qa1 at 1K-16K tokens, chance being 1/6). The
background is a window of ``noise`` (any 1-D array of byte tokens of real text: the train
split for training, held-out documents for evaluation) that ends at a sentence end, so the
question follows a whole sentence. With ``background=False`` (BABILong's length 0) the
story stands alone, left-padded with spaces to the row. The question and its answer must
fit in the row's last segment, as for every task with a question.

With a ``tokenizer`` (the run's BPE, or a pretrained model's own) a row is its ids: the
background is text in them, each fact, the question and the answer are encoded on their
own with a space before them, facts go in after a token that ends a sentence, and the pad
is the id of " ".

A sample costs one slice of the background per row (no Python strings of its length): a
million-token haystack takes milliseconds.
"""

from __future__ import annotations

import random
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from memtx.data.tasks.babi import (
    DEFAULT_STORY_FACTS,
    DIRECTIONS,
    GIVERS,
    LABELS,
    LONGEST_FACT,
    LONGEST_QUESTION,
    MAX_STORY_FACTS,
    MIN_STORY_FACTS,
    OBJECTS,
    PEOPLE,
    PLACES,
    QA_TASKS,
    Story,
    make_story,
    sentences,
)
from memtx.data.tasks.base import VOCAB_SIZE, Task, at_least
from memtx.errors import ConfigError

__all__ = [
    "DEFAULT_STORY_FACTS",
    "DIRECTIONS",
    "GIVERS",
    "LABELS",
    "OBJECTS",
    "PEOPLE",
    "PLACES",
    "QA_TASKS",
    "BabilongTask",
    "Story",
    "background_tokens",
    "make_story",
    "sentence_starts",
    "token_sentence_starts",
]

_SENTENCE_ENDS = (ord("."), ord("!"), ord("?"))
_SPACES = (ord(" "), ord("\n"))
_PAD = ord(" ")


def background_tokens(noise: Any, *, vocab_size: int = VOCAB_SIZE) -> np.ndarray:
    """A 1-D numpy array of tokens from the accepted types (``bytes``, a numpy integer
    array or an integer tensor): uint8 bytes (no copy for uint8), or uint16 ids of a
    tokenizer's ``vocab_size`` > 256."""
    hint = "babilong needs background text: a 1-D array of tokens of real text"
    if noise is None:
        raise ConfigError(f"{hint} (e.g. a corpus's train split)")
    if isinstance(noise, (bytes, bytearray, memoryview)):
        tokens = np.frombuffer(bytes(noise), dtype=np.uint8)
    elif isinstance(noise, Tensor):
        if noise.dtype.is_floating_point or noise.dtype.is_complex or noise.dtype == torch.bool:
            raise ConfigError(f"{hint}, got a tensor of dtype {noise.dtype}")
        tokens = noise.detach().cpu().numpy()
    elif isinstance(noise, np.ndarray):
        tokens = noise
    else:
        raise ConfigError(f"{hint}, got {type(noise).__name__}")
    if tokens.dtype.kind not in "ui":
        raise ConfigError(f"{hint}, got an array of dtype {tokens.dtype}")
    if tokens.ndim != 1 or tokens.size == 0:
        raise ConfigError(f"{hint}, got shape {tuple(tokens.shape)}")
    dtype = _row_dtype(vocab_size)
    if tokens.dtype != dtype:
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= vocab_size:
            raise ConfigError(f"{hint}: token ids must be in [0, {vocab_size}), got {low}..{high}")
        tokens = tokens.astype(dtype)
    return tokens


def token_sentence_starts(tokens: np.ndarray, tokenizer: Any) -> np.ndarray:
    """:func:`sentence_starts` in a tokenizer's ids: after a token whose text ends with
    ``.``, ``!`` or ``?``, where that token's text ends with a space or newline after it
    or the next token's starts with one (int64, increasing)."""
    if len(tokens) < 2:
        return np.zeros(0, dtype=np.int64)
    ids = np.unique(tokens)
    ends, spaced, opens = (np.zeros(int(ids[-1]) + 1, dtype=bool) for _ in range(3))
    for token in ids.tolist():
        text = tokenizer.decode_bytes([token])
        bare = text.rstrip(b" \n")
        ends[token] = bare[-1:] in (b".", b"!", b"?")
        spaced[token] = ends[token] and len(bare) < len(text)
        opens[token] = text[:1] in (b" ", b"\n")
    head, tail = tokens[:-1], tokens[1:]
    return np.flatnonzero(spaced[head] | (ends[head] & opens[tail])) + 1


def sentence_starts(tokens: np.ndarray, *, chunk: int = 1 << 24) -> np.ndarray:
    """Positions where a sentence starts: after ``.``, ``!`` or ``?`` and a space or newline
    (int64, increasing). Walks the array in chunks, so a large corpus needs little memory."""
    found = []
    for first in range(0, max(len(tokens) - 1, 0), chunk):
        piece = tokens[first : first + chunk + 1]
        head, tail = piece[:-1], piece[1:]
        ends = (
            (head == _SENTENCE_ENDS[0]) | (head == _SENTENCE_ENDS[1]) | (head == _SENTENCE_ENDS[2])
        )
        ends &= (tail == _SPACES[0]) | (tail == _SPACES[1])
        found.append(np.flatnonzero(ends) + first + 2)
    return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


class BabilongTask(Task):
    """bAbI stories hidden in real text, the question last (see the module docstring).

    Args:
        qa: the bAbI task, ``qa1`` .. ``qa5``.
        noise: the background: a 1-D array of byte tokens of real text (numpy, tensor or
            ``bytes``) with sentence ends; not needed with ``background=False``.
        story_facts: facts per story, supporting and distractors (0: the task's default,
            :data:`DEFAULT_STORY_FACTS`).
        background: False: no background (BABILong's length 0), the story left-padded
            with spaces to the row.
        story_padding: without background, ``"row"`` pads the story to the row's
            ``total_len`` (its segments); ``"longest"`` only to the longest story the task
            can write, so the row is shorter (one partial segment, for a story that fits
            one): pads dilute the attention of a small model that is learning to bind a
            place to its person (benchmarks/babilong.md, session 17). No effect with
            background.
        tokenizer: the run's BPE or a pretrained model's own (``encode(str)``,
            ``decode_bytes(ids)``, ``vocab_size``; ``data.tokenizer = "bpe"`` or
            ``"hf"``): rows are its ids, ``noise`` is text in them, each fact, the
            question and the answer are encoded on their own with a space before each
            (" Mary moved to the garden.", " Where is Mary?", " garden"), and the
            answer's tokens are scored; the pad is the id of " ". The story must fit in
            its tokens (measured over every sentence the task can write).

    Raises:
        ConfigError: an unknown ``qa``, a row too short for the story and the question, a
            question and answer longer than a segment, a background without sentence ends
            or too short for a row.
    """

    name = "babilong"

    def __init__(
        self,
        *,
        total_len: int,
        segments: int,
        segment_len: int,
        seed: int,
        qa: str = "qa1",
        noise: Any = None,
        story_facts: int = 0,
        background: bool = True,
        story_padding: Literal["row", "longest"] = "row",
        tokenizer: Any = None,
    ) -> None:
        super().__init__(total_len=total_len, segments=segments, segment_len=segment_len, seed=seed)
        if qa not in QA_TASKS:
            raise ConfigError(f"unknown babilong task {qa!r} (known: {', '.join(QA_TASKS)})")
        at_least(self.name, "story_facts", story_facts, 0)
        self.qa, self.background = qa, bool(background)
        self.story_facts = story_facts or DEFAULT_STORY_FACTS[qa]
        low, high = MIN_STORY_FACTS[qa], MAX_STORY_FACTS.get(qa)
        if self.story_facts < low or (high is not None and self.story_facts > high):
            within = f">= {low}" if high is None else f"in {low}..{high}"
            raise ConfigError(
                f"task {self.name!r} {qa}: story_facts must be {within}, got {self.story_facts}"
            )
        self.tokenizer = tokenizer
        self.vocab_size = VOCAB_SIZE if tokenizer is None else int(tokenizer.vocab_size)
        self.pad_id = _PAD if tokenizer is None else self._pad_id()
        self.answer_len = max(len(self._answer(label)) for label in LABELS[qa])
        self.chance = 1 / len(LABELS[qa])
        longest_fact, longest_question = self._longest_sentences()
        self._check_question_fits(longest_question)
        self.longest_row = self.story_facts * longest_fact + longest_question + self.answer_len
        if self.longest_row > total_len + 1:
            raise ConfigError(
                f"task {self.name!r} {qa}: total_len ({total_len}) is too short for "
                f"{self.story_facts} facts and the question: it needs up to "
                f"{self.longest_row - 1} input tokens"
            )
        if story_padding not in ("row", "longest"):
            raise ConfigError(
                f"task {self.name!r}: story_padding must be 'row' or 'longest', got "
                f"{story_padding!r}"
            )
        if not self.background and story_padding == "longest":
            self.total_len = self.longest_row - 1  # the row ends where its longest story would
            self.segments = -(-self.total_len // segment_len)
        dtype = _row_dtype(self.vocab_size)
        self.noise = (
            background_tokens(noise, vocab_size=self.vocab_size)
            if self.background
            else np.zeros(0, dtype)
        )
        self.starts = (
            sentence_starts(self.noise)
            if tokenizer is None
            else token_sentence_starts(self.noise, tokenizer)
        )
        if self.background:
            self._check_background()

    def _check_background(self) -> None:
        if len(self.starts) == 0:
            raise ConfigError(
                f"task {self.name!r}: the background has no sentence boundary ('.', '!' or "
                f"'?' followed by a space or newline) to insert facts at"
            )
        window = self.total_len + 1  # the most background a row can need
        if self.starts[-1] < window:
            raise ConfigError(
                f"task {self.name!r}: the background has {len(self.noise)} tokens with its "
                f"last sentence end at {int(self.starts[-1])}, but a row needs a window of "
                f"up to {window} tokens that ends at one"
            )

    @staticmethod
    def vocabulary(*, qa: str = "qa1") -> tuple[str, ...]:
        """Every sentence task ``qa`` writes (facts, questions, answers), for a BPE
        tokenizer to learn its words from along with the corpus."""
        if qa not in QA_TASKS:
            raise ConfigError(f"unknown babilong task {qa!r} (known: {', '.join(QA_TASKS)})")
        facts, questions = sentences(qa)
        return (*facts, *questions, *LABELS[qa])

    def story(self, rng: random.Random) -> Story:
        """One story of this task, drawn from ``rng``."""
        return make_story(self.qa, self.story_facts, rng)

    def _sequences(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        tokens, spans = self.token_rows(batch, generator)
        answer = torch.zeros(tokens.shape, dtype=torch.bool)
        for row, (first, stop) in enumerate(spans.tolist()):
            answer[row, first + 1 : stop + 1] = True  # targets j are tokens j + 1
        return torch.from_numpy(tokens).long(), answer

    def token_rows(self, batch: int, generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The rows of :meth:`sample` as compact arrays: tokens [B, N+1] (uint8 bytes, or
        a tokenizer's uint16 ids) and each row's answer as targets ``first .. stop - 1``
        [B, 2] (target j is token j + 1). The same rows as ``sample`` for the same
        generator, at an eighth (a quarter) of the memory of its int64 tensors (a batch of
        32 million-byte haystacks: 32 MB), for evaluation that streams them."""
        tokens, spans, _ = self.support_rows(batch, generator)
        return tokens, spans

    def support_rows(
        self, batch: int, generator: torch.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`token_rows` (the same rows for the same generator) and, per row, where
        its earliest supporting fact ends: the index [B] of that fact's last token, the
        fact the memory has to keep longest."""
        tokens = np.empty((batch, self.total_len + 1), dtype=_row_dtype(self.vocab_size))
        spans = np.empty((batch, 2), dtype=np.int64)
        support = np.empty(batch, dtype=np.int64)
        seeds = torch.randint(0, 2**62, (batch,), generator=generator).tolist()
        for row, seed in enumerate(seeds):
            tokens[row], story, ends = self.layout(seed)
            start, end = self.answer_span(story)
            spans[row] = start - 1, end - 1  # target j is token j + 1
            support[row] = ends[min(story.supporting)]
        return tokens, spans, support

    def answer_span(self, story: Story) -> tuple[int, int]:
        """Where ``story``'s answer sits in its row of :meth:`row`: tokens ``start .. end - 1``
        (its pad follows, up to the row's end)."""
        end = self.total_len + 1 - self.pad_of(story)
        return end - len(self._answer(story.answer)), end

    def pad_of(self, story: Story) -> int:
        """The pad tokens after ``story``'s answer: up to the task's longest label."""
        return self.answer_len - len(self._answer(story.answer))

    def row(self, seed: int) -> tuple[np.ndarray, Story]:
        """The ``total_len + 1`` tokens of one row drawn from ``seed``, and its story."""
        tokens, story, _ = self.layout(seed)
        return tokens, story

    def layout(self, seed: int) -> tuple[np.ndarray, Story, tuple[int, ...]]:
        """:meth:`row`, and the index in it of each fact's last token (in story order)."""
        rng = random.Random(seed)
        story = self.story(rng)
        pad = np.full(self.pad_of(story), self.pad_id, self.noise.dtype)
        if self.tokenizer is None:
            facts = [_ascii(f"{fact} ") for fact in story.facts]
            tail = np.concatenate([_ascii(f"{story.question} {story.answer}"), pad])
        else:  # the window ends with a sentence's last token: a space starts each piece
            facts = [self._encode(f" {fact}") for fact in story.facts]
            question = self._encode(f" {story.question}")
            tail = np.concatenate([question, self._answer(story.answer), pad])
        fill = self.total_len + 1 - len(tail) - sum(len(fact) for fact in facts)
        if not self.background:
            padding = np.full(fill, self.pad_id, self.noise.dtype)
            nothing = [padding[:0]] * len(facts)  # the facts follow each other
            return _joined([padding, *nothing], facts, tail, story)
        # A window of ``fill`` tokens that ends at a sentence end, facts at sentence starts.
        first = int(np.searchsorted(self.starts, fill))
        end = int(self.starts[rng.randrange(first, len(self.starts))])
        begin = end - fill
        lo = int(np.searchsorted(self.starts, begin, side="right"))
        hi = int(np.searchsorted(self.starts, end, side="right"))
        inside = self.starts[lo:hi] - begin  # candidate places, in (0, fill]
        cuts = sorted(int(inside[rng.randrange(len(inside))]) for _ in facts)
        window = self.noise[begin:end]
        gaps = [window[a:b] for a, b in zip([0, *cuts], [*cuts, fill], strict=True)]
        return _joined(gaps, facts, tail, story)

    def _longest_sentences(self) -> tuple[int, int]:
        """The most tokens a fact (with its space) and a question (with the space before
        the answer) can take in this task's rows: bytes, or the tokenizer's ids, measured
        over every sentence the task can write."""
        if self.tokenizer is None:
            return LONGEST_FACT[self.qa], LONGEST_QUESTION[self.qa] + 1
        facts, questions = sentences(self.qa)
        return (
            max(len(self._encode(f" {fact}")) for fact in facts),
            max(len(self._encode(f" {question}")) for question in questions),
        )

    def _encode(self, text: str) -> np.ndarray:
        """``text`` in the tokenizer's ids (uint16)."""
        return np.asarray(self.tokenizer.encode(text), dtype=np.uint16)

    def _answer(self, label: str) -> np.ndarray:
        """The answer's scored tokens: its bytes, or the tokenizer's ids of " label"."""
        return _ascii(label) if self.tokenizer is None else self._encode(f" {label}")

    def _pad_id(self) -> int:
        space = self._encode(" ")
        if len(space) != 1:
            raise ConfigError(
                f"task {self.name!r}: the tokenizer must encode a space as one token (the "
                f"answer's pad), got {len(space)}"
            )
        return int(space[0])


def _joined(
    gaps: list[np.ndarray], facts: list[np.ndarray], tail: np.ndarray, story: Story
) -> tuple[np.ndarray, Story, tuple[int, ...]]:
    """``gaps[0] facts[0] gaps[1] facts[1] ... gaps[-1] tail`` (one more gap than facts),
    the story, and the index of each fact's last token."""
    pieces, ends, at = [gaps[0]], [], len(gaps[0])
    for fact, gap in zip(facts, gaps[1:], strict=True):
        pieces += [fact, gap]
        ends.append(at + len(fact) - 1)
        at += len(fact) + len(gap)
    return np.concatenate([*pieces, tail]), story, tuple(ends)


def _ascii(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("ascii"), dtype=np.uint8)


def _row_dtype(vocab_size: int) -> type[np.unsignedinteger]:
    return np.uint8 if vocab_size <= VOCAB_SIZE else np.uint16
