"""Streaming generation with constant time and memory per token, for every model.

A text of any length is first read into a :class:`memtx.reading.Context` (the memory
after every committed segment, plus the tokens of the unfinished one). Tokens are then
produced by a :class:`Generation`, an iterator that keeps nothing it has yielded: inside
the current segment with a key/value cache (the model's ``cached_decoder()``, where it has
one); when the segment is full it is committed to the memory with ``advance`` (for
Memformer: encoded and written into the slots; for RMT: read and written through the
memory tokens, never with empty write slots appended to a partial prompt) and a new
segment starts. Models without a cached path are recomputed over the current segment for
each token, which gives the same tokens.

Time and memory per token do not grow with the length read or generated: a context holds
at most ``segment_len`` pending tokens, :class:`TextDecoder` decodes UTF-8 incrementally
and searches stop strings in a window as long as the longest stop, and only
:func:`generate` / :func:`generate_text` (the returning APIs, for short outputs) keep
what they produce.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from memtx.errors import DataError
from memtx.models.protocol import CachedDecoding, DecodeState, Memory, SegmentModel
from memtx.reading import Context, eval_mode, read, start_context

if TYPE_CHECKING:
    from memtx.data.tokenizers import Tokenizer

__all__ = [
    "Generation",
    "Sampler",
    "TextDecoder",
    "decode_text",
    "generate",
    "generate_text",
]


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


# --------------------------------------------------------------------------- generation


class _Segment:
    """The segment being generated: its tokens, and either a KV cache or recomputation.

    The tokens are written into a buffer of ``segment_len`` columns (no copy of the
    segment per token); :attr:`tokens` is a view of the filled part.
    """

    def __init__(self, model: SegmentModel, memory: Memory, *, use_cache: bool) -> None:
        self.model = model
        self.memory = memory
        self.decoder: CachedDecoding | None = model.cached_decoder() if use_cache else None
        self._buffer: Tensor | None = None  # (B, segment_len) token ids
        self.length = 0
        self.state: DecodeState | None = None

    @property
    def tokens(self) -> Tensor | None:
        """The segment's tokens [B, length] (a view), or None while it is empty."""
        return None if self._buffer is None else self._buffer[:, : self.length]

    def extend(self, tokens: Tensor) -> Tensor:
        """Append ``tokens`` [B, n]; return the logits at the last position [B, V]."""
        if self._buffer is None:
            self._buffer = tokens.new_empty(tokens.shape[0], self.model.config.segment_len)
        end = self.length + tokens.shape[1]
        self._buffer[:, self.length : end] = tokens
        self.length = end
        if self.decoder is not None:
            if self.state is None:
                self.state = self.decoder.begin_decode(self.memory)
            logits, self.state = self.decoder.decode(tokens, self.state)
        else:
            logits = self.model.step(self._buffer[:, :end], self.memory).logits
        return logits[:, -1]

    def commit(self) -> None:
        """Write the full segment into the memory and start an empty one."""
        assert self.tokens is not None
        self.memory = self.model.advance(self.tokens, self.memory)
        self._buffer, self.length, self.state = None, 0, None


def _check_max_new_tokens(max_new_tokens: object) -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise DataError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")


