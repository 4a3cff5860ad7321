"""Training on synthetic tasks with a curriculum, through the same loop as text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memtx.config import load_run_config
from memtx.errors import ConfigError
from memtx.train import load_saved_run, train

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
    ],
)
def test_bad_task_configs(item: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_run_config(None, overrides=[*TASK, item])


def test_task_that_does_not_fit_fails_before_writing(tmp_path: Path) -> None:
    run = load_run_config(None, overrides=[*TASK, "task.name=associative", "task.pairs=40"])
    with pytest.raises(ConfigError):
        train(run, out_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_task_run_evaluates_at_longer_lengths_from_the_cli(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from memtx.cli import app

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
