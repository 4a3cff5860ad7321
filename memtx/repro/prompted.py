"""A zero-shot reference for ``memtx repro pretrained``: the bare instruct model asked in words.

BABILong scores a bare LLM this way: the whole input in a prompt with an instruction, a
greedy answer generated, right when the target is the only candidate label in the
answer's first sentence (:func:`~memtx.data.tasks.babilong_reader.babilong_correct`). The
memory models are scored by teacher-forced exact match of the answer word in their own
format (``... Where is Mary? bathroom``), which an instruct model was never taught, so that
score gives the bare SmolLM2-Instruct 0 at every length; asked in words, it can answer.
Over the whole input at once (full attention) this is the zero-shot ceiling while the
input fits in the model's positions.

The instructions are ours, in the spirit of BABILong's (its prompts also hold worked
examples, left out here: a 135M model copies them).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import torch

from memtx.data.tasks.babilong import LABELS
from memtx.data.tasks.babilong_reader import babilong_correct

__all__ = ["INSTRUCTIONS", "Question", "ask", "prompt", "prompted_accuracy", "questions"]

_PEOPLE = (
    "I will give you a context with facts about where different people are, hidden in "
    "some unrelated text, and a question. Answer the question using only those facts."
)
#: what the model is told, per task
INSTRUCTIONS: dict[str, str] = {
    "qa1": _PEOPLE + " If a person was in several places, the latest one is the answer. "
    "Answer with the place only, in one word.",
    "qa2": _PEOPLE + " People pick up, carry and drop objects; an object is where the "
    "person who last held it is. Answer with the place only, in one word.",
    "qa3": _PEOPLE + " People pick up, carry and drop objects. The question asks where an "
    "object was before it reached a place. Answer with the place only, in one word.",
    "qa4": "I will give you a context with facts about how places lie relative to each "
    "other, hidden in some unrelated text, and a question. Answer using only those facts, "
    "with the place only, in one word.",
    "qa5": "I will give you a context with facts about people giving objects to each "
    "other, hidden in some unrelated text, and a question. Answer using only those facts, "
    "with one word: a person or an object.",
}
#: the end of the text before the question: a sentence end and the spaces after it
_SENTENCE_END = re.compile(r"[.!?]\s+")


@dataclass(frozen=True)
class Question:
    """One held-out sample in words: the context (background and facts), the question, the
    answer."""

    context: str
    question: str
    target: str


def questions(task: Any, tokenizer: Any, *, samples: int, seed: int) -> list[Question]:
    """``task``'s first ``samples`` samples for ``seed``, decoded to words.

    Drawn one at a time from a generator seeded with ``seed``, as
    :func:`~memtx.evaluate.evaluate_task` draws them at batch size 1, so they are the
    samples of the full-attention cells.
    """
    generator = torch.Generator().manual_seed(seed)
    found = []
    for _ in range(samples):
        sample = task.sample(1, generator=generator)
        scored = sample.answer_mask[0]  # (N,): targets j are tokens j + 1
        first = int(scored.nonzero()[0])
        text = tokenizer.decode(sample.inputs[0, : first + 1].tolist()).strip()
        target = tokenizer.decode(sample.targets[0][scored].tolist()).strip()
        ends = list(_SENTENCE_END.finditer(text[:-1]))
        cut = ends[-1].end() if ends else 0
        found.append(Question(text[:cut].strip(), text[cut:].strip(), target))
    return found


def prompt(question: Question, *, qa: str) -> str:
    """The user message for ``question`` of task ``qa``."""
    return (
        f"{INSTRUCTIONS[qa]}\n\n<context>\n{question.context}\n</context>\n\n"
        f"Question: {question.question}"
    )


def ask(hf: Any, tokenizer: Any, text: str, *, max_new_tokens: int = 16) -> str:
    """The greedy answer of the causal LM ``hf`` to ``text``, in its chat template if its
    tokenizer (a :class:`~memtx.data.tokenizers.PretrainedTokenizer`) has one, else after
    ``"Answer:"``."""
    inner = tokenizer.hf
    if getattr(inner, "chat_template", None):
        encoded = inner.apply_chat_template(
            [{"role": "user", "content": text}],
            add_generation_prompt=True,
            return_dict=True,
            return_tensors="pt",
        )
        ids = encoded["input_ids"]  # (1, T)
    else:
        ids = torch.as_tensor(tokenizer.encode(f"{text}\nAnswer:").astype("int64"))[None]
    eos = tokenizer.eos_id
    with torch.no_grad():
        out = hf.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=eos if eos is not None else 0,
        )
    return str(inner.decode(out[0, ids.shape[1] :].tolist(), skip_special_tokens=True))


def prompted_accuracy(
    hf: Any, tokenizer: Any, task: Any, *, qa: str, samples: int, seed: int
) -> dict[str, Any]:
    """The share of ``task``'s held-out samples that ``hf`` answers right when asked in words
    (BABILong's rule), with the first three answers as examples."""
    asked = questions(task, tokenizer, samples=samples, seed=seed)
    began = time.perf_counter()
    answers = [ask(hf, tokenizer, prompt(q, qa=qa)) for q in asked]
    right = [
        babilong_correct(a, q.target, q.question, LABELS[qa])
        for a, q in zip(answers, asked, strict=True)
    ]
    return {
        "exact_match": sum(right) / len(right),
        "token_accuracy": None,
        "rule": "babilong",
        "examples": [
            {"question": q.question, "target": q.target, "answer": a}
            for q, a in zip(asked[:3], answers[:3], strict=True)
        ],
        "seconds": time.perf_counter() - began,
    }
