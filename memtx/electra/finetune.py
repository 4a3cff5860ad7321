"""Fine-tuning a pre-trained discriminator on a downstream task: a recipe over the one loop.

The discriminator's hidden states, mean-pooled over real tokens, feed a dropout + linear
head; AdamW with linear warmup and linear decay for ``epochs`` epochs, each epoch a fresh
permutation of the training examples (:class:`EpochSource`); the last epoch's model is
scored (no selection on test). Accuracy is reported on valid (the split used for
tuning) and test.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memtx.data import ByteTokenizer, load_tokenizer
from memtx.electra.config import ElectraConfig, FinetuneConfig
from memtx.electra.model import Discriminator, ElectraModel
from memtx.electra.pretrain import load_pretrained
from memtx.electra.tasks import ClassificationTask, build_task
from memtx.errors import ConfigError
from memtx.training import BaseSource, LoopConfig, StepOutcome, fit, linear_schedule

__all__ = [
    "ClassifierStep",
    "EpochSource",
    "SequenceClassifier",
    "TaskResult",
    "evaluate_downstream",
    "finetune_task",
    "pad_batch",
]


class SequenceClassifier(nn.Module):
    """A discriminator backbone, mean-pooled over real tokens, and a linear head."""

    def __init__(self, discriminator: Discriminator, num_classes: int, *, dropout: float) -> None:
        super().__init__()
        self.backbone = discriminator
        width = discriminator.config.d_model
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, num_classes)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, ids: Tensor, key_mask: Tensor) -> Tensor:
        """ids [B, L], key_mask [B, L] (True = real token, right-padded) -> logits [B, C]."""
        hidden = self.backbone.hidden(ids, key_mask=key_mask)  # (B, L, d)
        weight = key_mask.to(hidden.dtype)[..., None]  # (B, L, 1)
        pooled = (hidden * weight).sum(1) / weight.sum(1).clamp_min(1.0)  # (B, d)
        return self.head(self.dropout(pooled))


def pad_batch(
    examples: Sequence[tuple[list[int], int]], *, pad_id: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded ids [B, L], key mask [B, L], labels [B]."""
    longest = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    for row, (tokens, _) in enumerate(examples):
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    labels = torch.tensor([label for _, label in examples], dtype=torch.long)
    return ids.to(device), (ids != pad_id).to(device), labels.to(device)


@torch.no_grad()
def _accuracy(
    model: SequenceClassifier,
    examples: Sequence[tuple[list[int], int]],
    *,
    pad_id: int,
    batch_size: int,
) -> float:
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(examples), batch_size):
        ids, mask, labels = pad_batch(
            examples[start : start + batch_size], pad_id=pad_id, device=device
        )
        correct += int((model(ids, mask).argmax(-1) == labels).sum())
    return correct / max(len(examples), 1)


@dataclass
class TaskResult:
    """Accuracy of one fine-tuning run on one task."""

    task: str
    classes: int
    train_examples: int
    valid_accuracy: float
    test_accuracy: float
    majority_accuracy: float
    seconds: float


