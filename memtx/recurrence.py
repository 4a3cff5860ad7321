"""THE driver: walk a long sequence segment by segment, carry the memory, own the gradients.

Every model implements ``step(tokens, memory) -> StepOutput``; this module is the only
place that loops over segments. Gradient strategies are functions over that loop:

- ``full``: backpropagation through the whole rollout (all segments' activations kept).
- ``truncated`` (k): the memory is detached every k segments and each chunk of k
  segments is backpropagated on its own, so at most k segments' activations are kept.
- ``mrbp``: Memory Replay Back-Propagation (Memformer, Algorithm 1): a no-grad pass that
  keeps only each segment's input memory, then a replay from the last segment to the
  first, each recomputed with grad, backpropagating its own loss together with the
  memory gradient from the later segments. Exact gradients of ``full``, with one
  segment's activations in memory. Works for any model through the contract alone.

With dropout, every segment runs under its own RNG seed derived from one draw of the
global generator per rollout, so the replay of MRBP sees the same dropout masks as its
forward pass, and all three strategies see the same masks as each other.

No host sync: neither this loop nor any model's ``step`` reads a tensor's value on the
host (no ``.item()``, ``.tolist()``, ``bool(tensor)``, no shape that depends on the
data), so on an accelerator the host queues a whole rollout without waiting. Types and
shapes are checked on the host; values (token ids, a memory's lengths) on the device
(:func:`memtx.models.protocol.check_on_device`). The one read is the dropout seed, drawn
from the CPU generator (a host tensor). ``tests/test_host_syncs.py`` counts them.
``check_memory=True`` is the exception by request: one sync per segment.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from memtx.errors import ConfigError, DataError
from memtx.models.protocol import (
    Memory,
    SegmentModel,
    StepOutput,
    detach_memory,
    map_memory,
    memory_leaves,
)

StrategyName = Literal["full", "truncated", "mrbp"]
STRATEGIES: tuple[str, ...] = ("full", "truncated", "mrbp")

#: ``loss_fn(logits [B, L, V], targets [B, L]) -> scalar``: the caller decides the reduction
LossFn = Callable[[Tensor, Tensor], Tensor]

__all__ = [
    "STRATEGIES",
    "LossFn",
    "NonFiniteMemoryError",
    "RolloutResult",
    "check_strategy",
    "rollout",
    "split_segments",
    "stream",
]


def check_strategy(strategy: str, *, truncate: int = 1) -> None:
    """Raise :class:`ConfigError` for an unknown strategy or a truncation depth < 1."""
    if strategy not in STRATEGIES:
        raise ConfigError(
            f"unknown gradient strategy {strategy!r} (known: {', '.join(STRATEGIES)})"
        )
    if not isinstance(truncate, int) or truncate < 1:
        raise ConfigError(f"truncate must be an integer >= 1, got {truncate!r}")


def split_segments(tokens: Tensor, segment_len: int) -> list[Tensor]:
    """Cut [B, N] into views [B, segment_len] (the last one may be shorter)."""
    if segment_len < 1:
        raise ConfigError(f"segment_len must be >= 1, got {segment_len}")
    return list(tokens.split(segment_len, dim=1))


def _check_pair(inputs: Tensor, targets: Tensor | None) -> None:
    if not isinstance(inputs, Tensor) or inputs.dim() != 2 or inputs.numel() == 0:
        shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise DataError(f"inputs must be a non-empty tensor [batch, length], got {shape}")
    if targets is not None and (not isinstance(targets, Tensor) or targets.shape != inputs.shape):
        shape = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
        raise DataError(f"targets must have the inputs' shape {tuple(inputs.shape)}, got {shape}")


@contextlib.contextmanager
def _segment_rng(seed: int | None, index: int, device: torch.device) -> Iterator[None]:
    """Run one segment under its own seed (no-op when ``seed`` is None)."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
        torch.manual_seed(seed + index)
        yield


def _rollout_seed(model: SegmentModel) -> int | None:
    """One draw of the global generator per rollout when dropout is active, else None.

    The CPU generator's draw is a host tensor: reading it waits for no device.
    """
    training = getattr(model, "training", False)
    if training and getattr(model.config, "dropout", 0.0) > 0:
        return int(torch.randint(0, 2**62, (1,)).item())
    return None


