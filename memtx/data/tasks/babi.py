"""bAbI worlds (Weston et al. 2015): stories of facts about people, places and objects,
and a question each story answers, for the five tasks ``qa1`` .. ``qa5``.

The stories only; :mod:`memtx.data.tasks.babilong` hides them in long real text.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from memtx.errors import ConfigError

__all__ = [
    "DEFAULT_STORY_FACTS",
    "DIRECTIONS",
    "GIVERS",
    "LABELS",
    "LONGEST_FACT",
    "LONGEST_QUESTION",
    "MAX_STORY_FACTS",
    "MIN_STORY_FACTS",
    "OBJECTS",
    "PEOPLE",
    "PLACES",
    "QA_TASKS",
    "Story",
    "make_story",
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
MIN_STORY_FACTS = {"qa1": 1, "qa2": 2, "qa3": 3, "qa4": 1, "qa5": 1}
MAX_STORY_FACTS = {"qa4": len(PLACES) - 1}  # each fact places one more place
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
    if num_facts > MAX_STORY_FACTS["qa4"]:
        raise ConfigError(f"babilong qa4: story_facts must be <= {MAX_STORY_FACTS['qa4']}")
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


LONGEST_FACT = {qa: _longest_fact(qa) for qa in QA_TASKS}
LONGEST_QUESTION = {qa: _longest_question(qa) for qa in QA_TASKS}
