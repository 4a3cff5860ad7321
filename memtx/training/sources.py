"""Where language-model and task training's rollouts come from: text streams or tasks.

Both are :class:`memtx.training.Source` s of the one loop: a source hands it batches, says
when the memory must start fresh, validates a model, and (for tasks) runs the curriculum.

- :class:`TextSource`: each batch row is one continuous stream of the corpus, so a row's
  memory continues across consecutive rollouts (Transformer-XL's layout).
- :class:`TaskSource`: each step samples fresh task sequences; every sample starts with a
  fresh memory and the rollout covers all its segments. A curriculum moves through
  ``task.stages`` (segments per sample), ``task.source_stages`` (copy/reverse source
  length), ``task.fact_stages`` (babilong story facts) and/or ``task.background_stages``
  (babilong: the story alone, or hidden in text), a stage ending when the
  held-out answer accuracy (``task.advance_on``) reaches ``task.advance_at`` or after
  ``task.stage_steps`` steps. Tasks that hide facts in real text (facts, babilong) take
  their background from ``noise`` (the train split); validation reads ``eval_noise``
  (held-out documents) when given. With ``task.vary_segments`` each batch draws its
  number of segments from the first stage's .. the current stage's (one count per batch,
  so rows stay aligned).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from memtx.config import TaskConfig
from memtx.data import StreamLoader
from memtx.evaluate import evaluate_task, evaluate_tokens
from memtx.models.protocol import SegmentModel
from memtx.training.loop import BaseSource

__all__ = ["Batch", "TaskSource", "TextSource"]


@dataclass
class Batch:
    """One rollout's worth of training data (on CPU).

    Attributes:
        inputs: [B, N] token ids.
        targets: [B, N] what each input position predicts (-100: not scored).
        reset: the memory must start fresh for this batch.
        count: scored targets in the batch (the loss is their mean).
    """

    inputs: Tensor
    targets: Tensor
    reset: bool
    count: int


class TextSource(BaseSource):
    """Continuous streams of a tokenized corpus, and bits-per-byte validation."""

    def __init__(
        self,
        train_tokens: np.ndarray,
        valid_tokens: np.ndarray,
        *,
        rows: int,
        window: int,
        rank: int,
        world_size: int,
        eval_rows: int,
        eval_tokens: int,
        bytes_per_token: float,
    ) -> None:
        self.loader = StreamLoader(
            train_tokens, batch_size=rows, window=window, rank=rank, world_size=world_size
        )
        self.valid_tokens = valid_tokens
        self.eval_rows = eval_rows
        self.eval_tokens = eval_tokens
        self.bytes_per_token = bytes_per_token

    def next_batch(self) -> Batch:
        batch = self.loader.next_batch()
        tokens = batch.tokens  # (B, window + 1)
        return Batch(tokens[:, :-1], tokens[:, 1:], batch.reset, tokens[:, 1:].numel())

    def validate(self, model: SegmentModel, *, device: torch.device) -> dict[str, float]:
        if len(self.valid_tokens) < 2:
            return {}
        result = evaluate_tokens(
            model,
            self.valid_tokens,
            rows=self.eval_rows,
            max_tokens=self.eval_tokens,
            bytes_per_token=self.bytes_per_token,
            device=device,
        )
        return {"loss": result.loss, "bpc": result.bpc, "ppl": result.ppl}

    def state(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        return {"loader": self.loader.state_dict()}, {}

    def load_state(self, meta: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        self.loader.load_state_dict(meta["loader"])


class TaskSource:
    """Fresh samples of a synthetic task each step, with a curriculum over segments and/or
    source lengths."""

    def __init__(
        self,
        cfg: TaskConfig,
        *,
        segment_len: int,
        rows: int,
        rank: int,
        seed: int,
        noise: np.ndarray | None = None,
        eval_noise: np.ndarray | None = None,
        tokenizer: Any = None,
    ) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer  # a pretrained model's own (facts in its tokens), or None
        self.segment_len = segment_len
        self.rows = rows
        self.seed = seed
        self.noise = noise  # background text of training samples (facts, babilong)
        # Background of held-out samples: other documents, so validation never reads the
        # training text (None: the training background, as facts always had).
        self.eval_noise = eval_noise
        self.stage = 0
        self.stage_step = 0
        self.solved = False
        self.generator = torch.Generator().manual_seed(seed * 7919 + rank)
        self._tasks: dict[tuple[Any, ...], Any] = {}  # (segments, params, held_out) -> task
        # A bad task config (at any stage) fails before training starts.
        for stage, segments in enumerate(cfg.stage_segments):
            self.task(segments, stage=stage)
            self.task(segments, stage=stage, held_out=True)
        self.task(cfg.segments)
        self.task(cfg.segments, held_out=True)

    def task(self, segments: int, *, stage: int | None = None, held_out: bool = False) -> Any:
        """The task with ``segments`` segments per sample and curriculum ``stage``'s source
        length or story size (by default the last stage's), built once per shape; with
        ``held_out``, its background is ``eval_noise`` (when given)."""
        from memtx.data.tasks import make_task

        params = self.cfg.task_params(stage=stage)
        held_out = held_out and self.eval_noise is not None
        key = (segments, tuple(sorted(params.items())), held_out)
        if key not in self._tasks:
            extra: dict[str, Any] = {}
            if self.cfg.needs_background:
                extra["noise"] = self.eval_noise if held_out else self.noise
            if self.tokenizer is not None:
                extra["tokenizer"] = self.tokenizer
            self._tasks[key] = make_task(
                self.cfg.name,
                segments=segments,
                segment_len=self.segment_len,
                seed=self.seed,
                **params,
                **extra,
            )
        return self._tasks[key]

    @property
    def segments(self) -> int:
        return self.cfg.stage_segments[self.stage]

    @property
    def current_task(self) -> Any:
        """The task of the current curriculum stage."""
        return self.task(self.segments, stage=self.stage)

    def next_batch(self) -> Batch:
        task = self.current_task
        shortest = self.cfg.stage_segments[0]  # checked to fit when the source was built
        if self.cfg.vary_segments and self.segments > shortest:
            drawn = int(torch.randint(shortest, self.segments + 1, (1,), generator=self.generator))
            task = self.task(drawn, stage=self.stage)
        sample = task.sample(self.rows, generator=self.generator)
        count = int((sample.targets != -100).sum())
        return Batch(sample.inputs, sample.targets, True, count)

    def validate(self, model: SegmentModel, *, device: torch.device) -> dict[str, float]:
        metrics = evaluate_task(
            model,
            self.task(self.segments, stage=self.stage, held_out=True),
            samples=self.cfg.eval_samples,
            device=device,
            seed=self.seed + 1,
        )
        metrics = {**metrics, "segments": float(self.segments), "stage": float(self.stage)}
        if self.cfg.source_stages:
            metrics["source_len"] = float(self.cfg.stage_sources[self.stage])
        if self.cfg.fact_stages:
            metrics["story_facts"] = float(self.cfg.stage_facts[self.stage])
        if self.cfg.background_stages:
            metrics["background"] = float(self.cfg.stage_background[self.stage])
        return metrics

    def learning_rate(self, scheduled: float) -> float:
        """The schedule's rate, capped at ``task.last_stage_lr`` in the last stage."""
        cap = self.cfg.last_stage_lr
        if cap and self.stage + 1 == self.cfg.num_stages:
            return min(scheduled, cap)
        return scheduled

    def after_step(self) -> str | None:
        self.stage_step += 1
        if self.stage_step >= self.cfg.stage_steps and self.stage + 1 < self.cfg.num_stages:
            return self._advance("stage_steps reached")
        return None

    def after_validation(self, metrics: dict[str, float]) -> str | None:
        metric = self.cfg.advance_metric
        accuracy = metrics.get(metric, 0.0)
        said = metric.replace("_", " ")
        last = self.stage + 1 == self.cfg.num_stages
        if last and accuracy >= self.cfg.stop_at:
            self.solved = True
            return f"solved at {self.segments} segments ({said} {accuracy:.3f})"
        if not last and accuracy >= self.cfg.advance_at:
            return self._advance(f"{said} {accuracy:.3f}")
        return None

    def _advance(self, reason: str) -> str:
        self.stage += 1
        self.stage_step = 0
        where = f"{self.segments} segments"
        if self.cfg.source_stages:
            where += f", source {self.cfg.stage_sources[self.stage]}"
        if self.cfg.fact_stages:
            where += f", {self.cfg.stage_facts[self.stage]} story facts"
        if self.cfg.background_stages:
            where += ", background" if self.cfg.stage_background[self.stage] else ", no background"
        return f"curriculum stage {self.stage}: {where} ({reason})"

    @property
    def finished(self) -> bool:
        return self.solved

    def state(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        meta = {"stage": self.stage, "stage_step": self.stage_step, "solved": self.solved}
        return meta, {"source.generator": self.generator.get_state()}

    def load_state(self, meta: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        self.stage, self.stage_step = int(meta["stage"]), int(meta["stage_step"])
        self.solved = bool(meta.get("solved", False))
        self.generator.set_state(tensors["source.generator"].cpu())
