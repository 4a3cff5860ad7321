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

A sample costs one slice of the background per row (no Python strings of its length): a
million-token haystack takes milliseconds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

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
]

PEOPLE: tuple[str, ...] = ("Mary", "John", "Sandra", "Daniel")
GIVERS: tuple[str, ...] = ("Mary", "Fred", "Bill", "Jeff")  # qa5's people, as in bAbI
PLACES: tuple[str, ...] = ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office")
OBJECTS: tuple[str, ...] = ("apple", "football", "milk")
DIRECTIONS = {"north": (0, 1), "south": (0, -1), "east": (1, 0), "west": (-1, 0)}
MOVES = ("moved", "went", "journeyed", "travelled")
TAKES = ("picked up", "got", "grabbed", "took")
DROPS = ("dropped", "discarded", "put down", "left")
GIVES = ("gave", "handed", "passed")

QA_TASKS: tuple[str, ...] = ("qa1", "qa2", "qa3", "qa4", "qa5")
#: the candidate answers of each task (BABILong's ``TASK_LABELS`` for qa1-qa5)
LABELS: dict[str, tuple[str, ...]] = {
    **{qa: PLACES for qa in ("qa1", "qa2", "qa3", "qa4")},
    "qa5": (*sorted(GIVERS), *OBJECTS),
}
#: facts per story (supporting and distractors) when ``story_facts`` is 0
DEFAULT_STORY_FACTS: dict[str, int] = {"qa1": 4, "qa2": 8, "qa3": 10, "qa4": 2, "qa5": 8}
_MIN_STORY_FACTS = {"qa1": 1, "qa2": 2, "qa3": 3, "qa4": 1, "qa5": 1}
_MAX_STORY_FACTS = {"qa4": len(PLACES) - 1}  # each fact places one more place
_SENTENCE_ENDS = (ord("."), ord("!"), ord("?"))
_SPACES = (ord(" "), ord("\n"))
_PAD = ord(" ")
_TRIES = 1000


@dataclass(frozen=True)
class Story:
    """A bAbI story and its question.

    Attributes:
        facts: the sentences in order, each ending with ``"."``.
        question: ends with ``"?"``.
        answer: one word of :data:`LABELS` of the task.
        supporting: indices into ``facts`` of the facts the answer follows from.
    """

    facts: tuple[str, ...]
    question: str
    answer: str
    supporting: tuple[int, ...]


def make_story(qa: str, num_facts: int, rng: random.Random) -> Story:
    """A story of ``num_facts`` facts of bAbI task ``qa`` and a question it answers."""
    if qa not in QA_TASKS:
        raise ConfigError(f"unknown babilong task {qa!r} (known: {', '.join(QA_TASKS)})")
    for _ in range(_TRIES):  # a story without a question of its kind is drawn again
        story = _STORIES[qa](num_facts, rng)
        if story is not None:
            return story
    raise ConfigError(f"babilong {qa}: no story of {num_facts} facts has a question")


def _qa1(num_facts: int, rng: random.Random) -> Story:
    facts: list[str] = []
    where: dict[str, tuple[str, int]] = {}  # person -> (place, the fact that says so)
    for index in range(num_facts):
        person = rng.choice(PEOPLE)
        place = rng.choice([p for p in PLACES if p != where.get(person, ("", 0))[0]])
        facts.append(f"{person} {rng.choice(MOVES)} to the {place}.")
        where[person] = (place, index)
    person = rng.choice(sorted(where))
    return Story(tuple(facts), f"Where is {person}?", where[person][0], (where[person][1],))


@dataclass
class _Place:
    place: str
    support: tuple[int, ...]


