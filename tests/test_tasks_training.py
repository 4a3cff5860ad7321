"""Training on synthetic tasks with a curriculum, through the same loop as text."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memtx.cli import app
from memtx.config import load_run_config
from memtx.errors import ConfigError
from memtx.train import load_saved_run, train
from tests.helpers import bpe_corpus

SPLIT = ("--by-distance", "--json")
TASK = [
    "model.name=rmt",
    "model.d_model=32",
    "model.n_heads=2",
    "model.n_layers=2",
    "model.segment_len=8",
    "model.memory_tokens=4",
    "train.batch_size=8",
    "train.steps=12",
    "train.lr=3e-3",
    "train.warmup_steps=2",
    "train.log_every=1",
    "train.eval_every=3",
    "train.checkpoint_every=4",
    "task.name=copy",
    "task.segments=3",
    "task.stages=[1, 2, 3]",
    "task.stage_steps=4",
    "task.eval_samples=16",
    "task.alphabet=4",
]


def _lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_curriculum_moves_through_the_stages(tmp_path: Path) -> None:
    result = train(load_run_config(None, overrides=TASK), out_dir=tmp_path / "run", progress=False)
    events = [m["event"] for m in _lines(tmp_path / "run") if "event" in m]
    assert events[:2] == [
        "curriculum stage 1: 2 segments (stage_steps reached)",
        "curriculum stage 2: 3 segments (stage_steps reached)",
    ]
    valid = [m for m in _lines(tmp_path / "run") if m.get("split") == "valid"]
    assert [m["segments"] for m in valid][:2] == [1.0, 2.0]
    assert 0.0 <= result.valid["token_accuracy"] <= 1.0
    assert result.valid["segments"] == 3.0


def test_early_advance_and_stop_when_solved(tmp_path: Path) -> None:
    # A threshold of 0 advances at the first check and stops at the last stage.
    run = load_run_config(
        None,
        overrides=[
            *TASK,
            "task.advance_at=0.0",
            "task.stop_at=0.0",
            "task.stage_steps=100",
            "train.steps=100",
        ],
    )
    result = train(run, out_dir=tmp_path / "run", progress=False)
    assert result.steps == 9  # checks at steps 3, 6, 9
    events = [m["event"] for m in _lines(tmp_path / "run") if "event" in m]
    assert events[-1].startswith("solved at 3 segments")


def test_last_stage_lr_caps_the_rate_from_the_last_stage_on(tmp_path: Path) -> None:
    # Stages of 4 steps: steps 1-8 follow the schedule (3e-3), steps 9-12 are capped.
    run = load_run_config(
        None, overrides=[*TASK, "task.last_stage_lr=5e-4", "train.min_lr_ratio=1.0"]
    )
    train(run, out_dir=tmp_path / "run", progress=False)
    rates = {m["step"]: m["lr"] for m in _lines(tmp_path / "run") if m.get("split") == "train"}
    assert [rates[s] for s in range(3, 9)] == pytest.approx([3e-3] * 6)
    assert [rates[s] for s in range(9, 13)] == pytest.approx([5e-4] * 4)
    # Resumed in the last stage, the cap still holds.
    run = load_run_config(
        None,
        overrides=[*TASK, "task.last_stage_lr=5e-4", "train.min_lr_ratio=1.0", "train.steps=14"],
    )
    train(run, out_dir=tmp_path / "run", resume=True, progress=False)
    rates = {m["step"]: m["lr"] for m in _lines(tmp_path / "run") if m.get("split") == "train"}
    assert rates[14] == pytest.approx(5e-4)


def test_source_length_curriculum_grows_the_source_at_fixed_segments(tmp_path: Path) -> None:
    run = load_run_config(
        None,
        overrides=[
            *TASK,
            "task.stages=[]",
            "task.source_stages=[2, 4, 6]",
            "task.filler_at=start",
            "train.steps=9",
        ],
    )
    train(run, out_dir=tmp_path / "run", progress=False)
    events = [m["event"] for m in _lines(tmp_path / "run") if "event" in m]
    assert events[:2] == [
        "curriculum stage 1: 3 segments, source 4 (stage_steps reached)",
        "curriculum stage 2: 3 segments, source 6 (stage_steps reached)",
    ]
    valid = [m for m in _lines(tmp_path / "run") if m.get("split") == "valid"]
    assert [(m["segments"], m["source_len"]) for m in valid] == [(3.0, 2.0), (3.0, 4.0), (3.0, 6.0)]


def test_source_stages_shape_the_samples() -> None:
    from memtx.training.sources import TaskSource

    cfg = load_run_config(
        None, overrides=[*TASK, "task.source_stages=[2, 5, 9]", "task.filler_at=start"]
    ).task
    assert cfg is not None
    source = TaskSource(cfg, segment_len=8, rows=4, rank=0, seed=0)
    for stage, source_len in enumerate((2, 5, 9)):
        source.stage = stage
        batch = source.next_batch()
        text = bytes(batch.inputs[0].tolist())
        assert len(text) == 8 * cfg.stage_segments[stage]
        # [filler][source]["="][copy]: the scored copy has the stage's source length.
        assert batch.count == 4 * source_len
        assert text.index(b"=") == len(text) - source_len
        assert text.rstrip(b"abcd").endswith(b"=")
        assert set(text[: len(text) - 2 * source_len]) == {ord(".")}


def test_task_run_resumes_exactly(tmp_path: Path) -> None:
    run = load_run_config(None, overrides=TASK)
    train(run, out_dir=tmp_path / "straight", progress=False)
    train(run, out_dir=tmp_path / "broken", progress=False, stop_after=6)
    train(
        load_saved_run(tmp_path / "broken"),
        out_dir=tmp_path / "broken",
        resume=True,
        progress=False,
    )

    def losses(name: str) -> list[float]:
        return [m["loss"] for m in _lines(tmp_path / name) if m.get("split") == "train"]

    assert losses("straight") == losses("broken")


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("task.stages=[2, 1]", "must not decrease"),
        ("task.name=sorting", "task.name must be"),
        ("task.segments=0", "task.segments must be >= 1"),
        ("task.source_stages=[4, 2, 6]", "source_stages must not decrease"),
        ("task.source_stages=[0, 2, 6]", "source lengths >= 1"),
        ("task.source_stages=[2, 4]", "must have the same length"),
        ("task.name=facts\ntask.source_stages=[2, 4, 6]", "copy and reverse only"),
        ("task.last_stage_lr=-1e-4", "task.last_stage_lr must be >= 0"),
        ("task.name=babilong\ntask.qa=qa9", "task.qa must be"),
        ("task.name=babilong\ntask.story_facts=-1", "task.story_facts must be >= 0"),
        ("task.name=babilong\ntask.fact_stages=[1, 4, 2]", "fact_stages must not decrease"),
        ("task.name=babilong\ntask.fact_stages=[0, 2, 4]", "story fact counts >= 1"),
        ("task.name=babilong\ntask.fact_stages=[1, 2]", "must have the same length"),
        ("task.fact_stages=[1, 2, 4]", "babilong only"),
        ("task.background_stages=[false, true]", "background_stages applies to babilong only"),
        (
            "task.name=babilong\ntask.background_stages=[1, 2]",
            r"background_stages must be tuple\[bool",
        ),
        (
            "task.name=babilong\ntask.stages=[1, 1, 1]\ntask.background_stages=[false, true]",
            r"task.stages \(3 stages\) and task.background_stages \(2\) must have the same",
        ),
        (
            "task.name=babilong\ntask.stages=[]\ntask.fact_stages=[2, 4]\n"
            "task.background_stages=[false, true, true]",
            r"task.fact_stages \(2 stages\) and task.background_stages \(3\) must have",
        ),
        ("task.advance_on=loss", "task.advance_on must be"),
    ],
)
def test_bad_task_configs(item: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_run_config(None, overrides=[*TASK, *item.split("\n")])


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["task.name=associative", "task.pairs=40"], "pairs \\(40\\) must be <= keys"),
        (["task.source_stages=[2, 4, 20]"], "too small for source_len 20"),
    ],
)
def test_task_that_does_not_fit_fails_before_writing(
    tmp_path: Path, items: list[str], message: str
) -> None:
    run = load_run_config(None, overrides=[*TASK, *items])
    with pytest.raises(ConfigError, match=message):
        train(run, out_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_task_run_evaluates_at_longer_lengths_from_the_cli(tmp_path: Path) -> None:
    train(
        load_run_config(None, overrides=[*TASK, "train.steps=2"]),
        out_dir=tmp_path / "run",
        progress=False,
    )
    runner = CliRunner()
    for segments in (3, 12):
        result = runner.invoke(
            app,
            [
                "eval",
                "--run",
                str(tmp_path / "run"),
                "--segments",
                str(segments),
                "--samples",
                "8",
                "--json",
            ],
        )
        assert result.exit_code == 0, result.output
        metrics = json.loads(result.stdout.strip().splitlines()[-1])
        assert metrics["segments"] == segments and 0 <= metrics["token_accuracy"] <= 1
    result = runner.invoke(app, ["eval", "--run", str(tmp_path / "run"), "--segments", "0"])
    assert result.exit_code == 2 and "--segments must be >= 1" in result.stderr
    result = runner.invoke(app, ["eval", "--run", str(tmp_path / "run"), "--by-distance"])
    assert result.exit_code == 2 and "--by-distance is for babilong runs" in result.stderr
    for extra in (["--split", "test"], ["--max-tokens", "10"], ["--rows", "2"], ["--data", "x"]):
        result = runner.invoke(app, ["eval", "--run", str(tmp_path / "run"), *extra])
        assert result.exit_code == 2, result.output
        assert f"{extra[0]}: for text runs" in result.stderr


BABILONG = [
    *TASK[:4],
    "model.segment_len=64",
    "model.memory_tokens=4",
    "train.batch_size=16",
    "train.steps=400",
    "train.lr=3e-3",
    "train.warmup_steps=10",
    "train.log_every=10",
    "train.eval_every=100",
    "task.name=babilong",
    "task.qa=qa1",
    "task.segments=2",
    "task.story_facts=2",
    "task.eval_samples=64",
]


@pytest.fixture(scope="module")
def shakespeare():
    from memtx.config import DataConfig
    from memtx.data import prepare_data

    return prepare_data(DataConfig())


@pytest.mark.slow
def test_a_tiny_rmt_learns_babilong_qa1_at_two_segments(tmp_path: Path, shakespeare) -> None:
    from memtx.train import evaluate_task_run

    run = load_run_config(None, overrides=BABILONG)
    result = train(run, out_dir=tmp_path / "run", data=shakespeare, progress=False)
    valid = [m for m in _lines(tmp_path / "run") if m.get("split") == "valid"]
    train_losses = [m["loss"] for m in _lines(tmp_path / "run") if m.get("split") == "train"]
    # Two facts, one asked about: chance is 1/6 (six places), copying a place of the
    # story about 1/2; the model reads the right one.
    assert result.valid["exact_match"] >= 0.6, valid
    assert result.valid["loss"] < 0.5 * valid[0]["loss"] or valid[0]["exact_match"] >= 0.6
    assert train_losses[-1] < 0.5 * train_losses[0]
    # Evaluated again from the run folder, on held-out documents, at twice the length.
    metrics = evaluate_task_run(tmp_path / "run", segments=4, samples=16)
    assert metrics["segments"] == 4.0 and 0.0 <= metrics["exact_match"] <= 1.0


def test_babilong_validation_reads_held_out_documents(shakespeare) -> None:
    from memtx.training.sources import TaskSource

    cfg = load_run_config(None, overrides=BABILONG).task
    assert cfg is not None and cfg.needs_background
    source = TaskSource(
        cfg,
        segment_len=64,
        rows=4,
        rank=0,
        seed=0,
        noise=shakespeare.train,
        eval_noise=shakespeare.valid,
    )
    training, held_out = source.task(2), source.task(2, held_out=True)
    assert len(training.noise) == len(shakespeare.train)
    assert len(held_out.noise) == len(shakespeare.valid)
    # Every validation row's background is a slice of the held-out text, not the train one.
    valid_text = shakespeare.valid.astype("uint8").tobytes()
    sample = held_out.sample(4, seed=0)
    for row in sample.inputs:
        story = rb"(?:Mary|John|Sandra|Daniel) (?:moved|went|journeyed|travelled) to the \w+\. "
        background = re.sub(story, b"", bytes(row.tolist())).rsplit(b"Where is", 1)[0]
        assert len(background) > 10 and background in valid_text
    assert source.next_batch().inputs.shape == (4, 128)


def test_vary_segments_draws_each_batch_from_the_first_stage_to_the_current(
    shakespeare,
) -> None:
    from memtx.training.sources import TaskSource

    overrides = [*BABILONG, "task.segments=6", "task.stages=[2, 6]", "task.vary_segments=true"]
    cfg = load_run_config(None, overrides=overrides).task
    assert cfg is not None and cfg.vary_segments
    source = TaskSource(
        cfg,
        segment_len=64,
        rows=2,
        rank=0,
        seed=0,
        noise=shakespeare.train,
        eval_noise=shakespeare.valid,
    )
    assert {source.next_batch().inputs.shape[1] for _ in range(8)} == {128}  # stage 0: 2
    assert source.after_validation({"exact_match": 1.0}).startswith("curriculum stage 1")
    lengths = {source.next_batch().inputs.shape[1] // 64 for _ in range(60)}
    assert lengths == {2, 3, 4, 5, 6}
    # validation stays at the stage's length
    assert source.segments == 6
    fixed = TaskSource(
        load_run_config(None, overrides=[*overrides[:-1]]).task,
        segment_len=64,
        rows=2,
        rank=0,
        seed=0,
        noise=shakespeare.train,
    )
    fixed.after_validation({"exact_match": 1.0})
    assert {fixed.next_batch().inputs.shape[1] for _ in range(8)} == {384}


def test_fact_stages_grow_the_story_and_babilong_advances_on_exact_match(shakespeare) -> None:
    from memtx.training.sources import TaskSource

    overrides = [
        *BABILONG,
        "task.segments=4",
        "task.stages=[4, 4, 4]",
        "task.fact_stages=[1, 2, 4]",
        "task.background=false",
        "task.advance_at=0.9",
    ]
    cfg = load_run_config(None, overrides=overrides).task
    assert cfg is not None and cfg.advance_metric == "exact_match"
    source = TaskSource(cfg, segment_len=64, rows=8, rank=0, seed=0, noise=shakespeare.train)
    for stage, facts in enumerate((1, 2, 4)):
        for row in source.next_batch().inputs:
            story = bytes(row.tolist()).decode().strip().split(" Where is ")[0]
            assert story.count(".") == facts, story
        if stage < 2:
            # 8-byte answers are right in all but their first byte long before they are
            # right in full: token accuracy alone must not end a stage.
            assert source.after_validation({"token_accuracy": 0.99, "exact_match": 0.5}) is None
            message = source.after_validation({"token_accuracy": 0.99, "exact_match": 0.95})
            assert message == (
                f"curriculum stage {stage + 1}: 4 segments, {(1, 2, 4)[stage + 1]} story facts "
                "(exact match 0.950)"
            )
    assert source.task(4).story_facts == 4  # evaluation: the last stage's story
    assert load_run_config(None, overrides=TASK).task.advance_metric == "token_accuracy"


def test_background_stages_show_the_story_alone_then_hide_it_in_text(shakespeare) -> None:
    from memtx.training.sources import TaskSource

    overrides = [
        *BABILONG,
        "task.segments=4",
        "task.stages=[4, 4]",
        "task.background_stages=[false, true]",
    ]
    cfg = load_run_config(None, overrides=overrides).task
    assert cfg is not None
    source = TaskSource(cfg, segment_len=64, rows=8, rank=0, seed=0, noise=shakespeare.train)

    def left_padded() -> list[bool]:  # a row that starts with the pad is the story alone
        return [bytes(row[:8].tolist()) == b" " * 8 for row in source.next_batch().inputs]

    assert left_padded() == [True] * 8
    message = source.after_validation({"exact_match": 1.0})
    assert message == "curriculum stage 1: 4 segments, background (exact match 1.000)"
    assert left_padded() == [False] * 8  # the same stories among Shakespeare's lines
    assert source.task(4).background  # evaluation: the last stage's haystack


def test_a_bare_story_padded_to_its_longest_story_ends_in_a_partial_segment_and_trains(
    shakespeare, tmp_path: Path
) -> None:
    from memtx.training.sources import TaskSource

    overrides = [
        *BABILONG,
        "task.stages=[2, 2]",
        "task.background_stages=[false, true]",
        "task.story_padding=longest",
        "task.stage_steps=3",
        "train.steps=6",
        "train.eval_every=2",
        "task.eval_samples=8",
    ]
    run = load_run_config(None, overrides=overrides)
    assert run.task is not None
    source = TaskSource(run.task, segment_len=64, rows=4, rank=0, seed=0, noise=shakespeare.train)
    bare = source.next_batch().inputs
    assert 64 < bare.shape[1] < 2 * 64  # 2 facts and the question: 1.4 segments of bytes
    source.after_validation({"exact_match": 1.0})
    assert source.next_batch().inputs.shape[1] == 2 * 64  # hidden in its 2 segments
    train(run, out_dir=tmp_path / "run", progress=False)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    valid = [m for m in metrics if m.get("split") == "valid"]
    assert [m["background"] for m in valid] == [0.0, 1.0, 1.0]  # steps 2, 4 and 6


def test_babilong_in_bpe_tokens_learns_the_task_words_and_evaluates_from_its_folder(
    tmp_path: Path,
) -> None:
    from memtx.data import load_tokenizer
    from memtx.train import evaluate_task_run

    overrides = [
        *BABILONG,
        *bpe_corpus(tmp_path / "plays", vocab_size=600, part_bytes=80_000),
        "train.steps=4",
        "task.eval_samples=4",
    ]
    train(load_run_config(None, overrides=overrides), out_dir=tmp_path / "run", progress=False)
    saved = load_saved_run(tmp_path / "run")
    tokenizer = load_tokenizer(tmp_path / "run")
    assert tokenizer.kind == "bpe" and saved.model.vocab_size == tokenizer.vocab_size == 600
    # The tokenizer learned the task's words with the corpus: one token each.
    for word in (" Sandra", " journeyed", " hallway", " bathroom", " kitchen"):
        assert len(tokenizer.encode(word)) == 1, word
    metrics = evaluate_task_run(tmp_path / "run", segments=4, samples=4)
    assert metrics["segments"] == 4.0 and 0.0 <= metrics["exact_match"] <= 1.0
    # Split by where the fact ends: the same samples, the same figures.
    split = evaluate_task_run(tmp_path / "run", segments=4, samples=4, by_distance=True)
    for key in ("loss", "token_accuracy", "exact_match"):
        assert split[key] == pytest.approx(metrics[key], abs=1e-9)
    assert sum(v for k, v in split.items() if k.startswith("samples_back_")) == 4
    shown = CliRunner().invoke(
        app,
        ["eval", "--run", str(tmp_path / "run"), "--segments", "4", "--samples", "4", *SPLIT],
    )
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["exact_match"] == pytest.approx(metrics["exact_match"])


def test_a_byte_level_task_refuses_another_tokenizer(tmp_path: Path) -> None:
    run = load_run_config(None, overrides=[*TASK, "data.tokenizer=bpe"])
    with pytest.raises(ConfigError, match=r"task 'copy' is byte-level.*also take 'bpe'"):
        train(run, out_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
