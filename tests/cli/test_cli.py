"""The CLI: thin, one line on stderr and exit code 2 for bad input, no partial files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memtx.cli import app
from tests.helpers import TINY

runner = CliRunner()


def _sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


@pytest.mark.parametrize(
    "verb", ["train", "eval", "demo", "bench", "generate", "inspect", "pretrain", "repro"]
)
def test_help(verb: str) -> None:
    result = runner.invoke(app, [verb, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "train.foo=1"], "unknown key train.foo"),
        (["--set", "train.lr=fast"], "train.lr must be float, got 'fast'"),
        (["--set", "model.segment_len=0"], "model.segment_len must be >= 1, got 0"),
        (["--set", "data.corpus=nowhere-corpus"], "corpus 'nowhere-corpus' is not a known name"),
        (["--set", "data.corpus=/no/such/file.txt"], "/no/such/file.txt"),
        (["--config", "configs/missing.toml"], "does not exist"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--out", str(out), *args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not out.exists()


def test_toml_syntax_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nname = 1")
    result = runner.invoke(app, ["train", "--config", str(bad), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "is not valid TOML" in result.stderr
    assert "Traceback" not in result.stderr


def test_eval_of_a_folder_without_a_run(tmp_path: Path) -> None:
    result = runner.invoke(app, ["eval", "--run", str(tmp_path)])
    assert result.exit_code == 2 and "holds no run" in result.stderr


def test_train_then_eval_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["train", "--out", str(out), "--no-progress", *_sets([*TINY, "train.steps=4"])]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 4
    result = runner.invoke(
        app, ["eval", "--run", str(out), "--json", "--max-tokens", "1000", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["tokens"] > 0 and report["bpc"] > 0
    # Evaluating Transformer-XL without its cache works from the same weights.
    result = runner.invoke(
        app,
        [
            "eval",
            "--run",
            str(out),
            "--json",
            "--max-tokens",
            "1000",
            "--no-progress",
            "--set",
            "model.mem_len=0",
        ],
    )
    assert result.exit_code == 0, result.output
    # A weight-changing override is refused clearly.
    result = runner.invoke(app, ["eval", "--run", str(out), "--set", "model.d_model=64"])
    assert result.exit_code == 2 and "does not fit" in result.stderr


def test_console_script_exit_code() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "memtx", "train", "--out", "/tmp/never", "--set", "x=1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:")


def test_generate_streams_text_and_rejects_bad_input(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["train", "--out", str(out), "--no-progress", *_sets([*TINY, "train.steps=2"])]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app,
        [
            "generate",
            "--run",
            str(out),
            "--prompt",
            "To be, or not",
            "--max-new-tokens",
            "40",
            "--seed",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(result.stdout.strip()) > 0
    result = runner.invoke(
        app, ["generate", "--run", str(out), "--prompt", "x", "--max-new-tokens", "-1"]
    )
    assert result.exit_code == 2 and "max-new-tokens" in result.stderr
    result = runner.invoke(app, ["generate", "--run", str(out), "--prompt", ""])
    assert result.exit_code == 2 and "prompt is empty" in result.stderr
    result = runner.invoke(app, ["generate", "--run", str(tmp_path), "--prompt", "x"])
    assert result.exit_code == 2 and "holds no run" in result.stderr
    empty_run = tmp_path / "no-checkpoint"
    empty_run.mkdir()
    (empty_run / "config.json").write_text((out / "config.json").read_text())
    result = runner.invoke(app, ["generate", "--run", str(empty_run), "--prompt", "x"])
    assert result.exit_code == 2 and "no intact checkpoint" in result.stderr


def test_bench_peak_reports_a_rate() -> None:
    result = runner.invoke(app, ["bench", "peak", "--sizes", "64"])
    assert result.exit_code == 0, result.output
    assert "GFLOP/s" in result.stdout
    result = runner.invoke(app, ["bench", "peak", "--dtype", "fp8"])
    assert result.exit_code == 2 and "--dtype" in result.stderr


def test_repro_rmt_passes_its_overrides_on(tmp_path: Path) -> None:
    # A bad --set value is named before anything trains.
    args = ["repro", "rmt", "--set", "task.last_stage_lr=-1", "--no-facts", "--tasks", "copy"]
    where = ["--runs", str(tmp_path / "r"), "--out", str(tmp_path / "o")]
    result = runner.invoke(app, [*args, "--variants", "rmt", *where])
    assert result.exit_code == 2
    assert "task.last_stage_lr must be >= 0" in result.output
    assert not (tmp_path / "r").exists()