@dataclass
class RolloutResult:
    """What a rollout returns.

    Attributes:
        loss: sum over segments of ``loss_fn``'s value (a detached scalar tensor).
        memory: the memory after the last segment, detached (for the next rollout).
        segments: how many segments were processed.
    """

    loss: Tensor
    memory: Memory
    segments: int


def rollout(
    model: SegmentModel,
    inputs: Tensor,
    targets: Tensor,
    memory: Memory,
    *,
    loss_fn: LossFn,
    strategy: str = "full",
    truncate: int = 1,
    segment_len: int | None = None,
    backward: bool = True,
    check_memory: bool = False,
) -> RolloutResult:
    """Process ``inputs`` [B, N] segment by segment and backpropagate ``sum(loss_fn)``.

    Gradients are accumulated into the parameters' ``.grad`` (the caller zeroes them and
    steps the optimizer). ``memory`` enters as given (pass it detached to start a new
    truncation window) and leaves detached.

    Args:
        model: any :class:`SegmentModel`.
        inputs: [B, N] token ids; N need not be a multiple of ``segment_len``.
        targets: [B, N] what each input position predicts (``-100`` = not scored).
        memory: the memory before the first segment.
        loss_fn: ``(logits [B, L, V], targets [B, L]) -> scalar``, applied per segment.
        strategy: ``"full"``, ``"truncated"`` or ``"mrbp"``.
        truncate: for ``"truncated"``, segments per backpropagation window.
        segment_len: defaults to ``model.config.segment_len``.
        backward: False computes only the loss (no gradients; evaluation).
        check_memory: check every segment's memory for NaN/inf and name the segment
            (a debugging aid: it costs a device sync per segment).

    Raises:
        ConfigError: unknown strategy or bad ``truncate``.
        DataError: inputs and targets of different shapes, or empty.
        NonFiniteMemoryError: with ``check_memory``, a memory with NaN or inf.
    """
    check_strategy(strategy, truncate=truncate)
    _check_pair(inputs, targets)
    segment_len = segment_len or model.config.segment_len
    xs, ys = split_segments(inputs, segment_len), split_segments(targets, segment_len)
    check = _check_finite if check_memory else None
    if not backward:
        with torch.no_grad():
            total, memory = _forward(model, xs, ys, memory, loss_fn=loss_fn, seed=None, check=check)
        return RolloutResult(total.detach(), detach_memory(memory), len(xs))
    seed = _rollout_seed(model)
    if strategy == "mrbp":
        total, memory = _mrbp(model, xs, ys, memory, loss_fn=loss_fn, seed=seed, check=check)
    else:
        window = len(xs) if strategy == "full" else truncate
        total = inputs.new_zeros((), dtype=torch.float32)
        for start in range(0, len(xs), window):
            memory = detach_memory(memory) if start else memory
            chunk, memory = _forward(
                model,
                xs[start : start + window],
                ys[start : start + window],
                memory,
                loss_fn=loss_fn,
                seed=seed,
                offset=start,
                check=check,
            )
            if chunk.requires_grad:
                chunk.backward()
            total = total + chunk.detach()
    return RolloutResult(total.detach(), detach_memory(memory), len(xs))


def _forward(
    model: SegmentModel,
    xs: list[Tensor],
    ys: list[Tensor],
    memory: Memory,
    *,
    loss_fn: LossFn,
    seed: int | None,
    offset: int = 0,
    check: Callable[[Memory, int], None] | None = None,
) -> tuple[Tensor, Memory]:
    """Sum of per-segment losses over ``xs`` with the graph kept (in grad mode)."""
    total: Tensor | None = None
    for index, (x, y) in enumerate(zip(xs, ys)):
        with _segment_rng(seed, offset + index, x.device):
            out = model.step(x, memory)
        if check is not None:
            check(out.memory, offset + index)
        loss = loss_fn(out.logits, y)
        total = loss if total is None else total + loss
        memory = out.memory
    assert total is not None
    return total, memory


