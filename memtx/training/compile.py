"""``torch.compile`` of a model's segment step: static shapes, CUDA graphs where asked, timed.

The driver (:mod:`memtx.recurrence`) calls ``model.step`` once per segment and MRBP's
no-grad pass ``model.advance``; :func:`compile_segment_steps` replaces both on the model
(an instance attribute over the class's method), so every strategy, MRBP's replay
included, runs the compiled step, and nothing else changes.

- Static shapes (``dynamic=False``): one graph per segment shape. A rollout's full
  segments share one; the short last segment of an input that is not a multiple of
  ``segment_len`` compiles once more, and MRBP's no-grad pass once more (grad mode is
  part of the guard). Nothing in a step depends on the data (see
  ``tests/test_host_syncs.py``), so the graphs have no breaks for host reads.
- ``mode``: ``"default"``, ``"reduce-overhead"`` (CUDA graphs: on CUDA only; elsewhere it
  falls back to ``"default"``), ``"max-autotune"``, ... as ``torch.compile`` takes them.
  With CUDA graphs a replay overwrites the previous replay's outputs, so the memory a
  step returns is cloned before it leaves the compiled region (a copy of the memory per
  segment, not of the activations).
- The first call of each graph (compilation plus one run) is timed:
  :attr:`CompiledSteps.compile_seconds` and a ``logging`` line on ``memtx.compile``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from memtx.models.protocol import Memory, SegmentLM, StepOutput, map_memory

__all__ = ["CompiledSteps", "compile_segment_steps", "uses_cuda_graphs"]

LOG = logging.getLogger("memtx.compile")


def uses_cuda_graphs(mode: str, device: torch.device) -> bool:
    """Whether ``mode`` records CUDA graphs on ``device`` (``reduce-overhead`` on CUDA)."""
    return device.type == "cuda" and mode in ("reduce-overhead", "max-autotune")


@dataclass
class CompiledSteps:
    """What :func:`compile_segment_steps` did to a model.

    Attributes:
        mode: the ``torch.compile`` mode in use.
        cuda_graphs: whether the steps replay CUDA graphs.
        compile_seconds: per graph signature (function, segment shape, grad mode), the
            wall time of its first call: compilation plus one step.
    """

    mode: str
    cuda_graphs: bool
    compile_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def first_compile_seconds(self) -> float | None:
        """The first graph's compile time (None before the first call)."""
        return next(iter(self.compile_seconds.values()), None)


def compile_segment_steps(model: SegmentLM, *, mode: str = "default") -> CompiledSteps:
    """Compile ``model.step`` (and ``model.advance`` where the model overrides it) in place.

    Args:
        model: any segment model, already on its device.
        mode: a ``torch.compile`` mode (``"reduce-overhead"``: CUDA graphs on CUDA).

    Returns:
        The record of compile times (filled as graphs are first run).
    """
    device = model.device
    cuda_graphs = uses_cuda_graphs(mode, device)
    if mode == "reduce-overhead" and not cuda_graphs:
        mode = "default"  # CUDA graphs need CUDA; the rest of the mode is the default
    report = CompiledSteps(mode=mode, cuda_graphs=cuda_graphs)
    step = model.step
    own_advance = type(model).advance is not SegmentLM.advance

    def run_step(tokens: Tensor, memory: Memory) -> StepOutput:
        out = step(tokens, memory)
        if cuda_graphs:  # the next replay overwrites this one's outputs
            return StepOutput(out.logits, map_memory(torch.clone, out.memory), out.aux)
        return out

    compiled_step = torch.compile(run_step, mode=mode, dynamic=False)
    model.step = _timed(compiled_step, "step", report)  # type: ignore[method-assign]
    if own_advance:
        advance = model.advance

        def run_advance(tokens: Tensor, memory: Memory) -> Memory:
            new = advance(tokens, memory)
            return map_memory(torch.clone, new) if cuda_graphs else new

        compiled_advance = torch.compile(run_advance, mode=mode, dynamic=False)
        model.advance = _timed(compiled_advance, "advance", report)  # type: ignore[method-assign]
    return report


def _timed(fn: Callable[..., Any], name: str, report: CompiledSteps) -> Callable[..., Any]:
    """``fn`` that records the wall time of its first call for each new signature."""

    def call(tokens: Tensor, memory: Memory) -> Any:
        key = f"{name} {tuple(tokens.shape)} grad={torch.is_grad_enabled()}"
        if key in report.compile_seconds:
            return fn(tokens, memory)
        if tokens.device.type == "cuda":
            torch.cuda.synchronize(tokens.device)
        start = time.perf_counter()
        out = fn(tokens, memory)
        if tokens.device.type == "cuda":
            torch.cuda.synchronize(tokens.device)
        report.compile_seconds[key] = seconds = time.perf_counter() - start
        LOG.info("compiled %s (mode=%s) in %.1f s", key, report.mode, seconds)
        return out

    return call
