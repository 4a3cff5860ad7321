"""Downstream tasks for a pre-trained discriminator, with labels from the plays themselves.

Two classification tasks with labels taken from the text of the plays (the shakespeare
corpus, modern editions):

- ``play``: which play a passage of ``passage_len`` bytes comes from, among
  ``play_names``. Passages are cut back to back from each play after skipping its first
  ``skip_fraction`` (the title page and the list of characters name the play).
- ``speaker``: which character speaks a speech, among the ``top_speakers`` most frequent
  speakers of each play in ``speaker_plays`` (label ``play:NAME``). The speech text
  comes without its speaker line; it is cut to ``max_len`` tokens.

Speaker parsing (:func:`parse_speeches`), robust to the editions' different styles
(``Ham.``, ``HAMLET.``, ``Lady Capulet.``, ``THESEUS`` with no period, trailing spaces):
a speaker line follows a blank line (or the start), is followed by a non-blank line, is
at most four words starting with a capital, ends with a period, or is all capitals
without one; heading and stage words (ACT, SCENE, PROLOGUE, Enter, Exit...) are not
speakers. The speech is the following lines up to the next blank line, with bracketed
stage directions removed. A name must occur at least 3 times in a play to count.

Splits are fixed and contiguous, never random: the examples of each play, in document
order, are grouped into blocks of ``block_size``; block ``k`` goes to valid when
``k % 10 == 3``, to test when ``k % 10 == 7``, else to train (80/10/10 by blocks, spread
over the whole play, so neighbouring passages rarely straddle two splits). Each class is
then capped (``max_train_per_class``, ``max_eval_per_class``) by a subset drawn with the
fixed ``split_seed``: the same examples for every run and seed.

Fine-tuning: the discriminator's hidden states, mean-pooled over real tokens, feed a
dropout + linear head; AdamW with linear warmup and linear decay for ``epochs`` epochs;
the last epoch's model is scored (no selection on test). Accuracy is reported on valid
(the split used for tuning) and test (:mod:`memtx.electra.finetune`).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from memtx.electra.config import TASKS, FinetuneConfig
from memtx.errors import ConfigError, DataError

__all__ = ["ClassificationTask", "Speech", "build_task", "build_tasks", "parse_speeches"]


@dataclass(frozen=True)
class Speech:
    """One speech of a play: who speaks, what, and its position (index in the play)."""

    speaker: str
    text: str
    index: int


_SPEAKER_LINE = re.compile(r"^[A-Z][A-Za-z'\-]*(?: [A-Za-z'\-]+){0,3}\.?$")
_NOT_SPEAKERS = frozenset(
    {
        "ACT",
        "SCENE",
        "PROLOGUE",
        "EPILOGUE",
        "INDUCTION",
        "THE",
        "FINIS",
        "DRAMATIS",
        "ENTER",
        "EXIT",
        "EXEUNT",
        "RE-ENTER",
        "MANET",
    }
)
_STAGE_DIRECTION = re.compile(r"\[[^\]]*\]")


def _speaker_name(line: str) -> str | None:
    """The speaker named by ``line``, or None if it is not a speaker line."""
    if not _SPEAKER_LINE.match(line):
        return None
    name = line.removesuffix(".")
    if not line.endswith(".") and name != name.upper():
        return None  # without a period only THESEUS-style capitals count
    if name.split()[0].upper() in _NOT_SPEAKERS:
        return None
    return name


def parse_speeches(text: str, *, min_count: int = 3) -> list[Speech]:
    """The speeches of a play, in order (see the module docstring for the rules).

    Args:
        text: the play.
        min_count: a name must head at least this many speeches to count as a speaker.
    """
    lines = [line.rstrip() for line in text.splitlines()]
    found: list[tuple[str, str]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        name = None
        after_blank = i == 0 or not lines[i - 1].strip()
        if line and after_blank and i + 1 < len(lines) and lines[i + 1].strip():
            name = _speaker_name(line.strip())
        if name is None:
            i += 1
            continue
        body = []
        j = i + 1
        while j < len(lines) and lines[j].strip():
            spoken = _STAGE_DIRECTION.sub("", lines[j]).strip()
            if spoken:
                body.append(spoken)
            j += 1
        if body:
            found.append((name, "\n".join(body)))
        i = j
    counts = Counter(name for name, _ in found)
    kept = [(name, body) for name, body in found if counts[name] >= min_count]
    return [Speech(speaker=name, text=body, index=k) for k, (name, body) in enumerate(kept)]


# --------------------------------------------------------------------------- tasks


@dataclass
class ClassificationTask:
    """A labelled task: token ids per example and a class index, in three fixed splits."""

    name: str
    classes: list[str]
    train: list[tuple[list[int], int]]
    valid: list[tuple[list[int], int]]
    test: list[tuple[list[int], int]]

    def majority_accuracy(self, split: str = "test") -> float:
        """Accuracy of always answering the most frequent training class."""
        examples = getattr(self, split)
        top = Counter(label for _, label in self.train).most_common(1)[0][0]
        return sum(label == top for _, label in examples) / max(len(examples), 1)


def _split_name(index: int, block_size: int) -> str:
    block = (index // block_size) % 10
    return "valid" if block == 3 else "test" if block == 7 else "train"


def _documents(names: Sequence[str]) -> dict[str, bytes]:
    from memtx.data import load_splits

    splits = load_splits("shakespeare")
    everything = {d.name: d.data for d in (*splits.train, *splits.valid, *splits.test)}
    missing = [n for n in names if n not in everything]
    if missing:
        raise ConfigError(
            f"finetune play {missing[0]!r} is not a document of the shakespeare corpus "
            f"(e.g. {', '.join(sorted(everything)[:3])})"
        )
    return {n: everything[n] for n in names}


def _cap(
    items: dict[int, list[list[int]]], limit: int, rng: random.Random
) -> list[tuple[list[int], int]]:
    out: list[tuple[list[int], int]] = []
    for label in sorted(items):
        group = items[label]
        chosen = sorted(rng.sample(range(len(group)), limit)) if len(group) > limit else None
        out.extend((group[k], label) for k in (chosen or range(len(group))))
    return out


def build_task(
    name: str, config: FinetuneConfig, *, encode: Callable[[bytes], list[int]]
) -> ClassificationTask:
    """Build task ``name`` (``"play"`` or ``"speaker"``) with ``encode`` as the tokenizer.

    Raises:
        ConfigError: unknown task or play name.
        DataError: a play yields no example.
    """
    by_split: dict[str, dict[int, list[list[int]]]] = {"train": {}, "valid": {}, "test": {}}
    classes: list[str] = []
    if name == "play":
        for label, (play, data) in enumerate(_documents(config.play_names).items()):
            classes.append(play.removesuffix("_gut"))
            start = int(len(data) * config.skip_fraction)
            count = (len(data) - start) // config.passage_len
            if count < 1:
                raise DataError(f"play {play!r} is shorter than one passage")
            for k in range(count):
                piece = data[start + k * config.passage_len : start + (k + 1) * config.passage_len]
                split = _split_name(k, config.block_size)
                by_split[split].setdefault(label, []).append(encode(piece)[: config.max_len])
    elif name == "speaker":
        for play, data in _documents(config.speaker_plays).items():
            speeches = parse_speeches(data.decode("utf-8", errors="replace"))
            top = [s for s, _ in Counter(s.speaker for s in speeches).most_common()]
            top = top[: config.top_speakers]
            if not top:
                raise DataError(f"no speaker could be parsed from play {play!r}")
            labels = {}
            for speaker in top:
                labels[speaker] = len(classes)
                classes.append(f"{play.removesuffix('_gut')}:{speaker}")
            kept = [
                s
                for s in speeches
                if s.speaker in labels and len(s.text.encode()) >= config.min_speech_bytes
            ]
            for k, speech in enumerate(kept):
                split = _split_name(k, config.block_size)
                ids = encode(speech.text.encode("utf-8"))[: config.max_len]
                by_split[split].setdefault(labels[speech.speaker], []).append(ids)
    else:
        raise ConfigError(f"unknown finetune task {name!r} (known: {', '.join(TASKS)})")
    rng = random.Random(config.split_seed)
    return ClassificationTask(
        name=name,
        classes=classes,
        train=_cap(by_split["train"], config.max_train_per_class, rng),
        valid=_cap(by_split["valid"], config.max_eval_per_class, rng),
        test=_cap(by_split["test"], config.max_eval_per_class, rng),
    )


def build_tasks(config: FinetuneConfig, *, tokenizer: Any) -> dict[str, ClassificationTask]:
    """Every configured task, tokenized with ``tokenizer`` (the pre-training runs' own)."""

    def encode(data: bytes) -> list[int]:
        return [int(i) for i in tokenizer.encode(data)]

    return {name: build_task(name, config, encode=encode) for name in config.tasks}