class EpochSource(BaseSource):
    """Fine-tuning's loop source: the training examples in a fresh order every epoch."""

    def __init__(
        self,
        examples: Sequence[tuple[list[int], int]],
        *,
        batch_size: int,
        seed: int,
        pad_id: int,
        device: torch.device,
    ) -> None:
        self.examples = examples
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.device = device
        self.generator = torch.Generator().manual_seed(seed)
        self.order: list[int] = []
        self.position = 0

    def next_batch(self) -> tuple[Tensor, Tensor, Tensor]:
        """Right-padded ids [B, L], key mask [B, L], labels [B]."""
        if self.position >= len(self.order):
            self.order = torch.randperm(len(self.examples), generator=self.generator).tolist()
            self.position = 0
        chosen = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return pad_batch([self.examples[k] for k in chosen], pad_id=self.pad_id, device=self.device)

    def validate(self, model: nn.Module, *, device: torch.device) -> dict[str, float]:
        return {}  # the last epoch's model is scored by the caller, on valid and test

    def state(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        meta = {"order": self.order, "position": self.position}
        return meta, {"generator": self.generator.get_state()}

    def load_state(self, meta: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        self.order, self.position = list(meta["order"]), int(meta["position"])
        self.generator.set_state(tensors["generator"].cpu())


class ClassifierStep:
    """The step function of fine-tuning: cross-entropy of a batch, and its gradients."""

    def __init__(self, model: SequenceClassifier) -> None:
        self.model = model

    def __call__(self, batch: tuple[Tensor, Tensor, Tensor], *, step: int) -> StepOutcome:
        ids, mask, labels = batch
        loss = F.cross_entropy(self.model(ids, mask), labels)
        loss.backward()
        return StepOutcome(loss=loss.detach(), tokens=int(ids.shape[0]))


def finetune_task(
    discriminator: Discriminator,
    task: ClassificationTask,
    *,
    config: FinetuneConfig,
    seed: int,
    pad_id: int,
) -> TaskResult:
    """Fine-tune a copy of ``discriminator`` on ``task``; score valid and test accuracy.

    The discriminator is not modified. ``seed`` fixes the head's init, the dropout and the
    order of the training examples. Runs on the one loop, in memory (no run folder).
    """
    began = time.perf_counter()
    device = next(discriminator.parameters()).device
    torch.manual_seed(seed)
    model = SequenceClassifier(
        copy.deepcopy(discriminator), len(task.classes), dropout=config.dropout
    ).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    total = math.ceil(len(task.train) / config.batch_size) * config.epochs
    fit(
        ClassifierStep(model),
        EpochSource(
            task.train, batch_size=config.batch_size, seed=seed, pad_id=pad_id, device=device
        ),
        model=model,
        optimizer=optimizer,
        schedule=linear_schedule(
            lr=config.lr, steps=total, warmup_steps=max(1, int(total * config.warmup_fraction))
        ),
        config=LoopConfig(steps=total, seed=seed, grad_clip=1.0, log_every=total, desc="finetune"),
    )
    batch = 2 * config.batch_size
    return TaskResult(
        task=task.name,
        classes=len(task.classes),
        train_examples=len(task.train),
        valid_accuracy=_accuracy(model, task.valid, pad_id=pad_id, batch_size=batch),
        test_accuracy=_accuracy(model, task.test, pad_id=pad_id, batch_size=batch),
        majority_accuracy=task.majority_accuracy("test"),
        seconds=time.perf_counter() - began,
    )


def _encoder_for(run_dir: Path | None) -> Callable[[bytes], list[int]]:
    tokenizer = load_tokenizer(run_dir) if run_dir is not None else ByteTokenizer()
    return lambda data: [int(i) for i in tokenizer.encode(data)]


def evaluate_downstream(
    run_dir: Path | None,
    *,
    seed: int,
    config: FinetuneConfig | None = None,
    electra_config: Any = None,
    device: torch.device | str = "cpu",
    tasks: dict[str, ClassificationTask] | None = None,
) -> dict[str, TaskResult]:
    """Fine-tune the discriminator of a pre-training run on every configured task.

    Args:
        run_dir: a folder written by :func:`memtx.electra.pretrain`; None fine-tunes a
            randomly initialised discriminator of ``electra_config`` (the no-pre-training
            floor), byte tokens unless ``tasks`` come already tokenized.
        seed: seed of the fine-tuning (and of the random init when ``run_dir`` is None).
        config: the tasks and fine-tuning settings (default: the run's ``[finetune]``).
        electra_config: with ``run_dir`` None, the :class:`~memtx.electra.ElectraConfig`.
        device: where to fine-tune.
        tasks: already built tasks to reuse (by name).

    Raises:
        ConfigError: no run in ``run_dir``, or ``max_len`` above the pre-training length.
    """
    if run_dir is not None:
        run, model = load_pretrained(Path(run_dir), device=device)
        config = config or run.finetune
        electra = run.electra
    else:
        electra = electra_config or ElectraConfig()
        torch.manual_seed(seed)
        model = ElectraModel(electra).to(device)
        config = config or FinetuneConfig()
    if config.max_len > electra.seq_len:
        raise ConfigError(
            f"finetune.max_len ({config.max_len}) must be <= electra.seq_len ({electra.seq_len})"
        )
    if run_dir is None and electra.vocab_size != 256 and set(config.tasks) - set(tasks or {}):
        # The floor has no tokenizer of its own: byte ids would not match its vocabulary.
        raise ConfigError(
            f"a randomly initialised discriminator with vocab_size {electra.vocab_size} "
            "needs its tasks built with the matching tokenizer (pass tasks=)"
        )
    encode = _encoder_for(Path(run_dir) if run_dir is not None else None)
    results = {}
    for name in config.tasks:
        task = (tasks or {}).get(name) or build_task(name, config, encode=encode)
        results[name] = finetune_task(
            model.discriminator, task, config=config, seed=seed, pad_id=electra.pad_id
        )
    return results