class Generation(Iterator[Tensor]):
    """Tokens sampled one at a time after a context: iterate to get columns [B].

    Nothing yielded is kept: a generation of any length holds one segment and the memory.
    :attr:`context` is the context after everything yielded so far (the tokens yielded
    count as read), so a generation can be stopped, saved and continued.

    Args:
        model: any segment model (run in eval mode while a token is made).
        context: what was read; it must hold at least one pending token.
        max_new_tokens: how many tokens at most (>= 0).
        sampler: temperature / top-k / top-p (default: temperature 1).
        seed: seeds the sampling generator.
        use_cache: use the model's key/value cache inside a segment (same tokens as
            recomputation; False recomputes the segment for each token).

    Raises:
        DataError: an empty context, ``max_new_tokens`` < 0, a seed torch cannot take.
    """

    def __init__(
        self,
        model: SegmentModel,
        context: Context,
        *,
        max_new_tokens: int,
        sampler: Sampler | None = None,
        seed: int | None = None,
        use_cache: bool = True,
    ) -> None:
        _check_max_new_tokens(max_new_tokens)
        if context.pending.shape[1] == 0:
            raise DataError(
                "the prompt must hold at least one token (nothing was read to continue from)"
            )
        if seed is not None and not -(2**63) <= seed < 2**64:  # what torch.Generator accepts
            raise DataError(f"seed must be in [-2**63, 2**64), got {seed}")
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.sampler = sampler or Sampler()
        device = context.pending.device
        self.generator = (
            torch.Generator(device=device).manual_seed(seed) if seed is not None else None
        )
        self._segment = _Segment(model, context.memory, use_cache=use_cache)
        self._unfed: Tensor | None = context.pending  # read, not yet run through the model
        self._logits: Tensor | None = None
        self._tokens_read = context.tokens_read
        self.produced = 0

    def __next__(self) -> Tensor:
        if self.produced >= self.max_new_tokens:
            raise StopIteration
        with eval_mode(self.model):
            self._feed()
            assert self._logits is not None
            token = self.sampler(self._logits, self.generator)  # (B,)
        self._unfed = token[:, None]
        self.produced += 1
        self._tokens_read += 1
        return token

    def _feed(self) -> None:
        """Run the tokens read but not yet seen through the model (committing a full segment)."""
        if self._unfed is None:
            return
        if self._segment.length + self._unfed.shape[1] > self.model.config.segment_len:
            self._segment.commit()
        self._logits = self._segment.extend(self._unfed)
        self._unfed = None

    @property
    def context(self) -> Context:
        """The context after the tokens yielded so far (they count as read)."""
        segment, unfed = self._segment, self._unfed
        if unfed is not None and segment.length + unfed.shape[1] > self.model.config.segment_len:
            with eval_mode(self.model):
                segment.commit()
        parts = [tokens for tokens in (segment.tokens, unfed) if tokens is not None]
        return Context(segment.memory, torch.cat(parts, dim=1), self._tokens_read)


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

    The returning API, for short outputs; :class:`Generation` yields tokens without
    keeping them. Memory use does not grow with P: the prompt is read into the memory.

    Args:
        model: any segment model (used in eval mode).
        prompt: [B, P] token ids, P >= 1 (every model needs a token to predict from).
        max_new_tokens: how many tokens to add (>= 0).
        sampler: temperature / top-k / top-p (default: temperature 1).
        seed: seeds the sampling generator.
        use_cache: use the model's key/value cache inside a segment.
        on_tokens: called with each new token column [B]; returning True stops early.

    Raises:
        DataError: empty or malformed prompt, ``max_new_tokens`` < 0.
    """
    _check_max_new_tokens(max_new_tokens)
    if not isinstance(prompt, Tensor) or prompt.dim() != 2 or prompt.shape[1] == 0:
        shape = tuple(prompt.shape) if isinstance(prompt, Tensor) else type(prompt).__name__
        raise DataError(f"the prompt must hold at least one token, shape [batch, >=1]; got {shape}")
    context = read(
        model, prompt, start_context(model, batch_size=prompt.shape[0], device=prompt.device)
    )
    generation = Generation(
        model, context, max_new_tokens=max_new_tokens, sampler=sampler, seed=seed,
        use_cache=use_cache,
    )  # fmt: skip
    out = [prompt]
    for token in generation:
        out.append(token[:, None])
        if on_tokens is not None and on_tokens(token):
            break
    return torch.cat(out, dim=1)


# --------------------------------------------------------------------------- text


class TextDecoder:
    """Token ids to text piece by piece, in constant time and memory per token.

    UTF-8 sequences split across tokens are decoded when complete (invalid bytes become
    U+FFFD). Text that may be the start of a stop string is held back until it is known
    not to be one, so what is shown never contains a stop; the search window is the
    held-back text plus the new piece, never longer than the longest stop plus a token.

    Args:
        tokenizer: turns one id into its bytes (``decode_bytes``).
        stop: strings that end the text (not included in it); empty ones are ignored.
    """

    def __init__(self, tokenizer: Tokenizer, *, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stops = tuple(s for s in stop if s)
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""
        self.stopped = False

    def push(self, token_id: int) -> str:
        """The text that can be shown after ``token_id`` (possibly ""); sets :attr:`stopped`."""
        if self.stopped:
            return ""
        return self._filter(self._utf8.decode(self.tokenizer.decode_bytes([token_id])))

    def finish(self) -> str:
        """What is still held back, at the end of generation."""
        if self.stopped:
            return ""
        text = self._filter(self._utf8.decode(b"", final=True))
        rest, self._held = self._held, ""
        return text + rest

    def _filter(self, text: str) -> str:
        window = self._held + text
        hits = [window.find(s) for s in self.stops if s in window]
        if hits:
            self.stopped, self._held = True, ""
            return window[: min(hits)]
        # Hold back the longest end of the window that begins some stop string.
        longest = max((len(s) - 1 for s in self.stops), default=0)
        hold = next(
            (
                n
                for n in range(min(longest, len(window)), 0, -1)
                if any(s.startswith(window[-n:]) for s in self.stops)
            ),
            0,
        )
        self._held = window[len(window) - hold :]
        return window[: len(window) - hold]


def decode_text(
    token_ids: Iterable[int], *, tokenizer: Tokenizer, stop: Sequence[str] = ()
) -> Iterator[str]:
    """Text pieces of ``token_ids`` (pulled lazily), ending at the first stop string."""
    decoder = TextDecoder(tokenizer, stop=stop)
    for token_id in token_ids:
        piece = decoder.push(token_id)
        if piece:
            yield piece
        if decoder.stopped:
            return
    rest = decoder.finish()
    if rest:
        yield rest


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
    memory: Path | None = None,
    save_memory: Path | None = None,
) -> str:
    """Continue ``prompt`` with a trained run; text is streamed as it is produced.

    Generation ends after ``max_new_tokens`` tokens or when the text produced contains
    one of ``stop`` (the stop string is not included in the result).

    Args:
        memory: a snapshot (``memtx read``) to continue from; the prompt is read after it
            and may then be empty.
        save_memory: write the context generation ends with (prompt and output read) as
            a snapshot there.

    Raises:
        DataError: an empty prompt without a memory, ``max_new_tokens`` < 1, a seed torch
            cannot take, a bad sampling setting, a snapshot of another model.
        ConfigError: a run folder without a checkpoint.
    """
    from memtx import snapshot
    from memtx.data import load_tokenizer
    from memtx.train import load_trained

    if not prompt and memory is None:
        raise DataError("the prompt is empty; give at least one character to continue from")
    sampler = Sampler(temperature=temperature, top_k=top_k, top_p=top_p)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise DataError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if seed is not None and not -(2**63) <= seed < 2**64:  # what torch.Generator accepts
        raise DataError(f"--seed must be in [-2**63, 2**64), got {seed}")
    _, model = load_trained(Path(run_dir))
    tokenizer = load_tokenizer(Path(run_dir))
    if memory is not None:
        saved = snapshot.load(memory, model=model, identity=snapshot.identify(model, run=run_dir))
        context = Context(saved.memory, saved.pending, saved.tokens_read)
    else:
        context = start_context(model, device=model.device)
    ids = torch.from_numpy(tokenizer.encode(prompt).astype("int64"))[None]
    context = read(model, ids, context)
    generation = Generation(
        model, context, max_new_tokens=max_new_tokens, sampler=sampler, seed=seed
    )
    pieces = []
    for piece in decode_text(
        (int(column[0]) for column in generation), tokenizer=tokenizer, stop=stop
    ):
        pieces.append(piece)
        if stream is not None:
            stream(piece)
    if save_memory is not None:
        identity = snapshot.identify(model, run=run_dir)
        snapshot.save(save_memory, model=model, context=generation.context, identity=identity)
    return "".join(pieces)