def _carry_world(
    num_facts: int, rng: random.Random, people: tuple[str, ...], *, gives: bool
) -> tuple[list[str], dict[str, list[_Place]], list[tuple[str, str, str, int]]]:
    """People move, pick up, drop (or give) objects. Returns the facts, each object's
    history of places (each with the facts that put it there) and the gives."""
    facts: list[str] = []
    at: dict[str, tuple[str, int]] = {}  # person -> (place, fact)
    holder: dict[str, tuple[str, int]] = {}  # object -> (person, the fact they took it in)
    history: dict[str, list[_Place]] = {thing: [] for thing in OBJECTS}
    given: list[tuple[str, str, str, int]] = []  # (giver, object, receiver, fact)

    def arrive(thing: str, place: str, support: tuple[int, ...]) -> None:
        if not history[thing] or history[thing][-1].place != place:
            history[thing].append(_Place(place, tuple(sorted(support))))

    for index in range(num_facts):
        person = rng.choice(people)
        held = sorted(t for t, (p, _) in holder.items() if p == person)
        free = [t for t in OBJECTS if t not in holder and _reachable(history[t], at.get(person))]
        actions = ["move"] + ["take"] * bool(free) + ["drop"] * bool(held) * (not gives)
        actions += ["give"] * bool(held) * gives
        action = rng.choice(actions)
        if action == "move":
            here = at.get(person, ("", 0))[0]
            place = rng.choice([p for p in PLACES if p != here])
            facts.append(f"{person} {rng.choice(MOVES)} to the {place}.")
            at[person] = (place, index)
            for thing in held:
                arrive(thing, place, (holder[thing][1], index))
        elif action == "take":
            thing = rng.choice(free)
            facts.append(f"{person} {rng.choice(TAKES)} the {thing} there.")
            holder[thing] = (person, index)
            if person in at:
                arrive(thing, at[person][0], (at[person][1], index))
        elif action == "drop":
            thing = rng.choice(held)
            facts.append(f"{person} {rng.choice(DROPS)} the {thing}.")
            del holder[thing]
            if person in at:  # it stays where it is; the drop confirms it
                history[thing][-1] = _Place(at[person][0], tuple(sorted((at[person][1], index))))
        else:
            thing = rng.choice(held)
            receiver = rng.choice([p for p in people if p != person])
            facts.append(f"{person} {rng.choice(GIVES)} the {thing} to {receiver}.")
            given.append((person, thing, receiver, index))
            holder[thing] = (receiver, index)
    return facts, history, given


def _reachable(history: list[_Place], person_at: tuple[str, int] | None) -> bool:
    """An object can be taken where it lies (or anywhere while nobody knows where it is)."""
    return not history or (person_at is not None and history[-1].place == person_at[0])


def _qa2(num_facts: int, rng: random.Random) -> Story | None:
    facts, history, _ = _carry_world(num_facts, rng, PEOPLE, gives=False)
    known = [t for t in OBJECTS if history[t]]
    if not known:
        return None
    thing = rng.choice(known)
    last = history[thing][-1]
    return Story(tuple(facts), f"Where is the {thing}?", last.place, last.support)


def _qa3(num_facts: int, rng: random.Random) -> Story | None:
    facts, history, _ = _carry_world(num_facts, rng, PEOPLE, gives=False)
    choices = [
        (thing, k)
        for thing in OBJECTS
        for k in range(1, len(history[thing]))
        if [h.place for h in history[thing]].count(history[thing][k].place) == 1
    ]
    if not choices:
        return None
    thing, k = rng.choice(choices)
    before, after = history[thing][k - 1], history[thing][k]
    question = f"Where was the {thing} before the {after.place}?"
    support = tuple(sorted(set(before.support) | set(after.support)))
    return Story(tuple(facts), question, before.place, support)


def _qa4(num_facts: int, rng: random.Random) -> Story | None:
    if num_facts > _MAX_STORY_FACTS["qa4"]:
        raise ConfigError(f"babilong qa4: story_facts must be <= {_MAX_STORY_FACTS['qa4']}")
    places = rng.sample(PLACES, num_facts + 1)
    cell = {places[0]: (0, 0)}
    facts: list[str] = []
    for place in places[1:]:  # each new place next to a placed one, in a free cell
        options = [
            (other, direction, (x + dx, y + dy))
            for other, (x, y) in cell.items()
            for direction, (dx, dy) in DIRECTIONS.items()
            if (x + dx, y + dy) not in cell.values()
        ]
        other, direction, spot = rng.choice(sorted(options))
        cell[place] = spot
        facts.append(f"The {place} is {direction} of the {other}.")
    index = rng.randrange(len(facts))
    place, direction, other = _relation(facts[index])
    if rng.random() < 0.5:
        return Story(tuple(facts), f"What is {direction} of the {other}?", place, (index,))
    return Story(tuple(facts), f"What is the {place} {direction} of?", other, (index,))


def _relation(fact: str) -> tuple[str, str, str]:
    words = fact.rstrip(".").split()  # The A is DIR of the B
    return words[1], words[3], words[6]