def _mrbp(
    model: SegmentModel,
    xs: list[Tensor],
    ys: list[Tensor],
    memory: Memory,
    *,
    loss_fn: LossFn,
    seed: int | None,
    check: Callable[[Memory, int], None] | None = None,
) -> tuple[Tensor, Memory]:
    """Memory Replay Back-Propagation over one rollout (see the module docstring)."""
    # 1. Forward without grad along the critical path, keeping each segment's input memory.
    memories = [detach_memory(memory)]
    with torch.no_grad():
        for index, x in enumerate(xs):
            with _segment_rng(seed, index, x.device):
                memories.append(detach_memory(model.advance(x, memories[-1])))
            if check is not None:
                check(memories[-1], index)
    final_memory = memories.pop()

    # 2. Replay from the last segment to the first. ``grads`` holds dLoss/dM_{t+1} from
    #    every later segment; None where a leaf does not (yet) receive gradient.
    grads: list[Tensor | None] | None = None
    total = xs[0].new_zeros((), dtype=torch.float32)
    for index in range(len(xs) - 1, -1, -1):
        # The first segment's input memory came detached from the previous rollout: no
        # gradient is wanted for it.
        memory_in = map_memory(_requires_grad_if_float, memories[index]) if index else memories[0]
        with _segment_rng(seed, index, xs[index].device):
            out: StepOutput = model.step(xs[index], memory_in)
        loss = loss_fn(out.logits, ys[index])
        roots: list[Tensor] = [loss]
        root_grads: list[Tensor | None] = [None]
        if grads is not None:
            for leaf, grad in zip(memory_leaves(out.memory), grads):
                if grad is not None and leaf.requires_grad:
                    roots.append(leaf)
                    root_grads.append(grad)
        if any(root.requires_grad for root in roots):
            torch.autograd.backward(
                [r for r in roots if r.requires_grad],
                [g for r, g in zip(roots, root_grads) if r.requires_grad],
            )
        grads = [leaf.grad if leaf.requires_grad else None for leaf in memory_leaves(memory_in)]
        total = total + loss.detach()
        del out, loss, roots  # free this segment's graph before replaying the previous one
    return total, final_memory


class NonFiniteMemoryError(DataError):
    """A memory value with NaN or inf entries (found with ``check_memory``)."""


def _check_finite(memory: Memory, index: int) -> None:
    for position, leaf in enumerate(memory_leaves(memory)):
        if leaf.dtype.is_floating_point and not bool(torch.isfinite(leaf).all()):
            raise NonFiniteMemoryError(
                f"the memory after segment {index} has NaN or inf entries (leaf {position}, "
                f"shape {tuple(leaf.shape)})"
            )


def _requires_grad_if_float(tensor: Tensor) -> Tensor:
    leaf = tensor.detach()
    if leaf.dtype.is_floating_point:
        leaf.requires_grad_(True)
    return leaf


def stream(
    model: SegmentModel,
    tokens: Tensor,
    memory: Memory,
    *,
    segment_len: int | None = None,
) -> Iterator[tuple[int, StepOutput]]:
    """THE no-grad segment walk: yield ``(start, StepOutput)`` per segment of ``tokens`` [B, N].

    The memory is carried from segment to segment (each output holds the memory after
    its segment, so the last one's ``.memory`` is the memory after ``tokens``). Runs under
    ``torch.no_grad()``, so inputs of any length stream in memory that does not grow
    with N: evaluation, inspection, task scoring, generation's prompt reading, the repro
    commands and the benchmarks all walk segments through this one function.

    Args:
        model: any segment model (its train/eval mode is the caller's choice).
        tokens: [B, N] token ids, N >= 1 (need not be a multiple of ``segment_len``).
        memory: the memory before ``tokens``.
        segment_len: tokens per step (default: the model's ``segment_len``).

    Raises:
        DataError: ``tokens`` is not a non-empty [batch, length] tensor.
    """
    _check_pair(tokens, None)
    segment_len = segment_len or model.config.segment_len
    start = 0
    for piece in split_segments(tokens, segment_len):
        with torch.no_grad():
            out = model.step(piece, memory)
        memory = out.memory
        yield start, out
        start += piece.shape[1]
