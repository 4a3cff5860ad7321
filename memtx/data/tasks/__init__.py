"""Synthetic long-range tasks: copy, reverse, associative recall, facts in noise, BABILong.

Every task makes byte-level sequences (vocabulary 256, the same models and tokenizer as
text) of ``total_len`` input tokens, optionally cut into ``segments`` of ``segment_len``.
A sample is a language-modelling pair with teacher forcing: ``inputs`` [B, N] and
``targets`` [B, N] where ``targets[:, i]`` is the token that follows ``inputs[:, i]`` when
that token is part of the answer, and ``-100`` everywhere else. So a model's
``logits[:, i]`` is scored exactly on the answer tokens, and nowhere else.

- :mod:`~memtx.data.tasks.base`: :class:`TaskSample`, the :class:`Task` base class,
  the length checks and :func:`answer_accuracy`.
- :mod:`~memtx.data.tasks.synthetic`: ``copy``, ``reverse``, ``associative`` (layouts
  there).
- :mod:`~memtx.data.tasks.facts`: ``facts``, facts spliced into real text and a question.
- :mod:`~memtx.data.tasks.babilong`: ``babilong``, bAbI stories (``qa1`` .. ``qa5``) hidden
  in real text; :mod:`~memtx.data.tasks.babilong_reader`: BABILong's published files and
  its scoring rule.
- :mod:`~memtx.data.tasks.registry`: :data:`TASKS` and :func:`make_task`.

Where a task has a question (associative, facts, babilong), the question and its answer must fit in
one segment (the last): ``ConfigError`` otherwise. Every task is deterministic: the same
``seed`` gives the same samples.
"""

from __future__ import annotations

from memtx.data.tasks.babilong import QA_TASKS, BabilongTask, Story, make_story
from memtx.data.tasks.babilong_reader import (
    BabilongRecord,
    PublishedTask,
    babilong_correct,
    read_babilong,
)
from memtx.data.tasks.base import (
    IGNORE_INDEX,
    VOCAB_SIZE,
    Task,
    TaskSample,
    answer_accuracy,
    at_least,
    task_lengths,
)
from memtx.data.tasks.facts import NAMES, FactsTask
from memtx.data.tasks.registry import TASKS, make_task, task_vocabulary
from memtx.data.tasks.synthetic import (
    DIGITS,
    FILLER,
    QUESTION,
    SEPARATOR,
    SYMBOLS,
    AssociativeTask,
    CopyTask,
    ReverseTask,
)

__all__ = [
    "DIGITS",
    "FILLER",
    "IGNORE_INDEX",
    "NAMES",
    "QA_TASKS",
    "QUESTION",
    "SEPARATOR",
    "SYMBOLS",
    "TASKS",
    "VOCAB_SIZE",
    "AssociativeTask",
    "BabilongRecord",
    "BabilongTask",
    "CopyTask",
    "FactsTask",
    "PublishedTask",
    "ReverseTask",
    "Story",
    "Task",
    "TaskSample",
    "answer_accuracy",
    "babilong_correct",
    "at_least",
    "make_story",
    "make_task",
    "read_babilong",
    "task_lengths",
    "task_vocabulary",
]
