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
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import nn

from memtx.errors import ConfigError
from memtx.models.protocol import Memory, concat_rows, map_memory, memory_leaves

__all__ = [
    "DistContext",
    "average_gradients",
    "full_training_state",
    "gather_memory",
    "load_full_training_state",
    "mean",
    "setup",
    "shard_model",
    "teardown",
]


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


# --------------------------------------------------------------------------- FSDP2


def shard_model(model: nn.Module) -> None:
    """FSDP2 (``fully_shard``): each transformer block, then the whole model.

    The driver calls ``step`` and ``advance`` (and the loop ``init_memory``) rather than
    ``forward``, so those are registered as forward methods: FSDP gathers the parameters
    around each call and frees them after.
    """
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    from memtx.models.transformer_xl import RelativeAttentionLayer
    from memtx.modules import Block

    for module in list(model.modules()):
        if isinstance(module, (Block, RelativeAttentionLayer)):
            fully_shard(module)
    fully_shard(model)
    for name in ("step", "advance", "init_memory"):
        register_fsdp_forward_method(model, name)


def _parameter_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Parameter names in the optimizer's own order (what its state-dict indices count)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def full_training_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, *, sharded: bool
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Full (unsharded) model weights and optimizer state, as one process would hold them.

    With FSDP this is a collective (every rank must call it); the optimizer state comes
    back keyed by index, so a checkpoint written by N sharded processes loads in one.
    """
    if not sharded:
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights: Any = get_model_state_dict(model, options=options)  # torch's loose value types
    by_name: Any = get_optimizer_state_dict(model, optimizer, options=options)
    index = {name: i for i, name in enumerate(_parameter_names(model, optimizer))}
    state = {index[name]: value for name, value in by_name.get("state", {}).items()}
    groups = [
        {**group, "params": [index[name] for name in group["params"]]}
        for group in by_name.get("param_groups", [])
    ]
    return weights, {"state": state, "param_groups": groups}


def load_full_training_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    weights: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    *,
    sharded: bool,
) -> None:
    """Load full weights and index-keyed optimizer state (into a sharded model if FSDP)."""
    if not sharded:
        model.load_state_dict(weights)
        optimizer.load_state_dict(optimizer_state)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, cast(Any, weights), options=options)
    names = _parameter_names(model, optimizer)
    by_name: Any = {
        "state": {names[int(i)]: value for i, value in optimizer_state["state"].items()},
        "param_groups": [
            {**group, "params": [names[int(i)] for i in group["params"]]}
            for group in optimizer_state["param_groups"]
        ],
    }
    set_optimizer_state_dict(model, optimizer, optim_state_dict=by_name, options=options)
