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
    "sentences",
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

# The sentences, as bAbI writes them: one template each, shared by the stories and by
# :func:`sentences` (every sentence a task can write).
MOVE = "{person} {verb} to the {place}."
TAKE = "{person} {verb} the {thing} there."
DROP = "{person} {verb} the {thing}."
GIVE = "{person} {verb} the {thing} to {receiver}."
RELATION = "The {place} is {direction} of the {other}."
WHERE_PERSON = "Where is {person}?"
WHERE_THING = "Where is the {thing}?"
WHERE_BEFORE = "Where was the {thing} before the {place}?"
WHAT_IS_OF = "What is {direction} of the {other}?"
WHAT_OF = "What is the {place} {direction} of?"
WHO_GAVE = "Who gave the {thing} to {receiver}?"
WHO_TO = "Who did {giver} give the {thing} to?"
WHAT_GAVE = "What did {giver} give to {receiver}?"
WHO_RECEIVED = "Who received the {thing}?"


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
        facts.append(MOVE.format(person=person, verb=rng.choice(MOVES), place=place))
        where[person] = (place, index)
    person = rng.choice(sorted(where))
    place, support = where[person]
    return Story(tuple(facts), WHERE_PERSON.format(person=person), place, (support,))


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
            facts.append(MOVE.format(person=person, verb=rng.choice(MOVES), place=place))
            at[person] = (place, index)
            for thing in held:
                arrive(thing, place, (holder[thing][1], index))
        elif action == "take":
            thing = rng.choice(free)
            facts.append(TAKE.format(person=person, verb=rng.choice(TAKES), thing=thing))
            holder[thing] = (person, index)
            if person in at:
                arrive(thing, at[person][0], (at[person][1], index))
        elif action == "drop":
            thing = rng.choice(held)
            facts.append(DROP.format(person=person, verb=rng.choice(DROPS), thing=thing))
            del holder[thing]
            if person in at:  # it stays where it is; the drop confirms it
                history[thing][-1] = _Place(at[person][0], tuple(sorted((at[person][1], index))))
        else:
            thing = rng.choice(held)
            receiver = rng.choice([p for p in people if p != person])
            verb = rng.choice(GIVES)
            facts.append(GIVE.format(person=person, verb=verb, thing=thing, receiver=receiver))
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
    return Story(tuple(facts), WHERE_THING.format(thing=thing), last.place, last.support)


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
    question = WHERE_BEFORE.format(thing=thing, place=after.place)
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
        facts.append(RELATION.format(place=place, direction=direction, other=other))
    index = rng.randrange(len(facts))
    place, direction, other = _relation(facts[index])
    if rng.random() < 0.5:
        question = WHAT_IS_OF.format(direction=direction, other=other)
        return Story(tuple(facts), question, place, (index,))
    return Story(tuple(facts), WHAT_OF.format(place=place, direction=direction), other, (index,))


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
        (WHO_GAVE.format(thing=thing, receiver=receiver), (1, 2), 0),
        (WHO_TO.format(giver=giver, thing=thing), (0, 1), 2),
        (WHAT_GAVE.format(giver=giver, receiver=receiver), (0, 2), 1),
        (WHO_RECEIVED.format(thing=thing), (1,), 2),
    ]
    question, named, answers = rng.choice(kinds)
    asked = (giver, thing, receiver)
    match = [g for g in given if all(g[i] == asked[i] for i in named)][-1]
    return Story(tuple(facts), question, str(match[answers]), (int(match[3]),))


_STORIES = {"qa1": _qa1, "qa2": _qa2, "qa3": _qa3, "qa4": _qa4, "qa5": _qa5}


def sentences(qa: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Every fact and every question task ``qa``'s stories can hold (a few hundred), for
    bounds on their length in any tokenizer's tokens."""
    people = GIVERS if qa == "qa5" else PEOPLE
    facts = {
        "move": [
            MOVE.format(person=p, verb=v, place=w) for p in people for v in MOVES for w in PLACES
        ],
        "take": [
            TAKE.format(person=p, verb=v, thing=t) for p in people for v in TAKES for t in OBJECTS
        ],
        "drop": [
            DROP.format(person=p, verb=v, thing=t) for p in people for v in DROPS for t in OBJECTS
        ],
        "give": [
            GIVE.format(person=p, verb=v, thing=t, receiver=r)
            for p in people
            for v in GIVES
            for t in OBJECTS
            for r in people
        ],
        "relation": [
            RELATION.format(place=a, direction=d, other=b)
            for a in PLACES
            for d in DIRECTIONS
            for b in PLACES
        ],
    }
    used = {
        "qa1": ("move",),
        "qa2": ("move", "take", "drop"),
        "qa3": ("move", "take", "drop"),
        "qa4": ("relation",),
        "qa5": ("move", "take", "give"),
    }
    questions = {
        "qa1": [WHERE_PERSON.format(person=p) for p in people],
        "qa2": [WHERE_THING.format(thing=t) for t in OBJECTS],
        "qa3": [WHERE_BEFORE.format(thing=t, place=w) for t in OBJECTS for w in PLACES],
        "qa4": [WHAT_IS_OF.format(direction=d, other=w) for d in DIRECTIONS for w in PLACES]
        + [WHAT_OF.format(place=w, direction=d) for w in PLACES for d in DIRECTIONS],
        "qa5": [WHO_GAVE.format(thing=t, receiver=r) for t in OBJECTS for r in people]
        + [WHO_TO.format(giver=g, thing=t) for g in people for t in OBJECTS]
        + [WHAT_GAVE.format(giver=g, receiver=r) for g in people for r in people]
        + [WHO_RECEIVED.format(thing=t) for t in OBJECTS],
    }
    return tuple(f for kind in used[qa] for f in facts[kind]), tuple(questions[qa])


#: the longest fact in bytes, with the space that follows it in a story
LONGEST_FACT = {qa: max(len(f) for f in sentences(qa)[0]) + 1 for qa in QA_TASKS}
#: the longest question in bytes
LONGEST_QUESTION = {qa: max(len(q) for q in sentences(qa)[1]) for qa in QA_TASKS}
