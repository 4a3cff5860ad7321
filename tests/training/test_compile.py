"""The compiled segment step: same losses and gradients as eager, graphs reused.

``torch.compile`` takes minutes on a CPU runner (about 80 s per graph on one contended
core here), so these tests run only with ``MEMTX_TEST_COMPILE=1``.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from memtx.recurrence import rollout
from memtx.training.compile import compile_segment_steps, uses_cuda_graphs
from tests.models.small import small_model, tokens

compiled = pytest.mark.skipif(
    os.environ.get("MEMTX_TEST_COMPILE") != "1",
    reason="torch.compile takes minutes on CPU: set MEMTX_TEST_COMPILE=1",
)


def _loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    return grads


def test_cuda_graphs_only_on_cuda() -> None:
    assert uses_cuda_graphs("reduce-overhead", torch.device("cuda"))
    assert not uses_cuda_graphs("reduce-overhead", torch.device("cpu"))
    assert not uses_cuda_graphs("default", torch.device("cuda"))


@compiled
@pytest.mark.slow
@pytest.mark.parametrize("key", ["memformer", "rmt"])
def test_compiled_rollouts_equal_eager_and_reuse_their_graphs(key: str) -> None:
    """full and MRBP through the compiled step: eager's loss and gradients; a second
    rollout compiles nothing new (MRBP's replay runs the graph ``full`` compiled)."""
    model = small_model(key).train()
    batch, seg = 2, model.config.segment_len
    data = tokens(batch, 3 * seg + 1)
    inputs, targets = data[:, :-1], data[:, 1:]

    def run(strategy: str) -> tuple[float, list[torch.Tensor]]:
        memory = model.init_memory(batch)
        result = rollout(model, inputs, targets, memory, loss_fn=_loss, strategy=strategy)
        return float(result.loss), _grads(model)

    eager = {strategy: run(strategy) for strategy in ("full", "mrbp")}
    report = compile_segment_steps(model)
    for strategy in ("full", "mrbp"):
        loss, grads = run(strategy)
        assert loss == pytest.approx(eager[strategy][0], rel=1e-5)
        for got, want in zip(grads, eager[strategy][1], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    graphs = dict(report.compile_seconds)
    assert any("grad=True" in name for name in graphs)  # the step, with grad
    assert any("grad=False" in name for name in graphs)  # MRBP's forward pass
    assert report.first_compile_seconds is not None and report.first_compile_seconds > 0
    run("mrbp")
    run("full")
    assert report.compile_seconds == graphs  # nothing compiled again
