"""Several processes with PyTorch's own launcher: ``torchrun ... -m memtx train ...``.

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous; this module
joins the process group (gloo on CPU, nccl on GPU), and provides the three collective
steps the loop needs: average gradients, average a scalar, gather the carried memory.

Why the gradients are averaged with one ``all_reduce`` after the rollout instead of
DistributedDataParallel's backward hooks: a rollout makes several forward and backward
calls per optimizer step (truncated BPTT backpropagates once per window, MRBP once per
segment), and some parameters are unused in some segments (Memformer's encoder at the
start of a stream). DDP's reducer assumes one backward per synchronisation with every
parameter used; one flat all-reduce after the last backward is exact for every strategy
and costs one message per step.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from memtx.errors import ConfigError
from memtx.models.protocol import Memory, concat_rows, map_memory, memory_leaves

__all__ = ["DistContext", "average_gradients", "gather_memory", "mean", "setup", "teardown"]


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: ``rank`` of ``world_size``, on ``device``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def setup(device: torch.device, *, timeout_s: float | None = None) -> DistContext:
    """Join the process group when launched by torchrun; a no-op for one process.

    Args:
        device: the device asked for (``cuda`` becomes ``cuda:LOCAL_RANK``).
        timeout_s: how long collectives wait for a missing peer before failing
            (default ``$MEMTX_DIST_TIMEOUT`` or 300 s), so a dead rank stops the others.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(0, 1, 0, device)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = (
        timeout_s if timeout_s is not None else float(os.environ.get("MEMTX_DIST_TIMEOUT", 300))
    )
    if not dist.is_initialized():
        try:
            dist.init_process_group(
                backend, timeout=datetime.timedelta(seconds=timeout), device_id=None
            )
        except Exception as exc:  # the store or a peer cannot be reached
            raise ConfigError(
                f"cannot join the process group (rank {rank} of {world}, "
                f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}): {exc}"
            ) from None
    return DistContext(rank, world, local_rank, device)


def teardown(ctx: DistContext) -> None:
    if ctx.active and dist.is_initialized():
        dist.destroy_process_group()


def average_gradients(model: nn.Module, ctx: DistContext) -> None:
    """Average every parameter's gradient over the ranks (missing gradients count as 0)."""
    if not ctx.active:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])  # one message per step
    dist.all_reduce(flat)
    flat /= ctx.world_size
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def mean(value: float, ctx: DistContext) -> float:
    """The mean of a scalar over the ranks."""
    if not ctx.active:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(tensor)
    return float(tensor) / ctx.world_size


def gather_memory(memory: Memory, ctx: DistContext) -> Memory:
    """Every rank's memory rows stacked in rank order (the global batch's memory)."""
    if not ctx.active:
        return memory
    parts: list[Memory] = []
    leaves = memory_leaves(memory)
    gathered = []
    for leaf in leaves:
        buckets = [torch.empty_like(leaf) for _ in range(ctx.world_size)]
        dist.all_gather(buckets, leaf.contiguous())
        gathered.append(buckets)
    for rank in range(ctx.world_size):
        parts.append(_rebuild(memory, [g[rank] for g in gathered]))
    return concat_rows(parts)


def _rebuild(template: Memory, leaves: list[torch.Tensor]) -> Memory:
    """A memory shaped like ``template`` made of ``leaves`` (in :func:`memory_leaves` order)."""
    remaining = iter(leaves)
    return map_memory(lambda _: next(remaining), template)


def barrier(ctx: DistContext) -> None:
    if ctx.active:
        dist.barrier()
