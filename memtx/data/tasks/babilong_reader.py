"""BABILong's published files, and BABILong's scoring rule.

BABILong (Kuratov et al. 2024; github.com/booydar/babilong, Hugging Face
``RMT-team/babilong``) publishes, per task and length, rows of ``input`` (the background
with the facts), ``question`` and ``target`` (the answer): its generator writes a JSON
list of such rows (``qa1/4k.json``); exports of the Hugging Face dataset are JSON lines.
:func:`read_babilong` reads either; :class:`PublishedTask` turns the rows into byte-level
:class:`~memtx.data.tasks.base.TaskSample` batches laid out like our own generator's
(``[input] [question] [target]``, the target scored), so
:func:`memtx.evaluate.evaluate_task` scores a model on them unchanged.

:func:`babilong_correct` is BABILong's rule for generated text: an output is right when
the target is the only candidate label in it (labels named in the question do not count).
For a teacher-forced answer, exact match of the answer word (``evaluate_task``'s
``exact_match``) is the same judgement.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from memtx.data.tasks.babilong import LABELS, QA_TASKS
from memtx.data.tasks.base import IGNORE_INDEX, TaskSample
from memtx.errors import ConfigError, DataError

__all__ = ["BabilongRecord", "PublishedTask", "babilong_correct", "read_babilong"]

_FIELDS = ("input", "question", "target")


@dataclass(frozen=True)
class BabilongRecord:
    """One published BABILong row."""

    input: str
    question: str
    target: str


def read_babilong(path: str | Path) -> list[BabilongRecord]:
    """The rows of a BABILong file: a JSON list of rows, or JSON lines (one row a line).

    Raises:
        DataError: a missing or unreadable file, a row that is not an object with string
            fields ``input``, ``question`` and ``target``, or no rows.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read BABILong file {path}: {error}") from None
    try:
        stripped = text.lstrip()
        if stripped.startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is not JSON or JSON lines: {error}") from None
    records = []
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict) or any(not isinstance(row.get(f), str) for f in _FIELDS):
            raise DataError(
                f"{path}: row {number} must be an object with string fields "
                f"{', '.join(_FIELDS)}, got {str(row)[:80]}"
            )
        records.append(BabilongRecord(row["input"], row["question"], row["target"]))
    if not records:
        raise DataError(f"{path} has no rows")
    return records


class PublishedTask:
    """Published BABILong rows as byte-level batches, in file order, for ``evaluate_task``.

    Each row is the UTF-8 bytes of ``"{input} {question} {target}"``, the target scored;
    a batch is left-padded with spaces to its longest row, rounded up to whole segments.

    Args:
        records: the rows (:func:`read_babilong`).
        segment_len: the model's segment length.
    """

    name = "babilong-file"

    def __init__(self, records: Sequence[BabilongRecord], *, segment_len: int) -> None:
        if not records:
            raise DataError("a published BABILong task needs at least one row")
        if not isinstance(segment_len, int) or segment_len < 1:
            raise ConfigError(f"segment_len must be an integer >= 1, got {segment_len!r}")
        self.records = list(records)
        self.segment_len = segment_len
        self.next_row = 0

    def __len__(self) -> int:
        return len(self.records)

    def sample(
        self, batch_size: int, *, generator: torch.Generator | None = None, seed: int | None = None
    ) -> TaskSample:
        """The next ``batch_size`` rows (wrapping round); ``generator``/``seed`` are
        accepted for the task interface and not used: a file has one order."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size!r}")
        rows = [self.records[(self.next_row + i) % len(self.records)] for i in range(batch_size)]
        self.next_row = (self.next_row + batch_size) % len(self.records)
        encoded = [(f"{r.input} {r.question} ".encode(), r.target.strip().encode()) for r in rows]
        longest = max(len(head) + len(answer) for head, answer in encoded)
        inputs_len = -(-(longest - 1) // self.segment_len) * self.segment_len
        sequence = torch.full((batch_size, inputs_len + 1), ord(" "), dtype=torch.long)
        answer = torch.zeros_like(sequence, dtype=torch.bool)
        for row, (head, target) in enumerate(encoded):
            tokens = torch.tensor(list(head + target), dtype=torch.long)
            sequence[row, -len(tokens) :] = tokens
            answer[row, sequence.shape[1] - len(target) :] = True
        mask = answer[:, 1:]
        targets = sequence[:, 1:].masked_fill(~mask, IGNORE_INDEX)
        return TaskSample(sequence[:, :-1].contiguous(), targets.contiguous(), mask.contiguous())


def babilong_correct(
    output: str, target: str, question: str, labels: Sequence[str] | str = "qa1"
) -> bool:
    """BABILong's rule: ``target`` is the only candidate label in ``output``'s first sentence.

    Labels that the question names never count as predictions. As in BABILong's
    ``compare_answers``, matching is by lower-case substring, and a target of several
    comma-separated labels (qa8) needs exactly those.

    Args:
        output: the model's generated text.
        target: the right answer.
        question: the question asked.
        labels: the task's candidate answers, or a task name in :data:`LABELS`.
    """
    if isinstance(labels, str):
        if labels not in LABELS:
            raise ConfigError(f"unknown babilong task {labels!r} (known: {', '.join(QA_TASKS)})")
        labels = LABELS[labels]
    output = output.lower().split(".")[0]
    for stop in ("<context>", "<example>"):  # a model that goes on to write examples
        output = output.split(stop)[0]
    candidates = {label.lower() for label in labels}
    named = {label for label in candidates if label in question.lower()}
    found = {label for label in candidates if label in output} - named
    target = target.strip().lower()
    if "," in target and len(target) > 3:
        wanted = set(target.split(","))
        return wanted <= found and len(found) == len(wanted)
    return found == {target}
