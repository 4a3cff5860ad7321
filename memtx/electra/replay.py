"""A prioritized replay buffer of corrupted examples (Transformer with Memory Replay, TMR).

TMR (Liu and Mozafari, AAAI 2022) puts a fixed-size buffer between ELECTRA's generator
and discriminator: every corrupted example the generator makes is stored with a priority,
and the discriminator trains on batches that mix fresh examples with examples replayed
from the buffer, sampled in proportion to their priority. The paper does not give its
formulas; ours, exactly:

Sampling (prioritized experience replay, Schaul et al. 2016). With priorities ``p_i`` of
the ``N`` examples held::

    P(i) = p_i^alpha / sum_k p_k^alpha          # alpha = 1: proportional to priority
    w_i  = (N * P(i))^(-beta) / max_k (N * P(k))^(-beta) = (P(i) / min_k P(k))^(-beta)

so the importance weights are normalized by the largest weight in the whole buffer (the
one of the least likely example) and lie in (0, 1]. Sampling is with replacement.

Priorities, one per example, from the discriminator's per-token logits ``z`` and labels
``y`` (1 = replaced) over the example's ``n`` scored tokens (never a second forward pass:
the statistics come from the training step's own forward, see :func:`rtd_example_stats`)::

    loss_i     = (1/n) sum_j BCE(z_ij, y_ij)
    grad_norm  = sqrt((1/n) sum_j (sigmoid(z_ij) - y_ij)^2)

- ``priority = "grad_norm"``: ``p_i = grad_norm_i + eps``. ``sigmoid(z) - y`` is the
  exact gradient of the summed BCE with respect to the logits, so this is the norm of
  dLoss/dlogits, length-normalized (RMS): a per-example gradient-norm proxy that needs no
  extra backward (the parameter gradient is that vector times the network's Jacobian).
  A new example starts with the value from the step that made it.
- ``priority = "loss_change"``: ``p_i = |loss_i(now) - loss_i(last visit)| + eps``: how
  much the discriminator's view of the example moved since it last saw it (learning
  progress). A new example has no previous loss, so it starts at the largest priority in
  the buffer (1 when empty), as in PER, so it is replayed at least once soon.

Priorities of replayed examples are refreshed after every replay from the same forward
pass that trained on them (:meth:`ReplayBuffer.update`).

Eviction (``eviction``): ``"oldest"`` (default) overwrites the example that was added
first, a ring buffer: it bounds how stale a replayed example can be (at most ``capacity``
fresh examples old), which matters because the generator drifts. ``"lowest"`` overwrites
the examples of lowest priority (ties: the oldest first), keeping hard examples longer.

The buffer's whole state, its random generator included, saves to safetensors + JSON and
loads back exactly (:meth:`ReplayBuffer.state_dict`, :meth:`ReplayBuffer.save`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from memtx.checkpoint import atomic_write_text
from memtx.config import Checked
from memtx.errors import ConfigError, DataError

__all__ = [
    "PRIORITY_KINDS",
    "ReplayBuffer",
    "ReplayConfig",
    "ReplaySample",
    "replay_count",
    "rtd_example_stats",
]

PRIORITY_KINDS = ("grad_norm", "loss_change")
EVICTION_KINDS = ("oldest", "lowest")
_STATE_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class ReplayConfig(Checked):
    """The replay buffer and how the discriminator uses it (the ``[replay]`` table).

    Attributes:
        enabled: False trains ELECTRA without replay (the baseline).
        capacity: examples the buffer holds (>= 1).
        ratio: share of each discriminator batch that is replayed, in [0, 1): with ``B``
            fresh examples a step adds ``round(B * ratio / (1 - ratio))`` replayed ones,
            so the generator makes the same examples with or without replay.
        priority: ``"grad_norm"`` or ``"loss_change"`` (formulas in the module docstring).
        alpha: priority exponent (1: sampling proportional to priority; 0: uniform).
        beta: importance-weight exponent at the first step.
        beta_final: importance-weight exponent at the last step (linear in between).
        eps: added to every priority so no example has probability 0.
        eviction: which example a new one replaces when full: ``"oldest"`` or ``"lowest"``.
        min_fill: replay starts once the buffer holds at least this many examples.
        seed: seed of the buffer's own sampling generator.
    """

    section: ClassVar[str] = "replay"

    enabled: bool = True
    capacity: int = 2048
    ratio: float = 0.1
    priority: str = "grad_norm"
    alpha: float = 1.0
    beta: float = 0.4
    beta_final: float = 1.0
    eps: float = 1e-3
    eviction: str = "oldest"
    min_fill: int = 64
    seed: int = 0

    def _validate(self) -> None:
        self._at_least("capacity", 1)
        self._in_range("ratio", 0.0, 1.0)
        if self.priority not in PRIORITY_KINDS:
            raise ConfigError(
                f"replay.priority must be one of {', '.join(PRIORITY_KINDS)}, got {self.priority!r}"
            )
        if self.eviction not in EVICTION_KINDS:
            raise ConfigError(
                f"replay.eviction must be one of {', '.join(EVICTION_KINDS)}, got {self.eviction!r}"
            )
        self._at_least("alpha", 0.0)
        self._in_range("beta", 0.0, 1.0, high_open=False)
        self._in_range("beta_final", 0.0, 1.0, high_open=False)
        if not self.eps > 0:
            raise ConfigError(f"replay.eps must be > 0, got {self.eps}")
        self._at_least("min_fill", 1)


def replay_count(fresh: int, ratio: float) -> int:
    """Replayed examples to add to ``fresh`` ones: the most that make at most ``ratio`` of
    the discriminator batch (32 fresh at 0.1: 3, a share of 0.086; rounding to 4 would be
    0.111). The share is an upper bound so that its cost, the discriminator's extra
    rows, stays within what the ratio promises.

    Raises:
        ConfigError: ``ratio`` outside [0, 1), or a positive ratio too small to replay even
            one example per batch of ``fresh``.
    """
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"replay.ratio must be in [0.0, 1.0), got {ratio}")
    count = math.floor(fresh * ratio / (1.0 - ratio) + 1e-9)
    if ratio > 0 and count == 0:
        raise ConfigError(
            f"replay.ratio {ratio} replays no example in a batch of {fresh} fresh ones: "
            f"one replayed example needs a ratio of at least 1/{fresh + 1} = {1 / (fresh + 1):.3f}"
        )
    return count


def rtd_example_stats(logits: Tensor, labels: Tensor, scored: Tensor) -> tuple[Tensor, Tensor]:
    """Per-example loss and gradient-norm proxy of replaced-token detection.

    Args:
        logits: [N, L] discriminator logits (replaced if > 0).
        labels: [N, L] 1 where the token was replaced.
        scored: [N, L] bool, the tokens that count (not padding).

    Returns:
        ``loss`` [N] (mean BCE over scored tokens, differentiable) and ``grad_norm`` [N]
        (``sqrt(mean (sigmoid(z) - y)^2)`` over scored tokens, detached).
    """
    target = labels.to(logits.dtype)
    weight = scored.to(logits.dtype)
    count = weight.sum(-1).clamp_min(1.0)  # (N,)
    per_token = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    loss = (per_token * weight).sum(-1) / count  # (N,)
    with torch.no_grad():
        residual = (torch.sigmoid(logits.detach()) - target) * weight  # dBCE/dz, (N, L)
        grad_norm = (residual.square().sum(-1) / count).sqrt()  # (N,)
    return loss, grad_norm


class ReplaySample(NamedTuple):
    """What :meth:`ReplayBuffer.sample` returns.

    Attributes:
        indices: [n] long, the slots sampled (pass them back to ``update``).
        ids: [n, L] long, the corrupted examples.
        labels: [n, L] bool, True where a token was replaced.
        weights: [n] float32, importance weights in (0, 1].
        probabilities: [n] float64, the probability each was drawn with.
    """

    indices: Tensor
    ids: Tensor
    labels: Tensor
    weights: Tensor
    probabilities: Tensor


class ReplayBuffer:
    """Fixed-capacity prioritized buffer of (corrupted ids, replaced labels) examples.

    Storage lives on the CPU (``ids`` as int32); :meth:`sample` moves the sample to
    ``device``. All sampling draws from the buffer's own ``torch.Generator`` unless one is
    passed, so two buffers with equal states sample equal sequences.
    """

    def __init__(self, config: ReplayConfig, *, example_len: int) -> None:
        if example_len < 1:
            raise DataError(f"example_len must be >= 1, got {example_len}")
        self.config = config
        self.example_len = example_len
        capacity = config.capacity
        self.ids = torch.zeros(capacity, example_len, dtype=torch.int32)
        self.labels = torch.zeros(capacity, example_len, dtype=torch.bool)
        # float64: sums of thousands of probabilities must not drift between save and load.
        self.priorities = torch.zeros(capacity, dtype=torch.float64)
        self.last_loss = torch.zeros(capacity, dtype=torch.float64)
        self.added_at = torch.zeros(capacity, dtype=torch.int64)  # insertion counter
        self.size = 0
        self.total_added = 0
        self.max_priority = 1.0
        self.generator = torch.Generator().manual_seed(config.seed)

    # ----------------------------------------------------------------------- basics

    def __len__(self) -> int:
        return self.size

    @property
    def capacity(self) -> int:
        return self.config.capacity

    def _initial_priority(self, grad_norm: Tensor) -> Tensor:
        if self.config.priority == "grad_norm":
            return grad_norm.double() + self.config.eps
        return torch.full_like(grad_norm, self.max_priority, dtype=torch.float64)

    def _slots_for(self, count: int) -> Tensor:
        """Where ``count`` (<= capacity) new examples go: free slots first, then evictions."""
        free = min(self.capacity - self.size, count)
        slots = [torch.arange(self.size, self.size + free)]
        rest = count - free
        if rest:
            held = self.size  # evict only among examples stored before this call
            if self.config.eviction == "oldest":
                order = torch.argsort(self.added_at[:held], stable=True)
            else:
                # Lowest priority first; among equals the oldest (stable sort on age first).
                by_age = torch.argsort(self.added_at[:held], stable=True)
                order = by_age[torch.argsort(self.priorities[by_age], stable=True)]
            slots.append(order[:rest])
        return torch.cat(slots)

    # ----------------------------------------------------------------------- writing

    def add(self, *, ids: Tensor, labels: Tensor, losses: Tensor, grad_norms: Tensor) -> Tensor:
        """Store new examples with their statistics from the step that made them.

        Args:
            ids: [n, L] corrupted token ids.
            labels: [n, L] replaced-token labels (bool or 0/1).
            losses: [n] their discriminator loss at that step (see :func:`rtd_example_stats`).
            grad_norms: [n] their gradient-norm proxy at that step.

        Returns:
            [n] long, the slot of each stored example (-1 for the ones that did not fit
            when ``n > capacity``: only the last ``capacity`` are kept).
        """
        count = ids.shape[0]
        if ids.dim() != 2 or ids.shape[1] != self.example_len:
            raise DataError(
                f"replay examples must have shape [n, {self.example_len}], got {tuple(ids.shape)}"
            )
        if labels.shape != ids.shape or losses.shape != (count,) or grad_norms.shape != (count,):
            raise DataError(
                f"labels [n, L], losses [n] and grad_norms [n] must match ids {tuple(ids.shape)}"
            )
        slots_out = torch.full((count,), -1, dtype=torch.long)
        keep = min(count, self.capacity)
        first = count - keep
        slots = self._slots_for(keep)
        priorities = self._initial_priority(grad_norms.detach().cpu()[first:])
        self.ids[slots] = ids.detach()[first:].cpu().to(torch.int32)
        self.labels[slots] = labels.detach()[first:].cpu().bool()
        self.priorities[slots] = priorities
        self.last_loss[slots] = losses.detach()[first:].cpu().double()
        self.added_at[slots] = torch.arange(self.total_added + first, self.total_added + count)
        self.total_added += count
        self.size = min(self.capacity, self.size + keep)
        self.max_priority = max(self.max_priority, float(priorities.max()))
        slots_out[first:] = slots
        return slots_out

    def update(self, indices: Tensor, *, losses: Tensor, grad_norms: Tensor) -> None:
        """Refresh the priorities of replayed examples from the step that just trained on them.

        Args:
            indices: [n] slots from :meth:`sample` (repeats allowed: the last one wins,
                and all repeats carry the same values within one step).
            losses: [n] their discriminator loss in this step.
            grad_norms: [n] their gradient-norm proxy in this step.
        """
        indices = indices.detach().cpu().long()
        losses = losses.detach().cpu().double()
        if self.config.priority == "grad_norm":
            priorities = grad_norms.detach().cpu().double() + self.config.eps
        else:
            priorities = (losses - self.last_loss[indices]).abs() + self.config.eps
        self.priorities[indices] = priorities
        self.last_loss[indices] = losses
        if priorities.numel():
            self.max_priority = max(self.max_priority, float(priorities.max()))

    # ----------------------------------------------------------------------- reading

    def probabilities(self) -> Tensor:
        """[size] float64: the probability of drawing each stored example."""
        if self.size == 0:
            raise DataError("the replay buffer is empty; add examples before sampling")
        scaled = self.priorities[: self.size].pow(self.config.alpha)  # (N,)
        return scaled / scaled.sum()

    def importance_weights(self, indices: Tensor, *, beta: float) -> Tensor:
        """[n] float64: ``(P(i) / min_k P(k))^(-beta)`` (max-normalized PER weights)."""
        probs = self.probabilities()
        return (probs[indices.long()] / probs.min()).pow(-beta)

    def sample(
        self,
        count: int,
        *,
        beta: float | None = None,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> ReplaySample:
        """Draw ``count`` examples with replacement, in proportion to ``priority^alpha``.

        Args:
            count: examples to draw (>= 1).
            beta: importance-weight exponent (default: ``config.beta``).
            device: where the returned tensors go.
            generator: a CPU ``torch.Generator`` (default: the buffer's own).

        Raises:
            DataError: the buffer is empty or ``count`` < 1.
        """
        if count < 1:
            raise DataError(f"sample count must be >= 1, got {count}")
        beta = self.config.beta if beta is None else beta
        probs = self.probabilities()  # (N,)
        draw = torch.multinomial(
            probs, count, replacement=True, generator=generator or self.generator
        )  # (n,)
        weights = (probs[draw] / probs.min()).pow(-beta)  # (n,)
        return ReplaySample(
            indices=draw,
            ids=self.ids[draw].long().to(device),
            labels=self.labels[draw].to(device),
            weights=weights.float().to(device),
            probabilities=probs[draw],
        )

    # ----------------------------------------------------------------------- state

    def state_dict(self, *, prefix: str = "replay.") -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The whole state: tensors (for safetensors) and JSON-able scalars."""
        tensors = {
            f"{prefix}ids": self.ids.clone(),
            f"{prefix}labels": self.labels.clone(),
            f"{prefix}priorities": self.priorities.clone(),
            f"{prefix}last_loss": self.last_loss.clone(),
            f"{prefix}added_at": self.added_at.clone(),
            f"{prefix}generator": self.generator.get_state().clone(),
        }
        meta = {
            "version": _STATE_VERSION,
            "config": asdict(self.config),
            "example_len": self.example_len,
            "size": self.size,
            "total_added": self.total_added,
            # repr-exact: json round-trips Python floats exactly.
            "max_priority": self.max_priority,
        }
        return tensors, meta

    def load_state_dict(
        self, tensors: dict[str, Tensor], meta: dict[str, Any], *, prefix: str = "replay."
    ) -> None:
        """Restore :meth:`state_dict`'s output (the buffer's config must have the same capacity).

        Raises:
            DataError: a missing tensor, or a state of another capacity or example length.
        """
        if meta.get("version") != _STATE_VERSION:
            raise DataError(f"replay state version {meta.get('version')!r} is not supported")
        if meta["example_len"] != self.example_len or meta["config"]["capacity"] != self.capacity:
            raise DataError(
                f"replay state holds capacity {meta['config']['capacity']} x "
                f"{meta['example_len']} tokens, this buffer {self.capacity} x {self.example_len}"
            )
        try:
            self.ids = tensors[f"{prefix}ids"].cpu().to(torch.int32).clone()
            self.labels = tensors[f"{prefix}labels"].cpu().bool().clone()
            self.priorities = tensors[f"{prefix}priorities"].cpu().double().clone()
            self.last_loss = tensors[f"{prefix}last_loss"].cpu().double().clone()
            self.added_at = tensors[f"{prefix}added_at"].cpu().long().clone()
            self.generator.set_state(tensors[f"{prefix}generator"].cpu().to(torch.uint8))
        except KeyError as exc:
            raise DataError(f"replay state lacks tensor {exc.args[0]!r}") from None
        self.size = int(meta["size"])
        self.total_added = int(meta["total_added"])
        self.max_priority = float(meta["max_priority"])

    def state(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """The buffer as a checkpoint part (:class:`memtx.training.Part`)."""
        tensors, meta = self.state_dict(prefix="")
        return meta, tensors

    def load_state(self, meta: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        """Restore :meth:`state`'s output."""
        self.load_state_dict(tensors, meta, prefix="")

    def save(self, directory: Path) -> None:
        """Write ``replay.safetensors`` and ``replay.json`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors, meta = self.state_dict()
        tmp = directory / ".replay.safetensors.tmp"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        tmp.replace(directory / "replay.safetensors")
        atomic_write_text(directory / "replay.json", json.dumps(meta, indent=1) + "\n")

    @classmethod
    def load(cls, directory: Path) -> ReplayBuffer:
        """The buffer :meth:`save` wrote into ``directory``.

        Raises:
            DataError: missing or unreadable files.
        """
        directory = Path(directory)
        try:
            meta = json.loads((directory / "replay.json").read_text(encoding="utf-8"))
            tensors = load_file(str(directory / "replay.safetensors"))
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"cannot read a replay buffer from {directory}: {exc}") from None
        buffer = cls(ReplayConfig(**meta["config"]), example_len=int(meta["example_len"]))
        buffer.load_state_dict(tensors, meta)
        return buffer
