"""The segment contract every model implements, and helpers that work on any memory value.

    step(tokens[B, L], memory) -> StepOutput(logits[B, L, V], memory', aux)

``logits[:, i]`` predicts the token that follows ``tokens[:, i]``. A memory is a tensor or
a NamedTuple of tensors: the driver detaches it, saves it and asks for its gradient
through :func:`memory_leaves` / :func:`map_memory` without knowing the model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from memtx.config import ModelConfig
from memtx.errors import DataError

Memory = Any  # a Tensor or a NamedTuple of Tensors; each model documents its own

_NO_AUX: Mapping[str, Tensor] = MappingProxyType({})


class StepOutput(NamedTuple):
    """What ``step`` returns.

    Attributes:
        logits: [B, L, vocab_size]; position i predicts the token after ``tokens[:, i]``.
        memory: the memory value to pass to the next segment.
        aux: extra tensors a model may expose (e.g. Memformer's writer attention).
    """

    logits: Tensor
    memory: Memory
    aux: Mapping[str, Tensor] = _NO_AUX


@runtime_checkable
class SegmentModel(Protocol):
    """A model of one segment and an explicit memory value."""

    config: ModelConfig
    #: whether gradients flow through the memory (False: stop-gradient, e.g. Transformer-XL)
    memory_carries_grad: bool
    #: train/eval mode (a model is an ``nn.Module``; dropout follows this flag)
    training: bool

    def init_memory(self, batch_size: int, *, device: torch.device | str | None = None) -> Memory:
        """The memory before the first segment, for ``batch_size`` streams."""
        ...

    def step(self, tokens: Tensor, memory: Memory) -> StepOutput:
        """Process one segment ``tokens`` [B, L] (L <= segment_len) given ``memory``."""
        ...

    def advance(self, tokens: Tensor, memory: Memory) -> Memory:
        """Only the next memory (the "critical path"; MRBP's no-grad pass uses it)."""
        ...

    def cached_decoder(self) -> CachedDecoding | None:
        """The model's cached decoding, or None where generation recomputes the segment."""
        ...

    def train(self, mode: bool = True) -> Any:
        """Set train (True) or eval (False) mode, as ``nn.Module.train``."""
        ...

    def eval(self) -> Any:
        """Set eval mode, as ``nn.Module.eval``."""
        ...


@dataclass
class DecodeState:
    """A segment being generated token by token (see ``begin_decode`` / ``decode``).

    Attributes:
        caches: per layer the self-attention's keys and values of the ``past`` positions:
            a :class:`memtx.modules.KVCache` (or a model's own (k, v), each [B, H, past,
            hd]); None: empty.
        length: tokens of the current segment decoded so far.
        context: what the decoder cross-attends to (Memformer's H), if anything.
        context_mask: its mask.
        extra: model-specific tensors (e.g. Transformer-XL's cache validity).
    """

    caches: list[Any]  # the model's: KVCache (memtx.modules' blocks), (k, v) or None
    length: int = 0
    context: Tensor | None = None
    context_mask: Tensor | None = None
    extra: dict[str, Tensor] = field(default_factory=dict)


class CachedDecoding(Protocol):
    """Generation inside a segment with a key/value cache: the logits of ``step``, cheaper.

    ``begin_decode(memory)`` starts an empty segment after ``memory``; each ``decode``
    appends tokens to it and returns their logits, equal to ``step``'s logits at those
    positions of the whole segment (the contract suite checks it). The segment is
    committed to the memory with the model's ``advance``, as without a cache.
    """

    def begin_decode(self, memory: Memory) -> DecodeState:
        """A segment of no tokens yet, reading ``memory``."""
        ...

    def decode(self, tokens: Tensor, state: DecodeState) -> tuple[Tensor, DecodeState]:
        """Logits [B, n, V] of ``tokens`` [B, n] appended to the segment, and its new state."""
        ...


def cache_mask(past: int, new: int, *, prefix: int = 0, device: torch.device) -> Tensor | None:
    """[new, prefix + past + new] bool: causal over the segment, all of a visible prefix.

    ``None`` when every key is visible (one new token), so SDPA can skip the mask.
    """
    if new == 1:
        return None
    query = prefix + past + torch.arange(new, device=device)[:, None]  # (n, 1)
    key = torch.arange(prefix + past + new, device=device)[None, :]  # (1, K)
    return (key <= query) | (key < prefix)


# --------------------------------------------------------------------------- memory helpers


def memory_leaves(memory: Memory) -> list[Tensor]:
    """The tensors a memory value is made of, in a fixed order."""
    if isinstance(memory, Tensor):
        return [memory]
    if isinstance(memory, tuple):
        return [leaf for item in memory for leaf in memory_leaves(item)]
    raise DataError(
        f"a memory must be a tensor or a NamedTuple of tensors, got {type(memory).__name__}"
    )


def memory_nbytes(memory: Memory) -> int:
    """Bytes the tensors of a memory value hold (all rows)."""
    return sum(leaf.numel() * leaf.element_size() for leaf in memory_leaves(memory))


def map_memory(fn: Callable[[Tensor], Tensor], memory: Memory) -> Memory:
    """Apply ``fn`` to every tensor of ``memory``, keeping its structure."""
    if isinstance(memory, Tensor):
        return fn(memory)
    if isinstance(memory, tuple):
        items = [map_memory(fn, item) for item in memory]
        return type(memory)(*items) if hasattr(memory, "_fields") else tuple(items)
    raise DataError(
        f"a memory must be a tensor or a NamedTuple of tensors, got {type(memory).__name__}"
    )


_BATCH_DIMS: dict[type, tuple[int, ...]] = {}


def register_batch_dims(memory_type: type, dims: tuple[int, ...]) -> None:
    """Declare where the batch sits in each leaf of ``memory_type`` (default: dim 0).

    Transformer-XL keeps DESIGN's ``[layers, B, mem_len, d]`` layout and registers
    ``(1, 0)``; every other memory is batch-first.
    """
    _BATCH_DIMS[memory_type] = dims


def memory_batch_dims(memory: Memory) -> list[int]:
    """The batch dimension of each leaf of ``memory``."""
    declared = _BATCH_DIMS.get(type(memory))
    return list(declared) if declared is not None else [0] * len(memory_leaves(memory))


def select_rows(memory: Memory, start: int, stop: int) -> Memory:
    """Rows ``[start, stop)`` of every leaf along its batch dimension."""
    dims = iter(memory_batch_dims(memory))
    return map_memory(lambda t: t.narrow(next(dims), start, stop - start), memory)


def concat_rows(memories: list[Memory]) -> Memory:
    """Stack memories of several row groups (e.g. one per rank) along the batch dimension."""
    dims = memory_batch_dims(memories[0])
    columns = [memory_leaves(m) for m in memories]
    leaves = iter(torch.cat([c[i] for c in columns], dim=dims[i]) for i in range(len(dims)))
    return map_memory(lambda _: next(leaves), memories[0])


def detach_memory(memory: Memory) -> Memory:
    """The same memory cut from the autograd graph.

    A leaf that is no part of a graph (``requires_grad`` False) is returned as it is, the
    same object, so what a model knows of it on the host (Memformer's mark on a fresh
    ``prev_len``) survives.
    """
    return map_memory(lambda t: t.detach() if t.requires_grad else t, memory)


def memory_state(memory: Memory, *, prefix: str = "memory") -> dict[str, Tensor]:
    """A flat ``{name: tensor}`` view of a memory, for safetensors."""
    return {
        f"{prefix}.{i}": leaf.detach().contiguous() for i, leaf in enumerate(memory_leaves(memory))
    }


def memory_from_state(
    template: Memory, state: Mapping[str, Tensor], *, prefix: str = "memory"
) -> Memory:
    """Rebuild a memory shaped like ``template`` from :func:`memory_state`'s output."""
    leaves = iter(state[f"{prefix}.{i}"] for i in range(len(memory_leaves(template))))
    return map_memory(lambda t: next(leaves).to(t.device), template)


# --------------------------------------------------------------------------- validation


def check_tokens(tokens: Any, *, vocab_size: int, segment_len: int | None = None) -> None:
    """Raise :class:`DataError` unless ``tokens`` is an integer tensor [B, L] of valid ids.

    Type and shape are checked on the host, the ids' range without a host sync
    (:func:`check_on_device`).
    """
    if not isinstance(tokens, Tensor):
        raise DataError(
            f"tokens must be a torch.LongTensor [batch, length], got {type(tokens).__name__}"
        )
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise DataError(f"tokens must be an integer tensor (torch.long), got dtype {tokens.dtype}")
    if tokens.dim() != 2:
        raise DataError(f"tokens must have shape [batch, length], got {tuple(tokens.shape)}")
    if tokens.numel() == 0:
        raise DataError(f"tokens must not be empty, got shape {tuple(tokens.shape)}")
    if segment_len is not None and tokens.shape[1] > segment_len:
        raise DataError(
            f"a segment holds at most segment_len={segment_len} tokens, got {tokens.shape[1]}; "
            "use memtx.recurrence to walk longer inputs"
        )
    low, high = torch.aminmax(tokens)
    check_on_device(
        (low >= 0) & (high < vocab_size),
        lambda: f"token id {_outlier(low, high)} is out of range [0, {vocab_size})",
    )


def check_on_device(ok: Tensor, message: Callable[[], str]) -> None:
    """Raise :class:`DataError` with ``message()`` unless ``ok`` (a bool scalar) is True.

    Never waits for the device: the check is ``torch._assert_async``. On CPU it fails at
    once and raises the ``DataError``; on an accelerator it is a device-side assert, which
    surfaces at the next sync as PyTorch's own "device-side assert triggered" error
    (as an out-of-range embedding index would); run on CPU, or with
    ``CUDA_LAUNCH_BLOCKING=1``, for the message. Compiled (``torch.compile``) it is an
    assert in the graph. ``message`` runs only on failure, so it may read values.
    """
    if ok.device.type != "cpu" or torch.compiler.is_compiling():
        torch._assert_async(ok)
        return
    try:
        torch._assert_async(ok, "memtx input check")
    except RuntimeError:
        raise DataError(message()) from None


def _outlier(low: Tensor, high: Tensor) -> int:
    """The id to name in the error: the minimum when negative, else the maximum."""
    return int(low) if int(low) < 0 else int(high)


def check_memory_type(memory: Any, expected: type, *, model: str) -> None:
    """Raise unless ``memory`` is of the model's own memory type."""
    if not isinstance(memory, expected):
        raise DataError(
            f"{model} expects a memory of type {expected.__name__} (from its init_memory or step), "
            f"got {type(memory).__name__}"
        )


def check_memory_tensor(
    value: Tensor,
    *,
    name: str,
    shape: tuple[int, ...],
    like: Tensor,
    dtype: torch.dtype | None = None,
) -> None:
    """Raise unless a memory tensor has ``shape``, ``dtype`` and ``like``'s device."""
    if not isinstance(value, Tensor):
        raise DataError(f"memory field {name} must be a tensor, got {type(value).__name__}")
    if tuple(value.shape) != tuple(shape):
        raise DataError(
            f"memory field {name} must have shape {tuple(shape)}, got {tuple(value.shape)}"
        )
    if dtype is not None and value.dtype != dtype:
        raise DataError(f"memory field {name} must have dtype {dtype}, got {value.dtype}")
    if value.device != like.device:
        raise DataError(
            f"memory field {name} is on {value.device}, but the tokens are on {like.device}"
        )


class SegmentLM(nn.Module):
    """Shared plumbing of every model here: validation, ``advance``, the decoder declaration.

    Subclasses implement ``init_memory``, ``step`` and, when cheaper than ``step``,
    ``advance``; a model with cached generation returns itself (or a helper) from
    :meth:`cached_decoder`.
    """

    config: ModelConfig
    memory_carries_grad: bool = True
    #: the parameters that make the memory (names, or prefixes ending in "."): what
    #: ``train.trainable = "memory"`` trains around a frozen backbone; () = none
    memory_parameters: tuple[str, ...] = ()

    if TYPE_CHECKING:  # every subclass defines these (the SegmentModel contract)

        def init_memory(
            self, batch_size: int, *, device: torch.device | str | None = None
        ) -> Memory: ...

        def step(self, tokens: Tensor, memory: Memory) -> StepOutput: ...

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config

    def init_weights(self) -> None:
        """Every submodule's init, by ``config.init`` (see :func:`init_weights`)."""
        init_weights(self, scheme=self.config.init, embed_std=self.config.embed_std)

    def check_tokens(self, tokens: Any) -> None:
        check_tokens(tokens, vocab_size=self.config.vocab_size, segment_len=self.config.segment_len)

    def cached_decoder(self) -> CachedDecoding | None:
        """The model's cached decoding; None (the default): generation recomputes segments."""
        return None

    @property
    def can_decode(self) -> bool:
        """Whether :meth:`cached_decoder` gives generation with a KV cache."""
        return self.cached_decoder() is not None

    def check_decode(self, tokens: Any, state: DecodeState) -> None:
        """Validate tokens appended to a segment being generated."""
        self.check_tokens(tokens)
        if state.length + tokens.shape[1] > self.config.segment_len:
            raise DataError(
                f"the segment holds {state.length} tokens; {tokens.shape[1]} more exceed "
                f"segment_len={self.config.segment_len}"
            )

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def advance(self, tokens: Tensor, memory: Memory) -> Memory:
        """The next memory; models with a cheaper critical path override this."""
        return self.step(tokens, memory).memory

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class TiedLM(SegmentLM):
    """A :class:`SegmentLM` with a token embedding and an output head after a LayerNorm:
    the embedding itself (``config.tie_embeddings``, the default) or ``head``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.embed_dropout = nn.Dropout(config.dropout)
        self.ln_out = nn.LayerNorm(config.d_model)
        self.head = output_head(config)

    def embed_tokens(self, tokens: Tensor) -> Tensor:
        """[B, L] ids -> [B, L, d]."""
        return self.embed_dropout(self.embed(tokens))

    def logits(self, hidden: Tensor) -> Tensor:
        """[B, L, d] -> [B, L, V] through the final LayerNorm and the head."""
        return head_logits(self.ln_out(hidden), self.embed, self.head)

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device


def output_head(config: ModelConfig) -> nn.Linear | None:
    """The output head of its own [V, d] when ``config.tie_embeddings`` is False, else None
    (the token embedding is the head)."""
    if config.tie_embeddings:
        return None
    return nn.Linear(config.d_model, config.vocab_size, bias=False)


def head_logits(hidden: Tensor, embed: nn.Embedding, head: nn.Linear | None) -> Tensor:
    """[..., d] normalised hidden states -> [..., V] logits: ``head``, or the tied embedding."""
    return hidden @ (embed.weight if head is None else head.weight).t()


INIT_STD = 0.02  # GPT-2's: matrices under ``"gpt2"``, and embeddings unless ``embed_std`` says


def init_weights(module: nn.Module, *, scheme: str = "gpt2", embed_std: float = INIT_STD) -> None:
    """Init every submodule of ``module``: embeddings N(0, embed_std) and biases zero;
    matrices N(0, 0.02) (``"gpt2"``) or N(0, 1 / sqrt(3 fan_in)) (``"fan_in"``, the spread
    of PyTorch's default ``nn.Linear`` init, GPT-2's 0.02 at its width of 768)."""
    if scheme not in ("gpt2", "fan_in"):
        raise ValueError(f"unknown init scheme {scheme!r} (known: gpt2, fan_in)")
    for part in module.modules():
        if isinstance(part, nn.Linear):
            std = INIT_STD if scheme == "gpt2" else (3 * part.in_features) ** -0.5
            nn.init.normal_(part.weight, std=std)
            if part.bias is not None:
                nn.init.zeros_(part.bias)
        elif isinstance(part, nn.Embedding):
            nn.init.normal_(part.weight, std=embed_std)
