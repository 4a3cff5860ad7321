"""Streaming generation with constant memory, for every model.

A prompt of any length is read segment by segment into the memory (by
:func:`memtx.recurrence.stream`, the one no-grad segment walk); tokens are then produced
inside the current segment with a key/value cache (the model's ``cached_decoder()``,
where it has one); when the segment is full it is committed to the memory with
``advance`` (for Memformer: encoded and written into the slots; for RMT: read and
written through the memory tokens, never with empty write slots appended to a partial
prompt) and a new segment starts. Models without a cached path are recomputed over the
current segment for each token, which gives the same tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from memtx.errors import DataError
from memtx.models.protocol import CachedDecoding, DecodeState, Memory, SegmentModel
from memtx.recurrence import stream

__all__ = ["Sampler", "generate", "generate_text"]


@dataclass(frozen=True)
class Sampler:
    """How the next token is chosen.

    Attributes:
        temperature: 0 means greedy (argmax); otherwise logits are divided by it.
        top_k: keep only the k most likely tokens (0: all).
        top_p: keep the smallest set whose probability reaches p (1.0: all).
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise DataError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise DataError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise DataError(f"top_p must be in (0, 1], got {self.top_p}")

    def __call__(self, logits: Tensor, generator: torch.Generator | None) -> Tensor:
        """Next token ids [B] from logits [B, V]."""
        if self.temperature == 0:
            return logits.argmax(dim=-1)
        logits = logits.float() / self.temperature
        if self.top_k:
            kth = torch.topk(logits, min(self.top_k, logits.shape[-1])).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True)
            probs = sorted_logits.softmax(-1)
            # Drop a token when the mass before it already reaches top_p.
            drop = probs.cumsum(-1) - probs >= self.top_p
            sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
        probs = logits.softmax(-1)
        return torch.multinomial(probs, 1, generator=generator)[:, 0]


class _Segment:
    """The segment being generated: its tokens, and either a KV cache or recomputation."""

    def __init__(self, model: SegmentModel, memory: Memory, *, use_cache: bool) -> None:
        self.model = model
        self.memory = memory
        self.decoder: CachedDecoding | None = model.cached_decoder() if use_cache else None
        self.tokens: Tensor | None = None
        self.state: DecodeState | None = None

    @property
    def length(self) -> int:
        return 0 if self.tokens is None else self.tokens.shape[1]

    def extend(self, tokens: Tensor) -> Tensor:
        """Append ``tokens`` [B, n]; return the logits at the last position [B, V]."""
        self.tokens = tokens if self.tokens is None else torch.cat([self.tokens, tokens], 1)
        if self.decoder is not None:
            if self.state is None:
                self.state = self.decoder.begin_decode(self.memory)
            logits, self.state = self.decoder.decode(tokens, self.state)
        else:
            logits = self.model.step(self.tokens, self.memory).logits
        return logits[:, -1]

    def commit(self) -> None:
        """Write the full segment into the memory and start an empty one."""
        assert self.tokens is not None
        self.memory = self.model.advance(self.tokens, self.memory)
        self.tokens, self.state = None, None


@torch.no_grad()
def generate(
    model: SegmentModel,
    prompt: Tensor,
    *,
    max_new_tokens: int,
    sampler: Sampler | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    on_tokens: Callable[[Tensor], bool | None] | None = None,
) -> Tensor:
    """Continue ``prompt`` [B, P] by ``max_new_tokens`` tokens; returns [B, P + new].

    Memory use does not grow with P or with the number of new tokens: only the current
    segment and the model's memory are held.

    Args:
        model: any segment model (used in eval mode).
        prompt: [B, P] token ids, P >= 1 (every model needs a token to predict from).
        max_new_tokens: how many tokens to add (>= 0).
        sampler: temperature / top-k / top-p (default: temperature 1).
        seed: seeds the sampling generator.
        use_cache: use the model's key/value cache inside a segment (same tokens as
            recomputation; False recomputes the segment for each token).
        on_tokens: called with each new token column [B]; returning True stops early.

    Raises:
        DataError: empty or malformed prompt, ``max_new_tokens`` < 0.
    """
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise DataError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if not isinstance(prompt, Tensor) or prompt.dim() != 2 or prompt.shape[1] == 0:
        shape = tuple(prompt.shape) if isinstance(prompt, Tensor) else type(prompt).__name__
        raise DataError(f"the prompt must hold at least one token, shape [batch, >=1]; got {shape}")
    sampler = sampler or Sampler()
    segment_len = model.config.segment_len
    device = prompt.device
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    was_training = model.training
    model.eval()
    try:
        memory = model.init_memory(prompt.shape[0], device=device)
        # The prompt: its full segments go into the memory; the rest (1 to segment_len
        # tokens, never none: its last position predicts the first new token) starts the
        # segment being generated, which grows until it is full and only then is committed.
        last = (prompt.shape[1] - 1) // segment_len * segment_len
        if last:
            for _, read in stream(model, prompt[:, :last], memory):
                memory = read.memory
        segment = _Segment(model, memory, use_cache=use_cache)
        logits = segment.extend(prompt[:, last:])
        out = [prompt]
        for _ in range(max_new_tokens):
            token = sampler(logits, generator)[:, None]  # (B, 1)
            out.append(token)
            if on_tokens is not None and on_tokens(token[:, 0]):
                break
            if segment.length == segment_len:
                segment.commit()
            logits = segment.extend(token)
    finally:
        model.train(was_training)
    return torch.cat(out, dim=1)


def generate_text(
    run_dir: Path,
    prompt: str,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop: Sequence[str] = (),
    stream: Callable[[str], None] | None = None,
) -> str:
    """Continue ``prompt`` with a trained run; text is streamed as it is produced.

    Generation ends after ``max_new_tokens`` tokens or when the text produced contains
    one of ``stop`` (the stop string is not included in the result).

    Raises:
        DataError: an empty prompt, ``max_new_tokens`` < 1, a seed torch cannot take, a
            bad sampling setting.
        ConfigError: a run folder without a checkpoint.
    """
    from memtx.data import load_tokenizer
    from memtx.train import load_trained

    if not prompt:
        raise DataError("the prompt is empty; give at least one character to continue from")
    sampler = Sampler(temperature=temperature, top_k=top_k, top_p=top_p)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise DataError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if seed is not None and not -(2**63) <= seed < 2**64:  # what torch.Generator accepts
        raise DataError(f"--seed must be in [-2**63, 2**64), got {seed}")
    _, model = load_trained(Path(run_dir))
    tokenizer = load_tokenizer(Path(run_dir))
    ids = torch.from_numpy(tokenizer.encode(prompt).astype("int64"))[None]
    ids = ids.to(next(model.parameters()).device)
    produced: list[int] = []
    shown = ""

    def on_tokens(column: Tensor) -> bool:
        nonlocal shown
        produced.append(int(column[0]))
        text = tokenizer.decode_bytes(produced).decode("utf-8", errors="ignore")
        hit = min((text.find(s) for s in stop if s and s in text), default=-1)
        visible = text[:hit] if hit >= 0 else text
        if stream is not None and len(visible) > len(shown):
            stream(visible[len(shown) :])
        shown = visible
        return hit >= 0

    generate(
        model, ids, max_new_tokens=max_new_tokens, sampler=sampler, seed=seed, on_tokens=on_tokens
    )
    return shown
