"""Downstream evaluation of a pre-trained discriminator, and the TMR reproduction.

Two classification tasks with labels taken from the text of the plays (the shakespeare
corpus, modern editions):

- ``play``: which play a passage of ``passage_len`` bytes comes from, among
  ``play_names``. Passages are cut back to back from each play after skipping its first
  ``skip_fraction`` (the title page and the list of characters name the play).
- ``speaker``: which character speaks a speech, among the ``top_speakers`` most frequent
  speakers of each play in ``speaker_plays`` (label ``play:NAME``). The speech text
  comes without its speaker line; it is cut to ``max_len`` tokens.

Speaker parsing (:func:`parse_speeches`), robust to the editions' different styles
(``Ham.``, ``HAMLET.``, ``Lady Capulet.``, ``THESEUS`` with no period, trailing spaces):
a speaker line follows a blank line (or the start), is followed by a non-blank line, is
at most four words starting with a capital, ends with a period, or is all capitals
without one; heading and stage words (ACT, SCENE, PROLOGUE, Enter, Exit...) are not
speakers. The speech is the following lines up to the next blank line, with bracketed
stage directions removed. A name must occur at least 3 times in a play to count.

Splits are fixed and contiguous, never random: the examples of each play, in document
order, are grouped into blocks of ``block_size``; block ``k`` goes to valid when
``k % 10 == 3``, to test when ``k % 10 == 7``, else to train (80/10/10 by blocks, spread
over the whole play, so neighbouring passages rarely straddle two splits). Each class is
then capped (``max_train_per_class``, ``max_eval_per_class``) by a subset drawn with the
fixed ``split_seed``: the same examples for every run and seed.

Fine-tuning: the discriminator's hidden states, mean-pooled over real tokens, feed a
dropout + linear head; AdamW with linear warmup and linear decay for ``epochs`` epochs;
the last epoch's model is scored (no selection on test). Accuracy is reported on valid
(the split used for tuning) and test.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
import re
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memtx.config import Checked
from memtx.errors import ConfigError, DataError

if TYPE_CHECKING:
    from memtx.electra import Discriminator

__all__ = [
    "ClassificationTask",
    "FinetuneConfig",
    "SequenceClassifier",
    "Speech",
    "TaskResult",
    "build_task",
    "build_tasks",
    "evaluate_downstream",
    "finetune_task",
    "parse_speeches",
    "repro_tmr",
]

TASKS = ("play", "speaker")


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig(Checked):
    """Downstream tasks and fine-tuning (the ``[finetune]`` table).

    Attributes:
        tasks: which tasks to run: ``"play"``, ``"speaker"``.
        epochs: passes over the training examples.
        batch_size: examples per step.
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_fraction: share of the steps with linear warmup (then linear decay to 0).
        dropout: dropout before the classification head.
        max_len: tokens per example at most (<= the pre-training ``seq_len``).
        block_size: examples per contiguous block of the fixed split.
        split_seed: seed of the per-class caps (fixed: the same examples for every run).
        max_train_per_class: training examples per class at most.
        max_eval_per_class: valid and test examples per class at most.
        play_names: the plays of the ``play`` task (corpus document names).
        passage_len: bytes per passage of the ``play`` task.
        skip_fraction: share of each play skipped at its start (title, characters).
        speaker_plays: the plays of the ``speaker`` task.
        top_speakers: speakers per play in the ``speaker`` task.
        min_speech_bytes: shorter speeches are dropped.
    """

    section: ClassVar[str] = "finetune"

    tasks: tuple[str, ...] = TASKS
    epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    dropout: float = 0.1
    max_len: int = 128
    block_size: int = 10
    split_seed: int = 0
    max_train_per_class: int = 150
    max_eval_per_class: int = 40
    play_names: tuple[str, ...] = (
        "hamlet_gut",
        "macbeth_gut",
        "othello_gut",
        "lear_gut",
        "romeo_and_juliet_gut",
        "twelfth_night_gut",
        "tempest_gut",
        "julius_caesar_gut",
    )
    passage_len: int = 128
    skip_fraction: float = 0.03
    speaker_plays: tuple[str, ...] = (
        "hamlet_gut",
        "othello_gut",
        "romeo_and_juliet_gut",
        "twelfth_night_gut",
    )
    top_speakers: int = 3
    min_speech_bytes: int = 24

    def _validate(self) -> None:
        for name in ("epochs", "batch_size", "max_len", "block_size", "passage_len"):
            self._at_least(name, 1)
        for name in ("max_train_per_class", "max_eval_per_class", "top_speakers"):
            self._at_least(name, 1)
        self._at_least("min_speech_bytes", 1)
        if not self.lr > 0:
            raise ConfigError(f"finetune.lr must be > 0, got {self.lr}")
        self._at_least("weight_decay", 0.0)
        self._in_range("warmup_fraction", 0.0, 1.0)
        self._in_range("dropout", 0.0, 1.0)
        self._in_range("skip_fraction", 0.0, 1.0)
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise ConfigError(
                f"finetune.tasks must be a non-empty list of {', '.join(TASKS)}, "
                f"got {list(self.tasks)}"
            )
        if len(self.play_names) < 2:
            raise ConfigError(f"finetune.play_names needs >= 2 plays, got {list(self.play_names)}")
        if not self.speaker_plays:
            raise ConfigError("finetune.speaker_plays needs >= 1 play, got []")


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Speech:
    """One speech of a play: who speaks, what, and its position (index in the play)."""

    speaker: str
    text: str
    index: int


_SPEAKER_LINE = re.compile(r"^[A-Z][A-Za-z'\-]*(?: [A-Za-z'\-]+){0,3}\.?$")
_NOT_SPEAKERS = frozenset(
    {
        "ACT",
        "SCENE",
        "PROLOGUE",
        "EPILOGUE",
        "INDUCTION",
        "THE",
        "FINIS",
        "DRAMATIS",
        "ENTER",
        "EXIT",
        "EXEUNT",
        "RE-ENTER",
        "MANET",
    }
)
_STAGE_DIRECTION = re.compile(r"\[[^\]]*\]")


def _speaker_name(line: str) -> str | None:
    """The speaker named by ``line``, or None if it is not a speaker line."""
    if not _SPEAKER_LINE.match(line):
        return None
    name = line.removesuffix(".")
    if not line.endswith(".") and name != name.upper():
        return None  # without a period only THESEUS-style capitals count
    if name.split()[0].upper() in _NOT_SPEAKERS:
        return None
    return name


def parse_speeches(text: str, *, min_count: int = 3) -> list[Speech]:
    """The speeches of a play, in order (see the module docstring for the rules).

    Args:
        text: the play.
        min_count: a name must head at least this many speeches to count as a speaker.
    """
    lines = [line.rstrip() for line in text.splitlines()]
    found: list[tuple[str, str]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        name = None
        after_blank = i == 0 or not lines[i - 1].strip()
        if line and after_blank and i + 1 < len(lines) and lines[i + 1].strip():
            name = _speaker_name(line.strip())
        if name is None:
            i += 1
            continue
        body = []
        j = i + 1
        while j < len(lines) and lines[j].strip():
            spoken = _STAGE_DIRECTION.sub("", lines[j]).strip()
            if spoken:
                body.append(spoken)
            j += 1
        if body:
            found.append((name, "\n".join(body)))
        i = j
    counts = Counter(name for name, _ in found)
    kept = [(name, body) for name, body in found if counts[name] >= min_count]
    return [Speech(speaker=name, text=body, index=k) for k, (name, body) in enumerate(kept)]


# --------------------------------------------------------------------------- tasks


@dataclass
class ClassificationTask:
    """A labelled task: token ids per example and a class index, in three fixed splits."""

    name: str
    classes: list[str]
    train: list[tuple[list[int], int]]
    valid: list[tuple[list[int], int]]
    test: list[tuple[list[int], int]]

    def majority_accuracy(self, split: str = "test") -> float:
        """Accuracy of always answering the most frequent training class."""
        examples = getattr(self, split)
        top = Counter(label for _, label in self.train).most_common(1)[0][0]
        return sum(label == top for _, label in examples) / max(len(examples), 1)


def _split_name(index: int, block_size: int) -> str:
    block = (index // block_size) % 10
    return "valid" if block == 3 else "test" if block == 7 else "train"


def _documents(names: Sequence[str]) -> dict[str, bytes]:
    from memtx.data import load_splits

    splits = load_splits("shakespeare")
    everything = {d.name: d.data for d in (*splits.train, *splits.valid, *splits.test)}
    missing = [n for n in names if n not in everything]
    if missing:
        raise ConfigError(
            f"finetune play {missing[0]!r} is not a document of the shakespeare corpus "
            f"(e.g. {', '.join(sorted(everything)[:3])})"
        )
    return {n: everything[n] for n in names}


def _cap(
    items: dict[int, list[list[int]]], limit: int, rng: random.Random
) -> list[tuple[list[int], int]]:
    out: list[tuple[list[int], int]] = []
    for label in sorted(items):
        group = items[label]
        chosen = sorted(rng.sample(range(len(group)), limit)) if len(group) > limit else None
        out.extend((group[k], label) for k in (chosen or range(len(group))))
    return out


def build_task(
    name: str, config: FinetuneConfig, *, encode: Callable[[bytes], list[int]]
) -> ClassificationTask:
    """Build task ``name`` (``"play"`` or ``"speaker"``) with ``encode`` as the tokenizer.

    Raises:
        ConfigError: unknown task or play name.
        DataError: a play yields no example.
    """
    by_split: dict[str, dict[int, list[list[int]]]] = {"train": {}, "valid": {}, "test": {}}
    classes: list[str] = []
    if name == "play":
        for label, (play, data) in enumerate(_documents(config.play_names).items()):
            classes.append(play.removesuffix("_gut"))
            start = int(len(data) * config.skip_fraction)
            count = (len(data) - start) // config.passage_len
            if count < 1:
                raise DataError(f"play {play!r} is shorter than one passage")
            for k in range(count):
                piece = data[start + k * config.passage_len : start + (k + 1) * config.passage_len]
                split = _split_name(k, config.block_size)
                by_split[split].setdefault(label, []).append(encode(piece)[: config.max_len])
    elif name == "speaker":
        for play, data in _documents(config.speaker_plays).items():
            speeches = parse_speeches(data.decode("utf-8", errors="replace"))
            top = [s for s, _ in Counter(s.speaker for s in speeches).most_common()]
            top = top[: config.top_speakers]
            if not top:
                raise DataError(f"no speaker could be parsed from play {play!r}")
            labels = {}
            for speaker in top:
                labels[speaker] = len(classes)
                classes.append(f"{play.removesuffix('_gut')}:{speaker}")
            kept = [
                s
                for s in speeches
                if s.speaker in labels and len(s.text.encode()) >= config.min_speech_bytes
            ]
            for k, speech in enumerate(kept):
                split = _split_name(k, config.block_size)
                ids = encode(speech.text.encode("utf-8"))[: config.max_len]
                by_split[split].setdefault(labels[speech.speaker], []).append(ids)
    else:
        raise ConfigError(f"unknown finetune task {name!r} (known: {', '.join(TASKS)})")
    rng = random.Random(config.split_seed)
    return ClassificationTask(
        name=name,
        classes=classes,
        train=_cap(by_split["train"], config.max_train_per_class, rng),
        valid=_cap(by_split["valid"], config.max_eval_per_class, rng),
        test=_cap(by_split["test"], config.max_eval_per_class, rng),
    )


# --------------------------------------------------------------------------- fine-tuning


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


def _batch(
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
        ids, mask, labels = _batch(
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
    order of the training examples.
    """
    began = time.perf_counter()
    device = next(discriminator.parameters()).device
    torch.manual_seed(seed)
    model = SequenceClassifier(
        copy.deepcopy(discriminator), len(task.classes), dropout=config.dropout
    ).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    order = torch.Generator().manual_seed(seed)
    per_epoch = math.ceil(len(task.train) / config.batch_size)
    total = per_epoch * config.epochs
    warmup = max(1, int(total * config.warmup_fraction))
    step = 0
    for _ in range(config.epochs):
        model.train()
        permutation = torch.randperm(len(task.train), generator=order).tolist()
        for start in range(0, len(permutation), config.batch_size):
            chosen = [task.train[k] for k in permutation[start : start + config.batch_size]]
            ids, mask, labels = _batch(chosen, pad_id=pad_id, device=device)
            scale = (step + 1) / warmup if step < warmup else (total - step) / (total - warmup)
            for group in optimizer.param_groups:
                group["lr"] = config.lr * max(scale, 0.0)
            loss = F.cross_entropy(model(ids, mask), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            step += 1
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


def build_tasks(config: FinetuneConfig, *, tokenizer: Any) -> dict[str, ClassificationTask]:
    """Every configured task, tokenized with ``tokenizer`` (the pre-training runs' own)."""

    def encode(data: bytes) -> list[int]:
        return [int(i) for i in tokenizer.encode(data)]

    return {name: build_task(name, config, encode=encode) for name in config.tasks}


def _encoder_for(run_dir: Path | None) -> Callable[[bytes], list[int]]:
    from memtx.data import ByteTokenizer, load_tokenizer

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
    from memtx.electra import ElectraConfig, ElectraModel, load_pretrained

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


# --------------------------------------------------------------------------- reproduction


def _mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _fmt(values: Sequence[float], *, scale: float = 100.0, digits: int = 1) -> str:
    mean, spread = _mean_spread([v * scale for v in values])
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def repro_tmr(
    *,
    out_dir: Path,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    config_path: Path = Path("configs/electra-tmr.toml"),
    overrides: Sequence[str] = (),
    work_dir: Path = Path("runs/tmr"),
    scratch_baseline: bool = True,
    overhead_rounds: int = 40,
    threads: int | None = None,
    progress: bool = False,
    echo: Callable[[str], None] = print,
) -> Path:
    """ELECTRA with and without replay at the same number of generated examples, then fine-tuning.

    For each seed: pre-train without replay and with replay (the preset's ``[replay]``;
    the order alternates between seeds so a drifting machine load hits both alike), then
    fine-tune each discriminator on every task with the same seed; optionally fine-tune a
    randomly initialised discriminator too (the floor). Then time replay's overhead per
    step in a paired measurement (:func:`memtx.electra.measure_replay_overhead`,
    ``overhead_rounds`` steps of each, alternating on the same batches). Writes ``tmr.md``
    (the table) and ``tmr.png`` (the figure) into ``out_dir``; the runs and ``tmr.json``
    (every number) go under ``work_dir``. ``threads`` sets torch's CPU threads
    (1 is much faster than 2 on a machine whose cores other jobs keep busy).

    Returns:
        The path of ``tmr.md``.

    Raises:
        ConfigError, DataError: bad preset or overrides, unreadable corpus.
    """
    from memtx.electra import load_electra_run, measure_replay_overhead, pretrain
    from memtx.train import prepare_data, resolve_device

    if not seeds:
        raise ConfigError("repro tmr needs at least one seed")
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    base = load_electra_run(config_path, overrides=overrides)
    device = resolve_device(base.pretrain.device)
    if not base.replay.enabled:
        raise ConfigError("the repro preset must enable replay (it runs both conditions)")
    from memtx.config import RunConfig

    data = prepare_data(RunConfig(data=base.data))
    # Every run saves this same tokenizer, so the tasks are tokenized once for all of them.
    tasks = build_tasks(dataclasses.replace(base.finetune, tasks=TASKS), tokenizer=data.tokenizer)
    work_dir = _free_dir(Path(work_dir))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    began = time.perf_counter()
    for position, seed in enumerate(seeds):
        order = (False, True) if position % 2 == 0 else (True, False)
        for replay in order:
            condition = "replay" if replay else "baseline"
            run = dataclasses.replace(
                base,
                replay=dataclasses.replace(base.replay, enabled=replay, seed=seed),
                pretrain=dataclasses.replace(base.pretrain, seed=seed),
            )
            run_dir = work_dir / f"{condition}-seed{seed}"
            result = pretrain(run, out_dir=run_dir, progress=progress, data=data)
            downstream = evaluate_downstream(run_dir, seed=seed, tasks=tasks, device=device)
            runs.append(
                {
                    "condition": condition,
                    "seed": seed,
                    "pretrain": result.summary(),
                    "train_rtd_loss": [
                        (m["step"], m["rtd_loss"]) for m in result.history if m["split"] == "train"
                    ],
                    "downstream": {k: dataclasses.asdict(v) for k, v in downstream.items()},
                }
            )
            echo(
                f"[{time.perf_counter() - began:6.0f}s] {condition} seed {seed}: "
                f"rtd acc {result.valid.get('rtd_accuracy', math.nan):.4f}, "
                + ", ".join(f"{k} {v.test_accuracy:.3f}" for k, v in downstream.items())
                + f", {result.step_seconds_median * 1000:.0f} ms/step"
            )
        if scratch_baseline:
            downstream = evaluate_downstream(
                None,
                seed=seed,
                config=base.finetune,
                electra_config=_vocab_fixed(base, data),
                tasks=tasks,
                device=device,
            )
            runs.append(
                {
                    "condition": "no_pretraining",
                    "seed": seed,
                    "downstream": {k: dataclasses.asdict(v) for k, v in downstream.items()},
                }
            )
    # Per-run medians drift with the machine's load; a paired measurement does not.
    overhead = measure_replay_overhead(base, data=data, rounds=overhead_rounds)
    echo(
        f"paired step timing: {overhead['baseline_ms']:.1f} ms -> {overhead['replay_ms']:.1f} ms "
        f"with replay ({overhead['overhead_pct']:+.1f}%)"
    )
    report = {
        "config": base.to_dict(),
        "overhead": overhead,
        "seeds": list(seeds),
        "seconds": time.perf_counter() - began,
        "runs": runs,
        "tasks": {
            name: {
                "classes": task.classes,
                "train": len(task.train),
                "valid": len(task.valid),
                "test": len(task.test),
                "majority_test": task.majority_accuracy("test"),
            }
            for name, task in tasks.items()
        },
    }
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "tmr.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    _plot(report, out_dir / "tmr.png")
    path = out_dir / "tmr.md"
    path.write_text(_markdown(report), encoding="utf-8")
    echo(f"wrote {path}, {out_dir / 'tmr.png'} and {work_dir / 'tmr.json'}")
    return path


def _vocab_fixed(run: Any, data: Any) -> Any:
    return dataclasses.replace(run.electra, vocab_size=data.tokenizer.vocab_size)


def _free_dir(path: Path) -> Path:
    """``path`` if it does not exist yet, else ``path-2``, ``path-3``... (never overwrite)."""
    candidate, index = path, 2
    while candidate.exists():
        candidate = path.with_name(f"{path.name}-{index}")
        index += 1
    return candidate


_CONDITIONS = (
    ("baseline", "ELECTRA (no replay)"),
    ("replay", "ELECTRA + replay (TMR)"),
    ("no_pretraining", "no pre-training (floor)"),
)


def _summaries(report: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """condition -> figure -> per-seed values."""
    out: dict[str, dict[str, list[float]]] = {}
    for entry in report["runs"]:
        figures = out.setdefault(entry["condition"], {})
        for task, result in entry["downstream"].items():
            for split in ("valid", "test"):
                figures.setdefault(f"{task}_{split}", []).append(result[f"{split}_accuracy"])
        if "pretrain" in entry:
            pre = entry["pretrain"]
            figures.setdefault("rtd_accuracy", []).append(
                pre["valid"].get("rtd_accuracy", math.nan)
            )
            figures.setdefault("rtd_recall", []).append(
                pre["valid"].get("rtd_replaced_recall", math.nan)
            )
            figures.setdefault("step_ms", []).append(pre["step_seconds_median"] * 1000)
            figures.setdefault("replay_ms", []).append(pre["replay_seconds_per_step"] * 1000)
            figures.setdefault("pretrain_s", []).append(pre["seconds"])
            figures.setdefault("generated", []).append(pre["generated_examples"])
            figures.setdefault("replayed", []).append(pre["replayed_examples"])
    return out


def _markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    stats = _summaries(report)
    tasks = report["tasks"]
    lines = [
        "# Transformer with Memory Replay (TMR): ELECTRA with and without replay",
        "",
        "Written by `memtx repro tmr` (`memtx.finetune.repro_tmr`). Every figure is the mean "
        f"± sample standard deviation over seeds {report['seeds']}; accuracies in %.",
        "",
        "| | "
        + " | ".join(
            [f"{t} test acc" for t in tasks]
            + [f"{t} valid acc" for t in tasks]
            + ["RTD acc (valid split)", "RTD recall", "ms / step", "pre-train s"]
        )
        + " |",
        "|---" * (5 + 2 * len(tasks)) + "|",
    ]
    for key, title in _CONDITIONS:
        if key not in stats:
            continue
        figures = stats[key]
        cells = [_fmt(figures[f"{t}_test"]) for t in tasks]
        cells += [_fmt(figures[f"{t}_valid"]) for t in tasks]
        if "rtd_accuracy" in figures:
            cells += [
                _fmt(figures["rtd_accuracy"], digits=2),
                _fmt(figures["rtd_recall"], digits=1),
                _fmt(figures["step_ms"], scale=1.0, digits=0),
                _fmt(figures["pretrain_s"], scale=1.0, digits=0),
            ]
        else:
            cells += ["-", "-", "-", "-"]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    lines.append("")
    if "baseline" in stats and "replay" in stats:
        base_ms = statistics.fmean(stats["baseline"]["step_ms"])
        replay_ms = statistics.fmean(stats["replay"]["step_ms"])
        paired = report["overhead"]
        lines += [
            "Replay's wall-clock overhead per pre-training step, paired measurement (both "
            f"models alternating on the same batches, {int(paired['rounds'])} steps each, "
            f"medians): **{paired['overhead_pct']:+.1f}%** ({paired['baseline_ms']:.1f} -> "
            f"{paired['replay_ms']:.1f} ms); the buffer's own work (sample, add, refresh "
            f"priorities) is {paired['bookkeeping_ms']:.2f} ms of it "
            f"({paired['bookkeeping_pct']:.1f}% of a step), the rest is the discriminator's "
            f"{int(paired['replayed_rows'])} extra replayed rows. From the runs' own medians "
            f"(noisier: the machine is shared): {base_ms:.0f} -> {replay_ms:.0f} ms "
            f"({100 * (replay_ms / base_ms - 1):+.1f}%).",
            "",
            "Generated (fresh) pre-training examples per run: "
            f"{int(statistics.fmean(stats['baseline']['generated'])):,} in both conditions; "
            "replayed on top with replay: "
            f"{int(statistics.fmean(stats['replay']['replayed'])):,}.",
            "",
        ]
        for task in tasks:
            diffs = [
                r - b
                for r, b in zip(stats["replay"][f"{task}_test"], stats["baseline"][f"{task}_test"])
            ]
            mean, spread = _mean_spread([100 * d for d in diffs])
            lines.append(
                f"- {task}: replay - baseline, paired by seed: {mean:+.1f} ± {spread:.1f} points "
                f"(per seed: {', '.join(f'{100 * d:+.1f}' for d in diffs)})."
            )
        lines.append("")
    e, r, p, f = cfg["electra"], cfg["replay"], cfg["pretrain"], cfg["finetune"]
    lines += [
        "## Setup",
        "",
        f"- Corpus: {cfg['data']['corpus']} ({cfg['data']['tokenizer']} tokens), pre-training "
        "windows from the train split; RTD accuracy on fixed windows of the valid split "
        f"({p['eval_examples']} windows, fixed masks), corrupted by each run's own generator.",
        f"- Discriminator: {e['backbone']} backbone, {e['n_layers']} layers, width "
        f"{e['d_model']}, {e['n_heads']} heads; generator width {e['generator_d_model']}, "
        f"{e['generator_layers']} layers; shared embedding; mask {e['mask_prob']}; "
        f"loss = MLM + {e['discriminator_weight']} x RTD; examples of {e['seq_len']} tokens.",
        f"- Pre-training: {p['steps']} steps x {p['batch_size']} fresh examples, AdamW lr "
        f"{p['lr']}, warmup {p['warmup_steps']}, cosine to {p['min_lr_ratio']} x lr.",
        f"- Replay: capacity {r['capacity']}, ratio {r['ratio']} of each discriminator batch, "
        f"priority {r['priority']}, alpha {r['alpha']}, beta {r['beta']} -> "
        f"{r['beta_final']}, eviction {r['eviction']}, replay from {r['min_fill']} examples.",
        f"- Fine-tuning: {f['epochs']} epochs, batch {f['batch_size']}, lr {f['lr']}, mean "
        "pooling + linear head; last epoch scored.",
    ]
    for name, task in tasks.items():
        lines.append(
            f"- Task `{name}`: {len(task['classes'])} classes, {task['train']} train / "
            f"{task['valid']} valid / {task['test']} test examples (fixed contiguous-block "
            f"splits); majority-class test accuracy {100 * task['majority_test']:.1f}%."
        )
    lines += [
        "- Tuning: the `[replay]` values were chosen on the valid split with separate seeds "
        "(the sweep and its rule are in the header of `configs/electra-tmr.toml`).",
        "",
        f"Total wall-clock: {report['seconds'] / 60:.1f} min.",
        "",
    ]
    return "\n".join(lines)


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = _summaries(report)
    tasks = list(report["tasks"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    keys = [k for k, _ in _CONDITIONS if k in stats]
    colors = {"baseline": "tab:blue", "replay": "tab:orange", "no_pretraining": "tab:gray"}
    width = 0.8 / len(keys)
    for offset, key in enumerate(keys):
        means, spreads = [], []
        for t in tasks:
            mean, spread = _mean_spread([100 * v for v in stats[key][f"{t}_test"]])
            means.append(mean)
            spreads.append(spread)
        xs = [i + (offset - (len(keys) - 1) / 2) * width for i in range(len(tasks))]
        label = dict(_CONDITIONS)[key]
        left.bar(xs, means, width, yerr=spreads, capsize=3, color=colors[key], label=label)
        for x, t in zip(xs, tasks):
            values = [100 * v for v in stats[key][f"{t}_test"]]
            left.scatter([x] * len(values), values, color="black", s=8, zorder=3)
    left.set_xticks(range(len(tasks)), [f"{t} (test)" for t in tasks])
    left.set_ylabel("accuracy (%)")
    left.set_title("downstream accuracy, mean ± sd over seeds")
    left.legend(fontsize=8)
    for entry in report["runs"]:
        curve = entry.get("train_rtd_loss")
        if curve:
            steps, losses = zip(*curve)
            right.plot(steps, losses, color=colors[entry["condition"]], alpha=0.6, lw=1)
    right.set_xlabel("pre-training step")
    right.set_ylabel("RTD loss on fresh examples")
    right.set_title("discriminator loss (blue: no replay, orange: replay)")
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
