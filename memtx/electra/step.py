"""One step of ELECTRA pre-training with replay: the step function the loop runs.

:class:`ElectraStep` computes a batch's loss and gradients for :func:`memtx.training.fit`;
:func:`electra_step` is the same step with the loop's update, outside the loop (the
replay overhead measurement times exactly it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from memtx.electra.model import ElectraModel
from memtx.electra.replay import ReplayBuffer, rtd_example_stats
from memtx.training import StepOutcome, apply_update

__all__ = ["ElectraStep", "StepStats", "electra_step"]


class StepStats(NamedTuple):
    """What one :func:`electra_step` did (figures on the fresh rows unless said otherwise).

    Attributes:
        generator_loss: the generator's MLM loss.
        rtd_loss: mean discriminator BCE on the fresh examples (unweighted).
        rtd_accuracy: token accuracy of the discriminator on the fresh examples.
        replaced_fraction: share of fresh tokens that the generator really replaced.
        replayed: replayed examples in the discriminator batch.
        replay_seconds: wall-clock seconds spent in the buffer (sample, add, update).
    """

    generator_loss: float
    rtd_loss: float
    rtd_accuracy: float
    replaced_fraction: float
    replayed: int
    replay_seconds: float

    def to_dict(self) -> dict[str, float | int]:
        return self._asdict()


class ElectraStep:
    """The step function of ELECTRA pre-training over :func:`memtx.training.fit`.

    Corrupt the fresh ``ids`` [B, L] with the generator; if the buffer holds at least
    ``min_fill`` examples, append ``replayed_rows`` replayed ones; one discriminator
    forward scores all rows; ``loss = L_mlm + weight * L_rtd`` with replayed rows scaled
    by their importance weights; one backward. Once the loop accepts the update, the
    replayed rows' priorities are refreshed and the fresh rows added to the buffer, both
    from that same forward pass. It also keeps the run's totals for its result.
    """

    def __init__(
        self,
        model: ElectraModel,
        *,
        buffer: ReplayBuffer | None,
        replayed_rows: int,
        beta: Callable[[int], float],
    ) -> None:
        self.model = model
        self.buffer = buffer
        self.replayed_rows = replayed_rows
        self.beta = beta
        self.replayed = 0  # replayed examples over the accepted steps
        self.replay_seconds = 0.0  # time spent in the buffer over the accepted steps
        self.recent_rtd: list[float] = []  # the last 10 accepted steps' RTD loss

    def __call__(self, ids: Tensor, *, step: int) -> StepOutcome:
        model, buffer = self.model, self.buffer
        ids = ids.to(model.device)
        corruption = model.corrupt(ids)
        inputs, labels = corruption.inputs, corruption.labels
        fresh = ids.shape[0]
        seconds = 0.0
        sample = None
        if buffer is not None and self.replayed_rows and len(buffer) >= buffer.config.min_fill:
            mark = time.perf_counter()
            sample = buffer.sample(self.replayed_rows, beta=self.beta(step), device=ids.device)
            seconds += time.perf_counter() - mark
            inputs = torch.cat([inputs, sample.ids])  # (B + R, L)
            labels = torch.cat([labels, sample.labels])
        logits = model.discriminator(inputs)  # (B + R, L)
        losses, grad_norms = rtd_example_stats(logits, labels, torch.ones_like(labels))  # (B + R,)
        if sample is not None:
            # Importance weights undo the bias of prioritized sampling.
            weights = torch.cat([losses.new_ones(fresh), sample.weights.to(losses.dtype)])
            rtd_loss = (weights * losses).sum() / losses.shape[0]
        else:
            rtd_loss = losses.mean()
        loss = corruption.generator_loss + model.config.discriminator_weight * rtd_loss
        loss.backward()
        detached = losses.detach()
        with torch.no_grad():
            accuracy = ((logits[:fresh] > 0) == labels[:fresh]).float().mean()
        replayed = 0 if sample is None else sample.indices.numel()
        metrics = {
            "generator_loss": float(corruption.generator_loss.detach()),
            "rtd_loss": float(detached[:fresh].mean()),
            "rtd_accuracy": float(accuracy),
            "replaced_fraction": float(labels[:fresh].float().mean()),
            "replayed": float(replayed),
            "replay_seconds": seconds,
        }

        def commit() -> None:
            if buffer is not None:
                mark = time.perf_counter()
                # Priorities from this step's own forward pass: no extra pass.
                if sample is not None:
                    buffer.update(
                        sample.indices, losses=detached[fresh:], grad_norms=grad_norms[fresh:]
                    )
                buffer.add(
                    ids=corruption.inputs,
                    labels=corruption.labels,
                    losses=detached[:fresh],
                    grad_norms=grad_norms[:fresh],
                )
                metrics["replay_seconds"] += time.perf_counter() - mark
            self.replayed += replayed
            self.replay_seconds += metrics["replay_seconds"]
            self.recent_rtd = [*self.recent_rtd[-9:], metrics["rtd_loss"]]

        return StepOutcome(loss=loss.detach(), metrics=metrics, tokens=fresh, commit=commit)


def electra_step(
    model: ElectraModel,
    optimizer: torch.optim.Optimizer,
    ids: Tensor,
    *,
    buffer: ReplayBuffer | None,
    replayed_rows: int,
    beta: float,
    grad_clip: float,
) -> StepStats:
    """One pre-training step on fresh ``ids`` [B, L] outside the loop (its update included).

    What :class:`ElectraStep` and the loop's :func:`~memtx.training.apply_update` do for
    one batch; the replay overhead measurement times exactly this.
    """
    optimizer.zero_grad(set_to_none=True)
    outcome = ElectraStep(model, buffer=buffer, replayed_rows=replayed_rows, beta=lambda _: beta)(
        ids, step=0
    )
    apply_update(model, optimizer, grad_clip=grad_clip, loss=float(outcome.loss))
    assert outcome.commit is not None
    outcome.commit()
    metrics = outcome.metrics
    return StepStats(
        generator_loss=metrics["generator_loss"],
        rtd_loss=metrics["rtd_loss"],
        rtd_accuracy=metrics["rtd_accuracy"],
        replaced_fraction=metrics["replaced_fraction"],
        replayed=int(metrics["replayed"]),
        replay_seconds=metrics["replay_seconds"],
    )
