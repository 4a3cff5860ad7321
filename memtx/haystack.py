"""Memory at work: one bAbI story hidden in a haystack of real text, answered from memory.

:func:`answer_haystack` builds one BABILong-style row (:class:`memtx.data.tasks.BabilongTask`:
the story's facts at sentence starts of held-out text, the question last), reads everything
before the answer into a trained model's memory in chunks (:func:`memtx.reading.read`:
constant memory whatever the length), then generates the answer greedily. ``memtx demo``
runs it with :data:`DEMO_RUN`, a small ARMT shipped in the package (its ``MADE_BY.md``
holds the command and seed that trained it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from memtx.errors import ConfigError
from memtx.generate import Generation, Sampler
from memtx.models.protocol import SegmentModel, memory_nbytes
from memtx.progress import progress_bar
from memtx.reading import read, start_context

__all__ = ["DEMO_RUN", "HaystackAnswer", "answer_haystack", "memory_demo"]

#: the run ``memtx demo`` answers from: config, tokenizer and one checkpoint
DEMO_RUN = Path(__file__).resolve().parent / "assets" / "babilong-qa1-armt"


@dataclass(frozen=True)
class HaystackAnswer:
    """One haystack read and answered.

    Attributes:
        facts: the story's sentences, in the order they were hidden.
        question: the question asked after the haystack.
        expected: the answer the story implies.
        answer: the label the model's greedy continuation starts with ("" when none).
        output: the continuation itself.
        tokens_read: tokens streamed into the memory (the haystack and the question).
        seconds: wall time of the read and the answer.
        memory_bytes: size of the memory that held the story, per stream.
    """

    facts: tuple[str, ...]
    question: str
    expected: str
    answer: str
    output: str
    tokens_read: int
    seconds: float
    memory_bytes: int

    @property
    def correct(self) -> bool:
        return self.answer == self.expected

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_read / max(self.seconds, 1e-9)


def answer_haystack(
    model: SegmentModel,
    *,
    background: np.ndarray,
    length: int,
    seed: int,
    qa: str = "qa1",
    chunk: int = 1 << 16,
    progress: bool = True,
) -> HaystackAnswer:
    """Hide one ``qa`` story in ``length`` tokens of ``background`` (byte tokens of real
    text), read it into ``model``'s memory and answer the question greedily.

    Raises:
        ConfigError: ``length`` not a positive multiple of the model's segment length, or
            too short for the story; a background without sentence ends.
    """
    from memtx.data.tasks import BabilongTask
    from memtx.data.tasks.babilong import LABELS

    segment_len = model.config.segment_len
    if length < segment_len or length % segment_len:
        raise ConfigError(f"length must be a positive multiple of {segment_len}, got {length}")
    task = BabilongTask(
        total_len=length,
        segments=length // segment_len,
        segment_len=segment_len,
        seed=seed,
        qa=qa,
        noise=background,
    )
    row, story = task.row(seed)
    answer_at, _ = task.answer_span(story)  # the answer's first byte
    prompt = torch.from_numpy(row[:answer_at].astype(np.int64))[None]
    began = time.perf_counter()
    context = start_context(model)
    with progress_bar(
        total=prompt.shape[1], desc="reading", unit="tok", unit_scale=True, disable=not progress
    ) as bar:
        for first in range(0, prompt.shape[1], chunk):
            piece = prompt[:, first : first + chunk]
            context = read(model, piece, context)
            bar.update(piece.shape[1])
    longest = max(len(label) for label in LABELS[qa])
    greedy = Generation(model, context, max_new_tokens=longest, sampler=Sampler(temperature=0))
    output = bytes(int(token) for token in torch.cat(list(greedy))).decode("ascii", "replace")
    seconds = time.perf_counter() - began
    found = [label for label in LABELS[qa] if output.startswith(label)]
    size = memory_nbytes(context.memory)
    return HaystackAnswer(
        facts=story.facts,
        question=story.question,
        expected=story.answer,
        answer=max(found, key=len) if found else "",
        output=output,
        tokens_read=context.tokens_read,
        seconds=seconds,
        memory_bytes=size,
    )


def memory_demo(
    *,
    run_dir: Path = DEMO_RUN,
    length: int = 1 << 20,
    seed: int = 7,
    progress: bool = True,
    echo=print,
) -> HaystackAnswer:
    """``memtx demo``'s second part: the shipped model finds one story in ``length`` tokens."""
    from memtx.data.tasks.backgrounds import eval_background, haystack_background
    from memtx.train import load_trained

    torch_threads = torch.get_num_threads()
    run, model = load_trained(run_dir, device="cpu")
    held_out, note = eval_background(run.data.corpus)
    background, note = haystack_background(held_out, note, length)
    echo(
        f"memory at work: {run.model.name} ({model.num_parameters() / 1e6:.2f}M parameters, "
        f"{run_dir.name}) reads one bAbI story hidden in {length:,} tokens of {note}, "
        f"then answers the question from its memory ({torch_threads} threads)"
    )
    result = answer_haystack(
        model, background=background, length=length, seed=seed, progress=progress
    )
    echo("  story: " + " ".join(result.facts))
    said = result.answer or f"no place ({result.output.strip()!r})"
    verdict = "right" if result.correct else "wrong"
    echo(f"  {result.question} -> {said} (the story says {result.expected}: {verdict})")
    echo(
        f"  read {result.tokens_read:,} tokens in {result.seconds:.1f} s "
        f"({result.tokens_per_s:,.0f} tokens/s); the memory that held the story: "
        f"{result.memory_bytes / 1024:.1f} KB"
    )
    return result
