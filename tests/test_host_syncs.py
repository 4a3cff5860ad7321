"""No host sync in the segment loop: every model, every strategy of the driver, and stream.

A host sync is any read of a tensor's values by Python (``.item()``, ``.tolist()``,
``bool(t)``, ``int(t)``) or an op whose output shape depends on the data (``nonzero``,
``masked_select``, ``unique``, ...): on an accelerator each one waits for every kernel
queued before it. On CPU nothing waits, so the test counts the calls themselves: a
``TorchFunctionMode`` sees the Python-level reads (``tolist`` never reaches the
dispatcher), a ``TorchDispatchMode`` the aten ops, forward and backward.
"""

from __future__ import annotations

import traceback
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from memtx.models.protocol import concat_rows, select_rows
from memtx.recurrence import rollout, stream
from tests.models.small import SMALL, small_model, tokens

#: Python-level reads the dispatcher never sees (``item``, ``bool``, ``int`` ... reach it
#: as ``_local_scalar_dense``, counted below; counting both would count them twice)
READS = {"tolist", "numpy"}
#: aten ops that read values on the host or size their output by the data
DATA_DEPENDENT = {
    "_local_scalar_dense",
    "item",
    "is_nonzero",
    "equal",
    "nonzero",
    "nonzero_static",
    "masked_select",
    "unique",
    "_unique",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "repeat_interleave",
    "argwhere",
}


class HostSyncs(TorchFunctionMode):
    """Counts host syncs (see the module docstring); ``where`` says what made each one."""

    def __init__(self) -> None:
        super().__init__()
        self.where: list[str] = []
        self._dispatch = _DispatchCounter(self.where)

    def __enter__(self) -> HostSyncs:
        super().__enter__()
        self._dispatch.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._dispatch.__exit__(*exc)
        super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if getattr(func, "__name__", "") in READS:
            self.where.append(f"{func.__name__} at {_caller()}")
        return func(*args, **(kwargs or {}))


class _DispatchCounter(TorchDispatchMode):
    def __init__(self, where: list[str]) -> None:
        super().__init__()
        self.where = where

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func.overloadpacket.__name__ in DATA_DEPENDENT:
            self.where.append(f"aten.{func.overloadpacket.__name__} at {_caller()}")
        return func(*args, **(kwargs or {}))


def _caller() -> str:
    """The innermost memtx frame of the current stack, as ``file:line``."""
    frames = [f for f in traceback.extract_stack() if "/memtx/" in f.filename]
    return f"{frames[-1].filename.split('/memtx/')[-1]}:{frames[-1].lineno}" if frames else "?"


def _loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def _rollout(model: Any, data: torch.Tensor, memory: Any, **options: Any) -> Any:
    """The driver over ``data`` [B, N + 1] (inputs and next-token targets)."""
    return rollout(model, data[:, :-1], data[:, 1:], memory, loss_fn=_loss, **options)


def _mixed_start(model: Any, memory: Any, batch: int) -> Any:
    """``memory`` with row 0 starting a new stream: a batch mixing both kinds of rows."""
    fresh = model.init_memory(batch)
    return concat_rows([select_rows(fresh, 0, 1), select_rows(memory, 1, batch)])


MODELS = list(SMALL)
STRATEGIES = [("full", 1), ("truncated", 2), ("mrbp", 1)]


@pytest.mark.parametrize("key", MODELS)
@pytest.mark.parametrize(("strategy", "truncate"), STRATEGIES)
def test_training_rollouts_make_no_host_sync(key: str, strategy: str, truncate: int) -> None:
    """Two rollouts (a fresh memory, then a carried one with a row restarting) over three
    full segments and a short one, backward included: zero host syncs."""
    model = small_model(key).train()
    batch, seg = 3, model.config.segment_len
    data = tokens(batch, 3 * seg + 4)
    options = {"strategy": strategy, "truncate": truncate}
    with HostSyncs() as syncs:
        first = _rollout(model, data, model.init_memory(batch), **options)
        _rollout(model, data, _mixed_start(model, first.memory, batch), **options)
    assert syncs.where == []
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("key", MODELS)
def test_evaluation_and_stream_make_no_host_sync(key: str) -> None:
    """``rollout(backward=False)`` and :func:`stream`, in eval mode: zero host syncs."""
    model = small_model(key).eval()
    batch, seg = 2, model.config.segment_len
    data = tokens(batch, 2 * seg + 3)
    with HostSyncs() as syncs:
        result = _rollout(model, data, model.init_memory(batch), backward=False)
        memory = _mixed_start(model, result.memory, batch)
        outputs = [out for _, out in stream(model, data, memory)]
    assert syncs.where == []
    assert len(outputs) == 3


def test_the_counter_sees_every_kind_of_sync() -> None:
    """The counter itself: each way of reading a value is counted once."""
    values = torch.tensor([0, 3, 0])
    with HostSyncs() as syncs:
        values.tolist()
        bool(values[1])
        values.nonzero()
        torch.equal(values, values)
        values[1].item()
    kinds = [entry.split(" ")[0] for entry in syncs.where]
    assert kinds.count("tolist") == 1
    assert kinds.count("aten._local_scalar_dense") == 2  # bool() and .item()
    assert {"aten.nonzero", "aten.equal"} <= set(kinds)


@pytest.mark.parametrize("key", ["memformer", "rmt", "armt"])
def test_with_dropout_the_only_read_is_the_rollouts_seed(key: str) -> None:
    """With dropout the driver draws one seed per rollout from the CPU generator (a host
    tensor: nothing waits for a device); the segments themselves read nothing."""
    model = small_model(key, dropout=0.1).train()
    batch, seg = 2, model.config.segment_len
    data = tokens(batch, 3 * seg + 1)
    with HostSyncs() as syncs:
        for strategy in ("full", "mrbp"):
            _rollout(model, data, model.init_memory(batch), strategy=strategy)
    assert len(syncs.where) == 2
    assert all("recurrence.py" in entry for entry in syncs.where)
