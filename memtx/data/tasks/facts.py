"""Facts in noise: question answering about a few facts hidden in real text.

``num_facts`` facts ``"The key of NAME is 123. "`` about distinct names are spliced at
random places into a window of real text (``noise``: a 1-D uint8/uint16 array of byte
tokens, e.g. a corpus), then comes ``"What is the key of NAME? "`` about one of them, then
the answer (``value_len`` digits, the only scored tokens). The question and its answer
must fit in one segment (the last).

With a ``tokenizer`` (the run's BPE or a pretrained model's own, ``data.tokenizer =
"bpe"`` or ``"hf"``) the same sentences are that tokenizer's tokens, each piece encoded
on its own (fact, question, answer), the noise is text in its tokens, and the answer's
tokens are scored (as many as the tokenizer makes of the digits).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from memtx.data.tasks.base import VOCAB_SIZE, Task, at_least
from memtx.errors import ConfigError

__all__ = ["NAMES", "FactsTask"]

_NAMES = "Alice Bob Carol David Emma Frank Grace Henry Irene Jack Karen Leo Mona Nina Oscar Paul"
NAMES: tuple[str, ...] = tuple(f"{_NAMES} Quinn Rosa Sam Tina".split())


class FactsTask(Task):
    """Facts hidden in real text, a question at the end (see the module docstring).

    Args:
        noise: a 1-D array of byte tokens (numpy uint8/uint16, an integer tensor, or
            ``bytes``) of real text, longer than the noise window of a row.
        num_facts: facts per row (1..20), about distinct names.
        value_len: digits of each key (the answer).
        tokenizer: encode the text with it (``encode(str) -> ids``, ``vocab_size``)
            instead of as bytes; ``noise`` is then in its ids.
    """

    name = "facts"
    FACT = "The key of {name} is {value}. "
    QUESTION = "What is the key of {name}? "

    def __init__(
        self,
        *,
        total_len: int,
        segments: int,
        segment_len: int,
        seed: int,
        noise: Any = None,
        num_facts: int = 3,
        value_len: int = 3,
        tokenizer: Any = None,
    ) -> None:
        super().__init__(total_len=total_len, segments=segments, segment_len=segment_len, seed=seed)
        self.tokenizer = tokenizer
        self.vocab_size = VOCAB_SIZE if tokenizer is None else int(tokenizer.vocab_size)
        at_least(self.name, "num_facts", num_facts, 1)
        at_least(self.name, "value_len", value_len, 1)
        if num_facts > len(NAMES):
            raise ConfigError(
                f"task {self.name!r}: num_facts must be <= {len(NAMES)}, got {num_facts}"
            )
        self.num_facts, self.value_len = num_facts, value_len
        self.chance = 0.1
        self.answer_len = max(len(self._encode(str(d) * value_len)) for d in range(10))
        question_len = max(len(self._encode(self.QUESTION.format(name=n))) for n in NAMES)
        self._check_question_fits(question_len)
        fact_len = max(
            len(self._encode(self.FACT.format(name=n, value="0" * value_len))) for n in NAMES
        )
        needed = num_facts * fact_len + question_len + self.answer_len - 1
        if needed > total_len:
            raise ConfigError(
                f"task {self.name!r}: total_len ({total_len}) is too small for {num_facts} facts "
                f"and the question: it needs up to {needed} input tokens"
            )
        self.noise = _noise_tokens(noise, vocab_size=self.vocab_size)
        window = total_len  # the most noise a row can need (at least one answer token)
        if self.noise.numel() < window:
            raise ConfigError(
                f"task {self.name!r}: the noise has {self.noise.numel()} tokens, but a row "
                f"needs up to {window}"
            )

    @classmethod
    def vocabulary(cls) -> tuple[str, ...]:
        """The task's sentences about every name (without the digits), for a BPE
        tokenizer to learn its words from along with the corpus."""
        facts = (cls.FACT.format(name=name, value="").rstrip(". ") for name in NAMES)
        return (*facts, *(cls.QUESTION.format(name=name).strip() for name in NAMES))

    def _sequences(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        length = self.total_len + 1
        sequence = torch.empty(batch, length, dtype=torch.long)
        answer = torch.zeros(batch, length, dtype=torch.bool)
        for row in range(batch):
            names = torch.randperm(len(NAMES), generator=generator)[: self.num_facts].tolist()
            digits = torch.randint(0, 10, (self.num_facts, self.value_len), generator=generator)
            values = ["".join(str(d) for d in row_digits) for row_digits in digits.tolist()]
            asked = int(torch.randint(0, self.num_facts, (1,), generator=generator))
            facts = [
                self._encode(self.FACT.format(name=NAMES[n], value=v))
                for n, v in zip(names, values)
            ]
            question = self._encode(self.QUESTION.format(name=NAMES[names[asked]]))
            value = self._encode(values[asked])
            tail = torch.cat([question, value])
            noise_len = length - len(tail) - sum(len(f) for f in facts)
            last_start = self.noise.numel() - noise_len
            start = int(torch.randint(0, last_start + 1, (1,), generator=generator))
            noise = self.noise[start : start + noise_len]
            cuts = torch.randint(0, noise_len + 1, (self.num_facts,), generator=generator)
            pieces, previous = [], 0
            for cut, fact in zip(sorted(cuts.tolist()), facts):
                pieces += [noise[previous:cut], fact]
                previous = cut
            pieces += [noise[previous:], tail]
            sequence[row] = torch.cat(pieces)
            answer[row, -len(value) :] = True
        return sequence, answer

    def _encode(self, text: str) -> Tensor:
        """``text`` as a 1-D long tensor of bytes, or of the tokenizer's ids."""
        if self.tokenizer is None:
            return torch.tensor(list(text.encode("ascii")), dtype=torch.long)
        return torch.from_numpy(np.asarray(self.tokenizer.encode(text), dtype=np.int64))


def _noise_tokens(noise: Any, *, vocab_size: int = VOCAB_SIZE) -> Tensor:
    """A 1-D long tensor of byte tokens from the accepted noise types."""
    hint = "facts needs noise: a 1-D uint8/uint16 array of byte tokens of real text"
    if noise is None:
        raise ConfigError(f"{hint} (e.g. a corpus's bytes)")
    if isinstance(noise, (bytes, bytearray, memoryview)):
        tokens = torch.frombuffer(bytearray(noise), dtype=torch.uint8).long()
    elif isinstance(noise, np.ndarray):
        if noise.dtype.kind not in "ui":
            raise ConfigError(f"{hint}, got a numpy array of dtype {noise.dtype}")
        tokens = torch.from_numpy(noise.astype(np.int64))
    elif isinstance(noise, Tensor):
        if noise.dtype.is_floating_point or noise.dtype.is_complex or noise.dtype == torch.bool:
            raise ConfigError(f"{hint}, got a tensor of dtype {noise.dtype}")
        tokens = noise.detach().cpu().long()
    else:
        raise ConfigError(f"{hint}, got {type(noise).__name__}")
    if tokens.dim() != 1 or tokens.numel() == 0:
        raise ConfigError(f"{hint}, got shape {tuple(tokens.shape)}")
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= vocab_size:
        raise ConfigError(f"{hint}: token ids must be in [0, {vocab_size}), got {low}..{high}")
    return tokens