def _qa5(num_facts: int, rng: random.Random) -> Story | None:
    facts, _, given = _carry_world(num_facts, rng, GIVERS, gives=True)
    if not given:
        return None
    giver, thing, receiver, _ = given[-1] if rng.random() < 0.5 else rng.choice(given)
    # (question, which event fields it names, which field answers); the latest event
    # that matches the named fields answers.
    kinds = [
        (f"Who gave the {thing} to {receiver}?", (1, 2), 0),
        (f"Who did {giver} give the {thing} to?", (0, 1), 2),
        (f"What did {giver} give to {receiver}?", (0, 2), 1),
        (f"Who received the {thing}?", (1,), 2),
    ]
    question, named, answers = rng.choice(kinds)
    asked = (giver, thing, receiver)
    match = [g for g in given if all(g[i] == asked[i] for i in named)][-1]
    return Story(tuple(facts), question, str(match[answers]), (int(match[3]),))


_STORIES = {"qa1": _qa1, "qa2": _qa2, "qa3": _qa3, "qa4": _qa4, "qa5": _qa5}


def background_tokens(noise: Any) -> np.ndarray:
    """A 1-D numpy array of byte tokens (no copy for uint8) from the accepted types:
    ``bytes``, a numpy integer array or an integer tensor, with ids below 256."""
    hint = "babilong needs background text: a 1-D array of byte tokens of real text"
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
    if tokens.dtype != np.uint8:
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= VOCAB_SIZE:
            raise ConfigError(f"{hint}: token ids must be in [0, {VOCAB_SIZE}), got {low}..{high}")
        tokens = tokens.astype(np.uint8)
    return tokens


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
    ) -> None:
        super().__init__(total_len=total_len, segments=segments, segment_len=segment_len, seed=seed)
        if qa not in QA_TASKS:
            raise ConfigError(f"unknown babilong task {qa!r} (known: {', '.join(QA_TASKS)})")
        at_least(self.name, "story_facts", story_facts, 0)
        self.qa, self.background = qa, bool(background)
        self.story_facts = story_facts or DEFAULT_STORY_FACTS[qa]
        low, high = _MIN_STORY_FACTS[qa], _MAX_STORY_FACTS.get(qa)
        if self.story_facts < low or (high is not None and self.story_facts > high):
            within = f">= {low}" if high is None else f"in {low}..{high}"
            raise ConfigError(
                f"task {self.name!r} {qa}: story_facts must be {within}, got {self.story_facts}"
            )
        self.answer_len = max(len(label) for label in LABELS[qa])
        self.chance = 1 / len(LABELS[qa])
        self._check_question_fits(_LONGEST_QUESTION[qa] + 1)  # + the space before the answer
        self.longest_row = self.story_facts * _LONGEST_FACT[qa] + _LONGEST_QUESTION[qa] + 1
        self.longest_row += self.answer_len
        if self.longest_row > total_len + 1:
            raise ConfigError(
                f"task {self.name!r} {qa}: total_len ({total_len}) is too short for "
                f"{self.story_facts} facts and the question: it needs up to "
                f"{self.longest_row - 1} input tokens"
            )
        self.noise = background_tokens(noise) if self.background else np.zeros(0, np.uint8)
        self.starts = sentence_starts(self.noise)
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

    def story(self, rng: random.Random) -> Story:
        """One story of this task, drawn from ``rng``."""
        return make_story(self.qa, self.story_facts, rng)

    def _sequences(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        tokens, spans = self.byte_rows(batch, generator)
        answer = torch.zeros(tokens.shape, dtype=torch.bool)
        for row, (first, stop) in enumerate(spans.tolist()):
            answer[row, first + 1 : stop + 1] = True  # targets j are tokens j + 1
        return torch.from_numpy(tokens).long(), answer

    def byte_rows(self, batch: int, generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The rows of :meth:`sample` as bytes: tokens [B, N+1] uint8 and each row's answer
        as targets ``first .. stop - 1`` [B, 2] (target j is token j + 1). The same rows as
        ``sample`` for the same generator, at an eighth of the memory of its int64 tensors
        (a batch of 32 million-token haystacks: 32 MB), for evaluation that streams them."""
        tokens = np.empty((batch, self.total_len + 1), dtype=np.uint8)
        spans = np.empty((batch, 2), dtype=np.int64)
        seeds = torch.randint(0, 2**62, (batch,), generator=generator).tolist()
        for row, seed in enumerate(seeds):
            tokens[row], story = self.row(seed)
            start, end = self.answer_span(story)
            spans[row] = start - 1, end - 1  # target j is token j + 1
        return tokens, spans

    def answer_span(self, story: Story) -> tuple[int, int]:
        """Where ``story``'s answer sits in its row of :meth:`row`: tokens ``start .. end - 1``
        (its pad follows, up to the row's end)."""
        end = self.total_len + 1 - self.pad_of(story)
        return end - len(story.answer), end

    def pad_of(self, story: Story) -> int:
        """The pad spaces after ``story``'s answer: up to the task's longest label."""
        return self.answer_len - len(story.answer)

    def row(self, seed: int) -> tuple[np.ndarray, Story]:
        """The ``total_len + 1`` bytes of one row drawn from ``seed``, and its story."""
        rng = random.Random(seed)
        story = self.story(rng)
        facts = [_ascii(f"{fact} ") for fact in story.facts]
        tail = _ascii(f"{story.question} {story.answer}" + " " * self.pad_of(story))
        fill = self.total_len + 1 - len(tail) - sum(len(fact) for fact in facts)
        if not self.background:
            return np.concatenate([np.full(fill, _PAD, np.uint8), *facts, tail]), story
        # A window of ``fill`` tokens that ends at a sentence end, facts at sentence starts.
        first = int(np.searchsorted(self.starts, fill))
        end = int(self.starts[rng.randrange(first, len(self.starts))])
        begin = end - fill
        lo = int(np.searchsorted(self.starts, begin, side="right"))
        hi = int(np.searchsorted(self.starts, end, side="right"))
        inside = self.starts[lo:hi] - begin  # candidate places, in (0, fill]
        cuts = sorted(int(inside[rng.randrange(len(inside))]) for _ in facts)
        window = self.noise[begin:end]
        pieces, previous = [], 0
        for cut, fact in zip(cuts, facts):
            pieces += [window[previous:cut], fact]
            previous = cut
        pieces += [window[previous:], tail]
        return np.concatenate(pieces), story


def _ascii(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("ascii"), dtype=np.uint8)


def _longest_fact(qa: str) -> int:
    person = max(len(p) for p in (GIVERS if qa == "qa5" else PEOPLE))
    place = max(len(p) for p in PLACES)
    thing = max(len(t) for t in OBJECTS)
    kinds = {
        "move": len(f"{'x' * person} {max(MOVES, key=len)} to the {'x' * place}. "),
        "take": len(f"{'x' * person} {max(TAKES, key=len)} the {'x' * thing} there. "),
        "drop": len(f"{'x' * person} {max(DROPS, key=len)} the {'x' * thing}. "),
        "give": len(f"{'x' * person} {max(GIVES, key=len)} the {'x' * thing} to {'x' * person}. "),
        "relation": len(f"The {'x' * place} is north of the {'x' * place}. "),
    }
    used = {
        "qa1": ("move",),
        "qa2": ("move", "take", "drop"),
        "qa3": ("move", "take", "drop"),
        "qa4": ("relation",),
        "qa5": ("move", "take", "give"),
    }
    return max(kinds[kind] for kind in used[qa])


def _longest_question(qa: str) -> int:
    person = "x" * max(len(p) for p in (GIVERS if qa == "qa5" else PEOPLE))
    place, thing = "x" * max(len(p) for p in PLACES), "x" * max(len(t) for t in OBJECTS)
    questions = {
        "qa1": [f"Where is {person}?"],
        "qa2": [f"Where is the {thing}?"],
        "qa3": [f"Where was the {thing} before the {place}?"],
        "qa4": [f"What is north of the {place}?", f"What is the {place} north of?"],
        "qa5": [
            f"Who gave the {thing} to {person}?",
            f"Who did {person} give the {thing} to?",
            f"What did {person} give to {person}?",
            f"Who received the {thing}?",
        ],
    }
    return max(len(q) for q in questions[qa])


_LONGEST_FACT = {qa: _longest_fact(qa) for qa in QA_TASKS}
_LONGEST_QUESTION = {qa: _longest_question(qa) for qa in QA_TASKS}
