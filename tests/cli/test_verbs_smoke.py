"""Every CLI verb runs end to end at tiny settings (what other tests do not already run).

Already run end to end through the CLI elsewhere: ``train``, ``eval``, ``generate`` and
``bench peak`` (tests/cli/test_cli.py). Here: ``inspect``, ``demo``, ``pretrain``,
``repro rmt | memformer | tmr`` and ``bench mrbp | scaling | peers``.

``bench mrbp`` and ``bench peers`` only take the reference sizes on the command line, and
``repro memformer`` its 100,000 evaluation tokens, so their tests call the verb with the
library function wrapped to add tiny settings: the verb's parsing, the benchmark and its
worker processes all run, on a small model.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from memtx.cli import app
from memtx.haystack import DEMO_RUN
from tests.helpers import TINY

runner = CliRunner()


def _invoke(*args: str) -> str:
    """Run ``memtx ARGS`` in this process; its stdout (fails with the output otherwise)."""
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def _sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


# --------------------------------------------------------------------------- verbs


def test_inspect(tmp_path: Path) -> None:
    base = [item for item in TINY if not item.startswith(("model.name", "model.mem_len"))]
    memformer = ["model.name=memformer", "model.encoder_layers=1", "model.decoder_layers=1"]
    settings = [*base, *memformer, "model.memory_slots=4", "train.steps=2"]
    _invoke("train", "--out", str(tmp_path / "run"), "--no-progress", *_sets(*settings))
    out = _invoke(
        "inspect", "--run", str(tmp_path / "run"), "--max-segments", "4",
        "--out", str(tmp_path / "inspect"),
    )  # fmt: skip
    assert "retention" in out and "wrote" in out
    assert any(path.suffix == ".png" for path in (tmp_path / "inspect").iterdir())


@pytest.mark.slow
def test_demo(tmp_path: Path) -> None:
    settings = _sets("train.steps=2", "train.eval_tokens=500", "train.batch_size=4")
    run = tmp_path / "demo"
    memory = ["--haystack-tokens", "4096"] if DEMO_RUN.is_dir() else ["--no-memory"]
    out = _invoke("demo", "--config", "configs/demo.toml", "--out", str(run), *settings, *memory)
    assert "before training" in out and "after training" in out
    assert (run / "loss.png").stat().st_size > 0
    if DEMO_RUN.is_dir():
        assert "memory at work" in out and "tokens/s" in out and "KB" in out


@pytest.mark.parametrize("tokens", ["1000", "100"])
def test_demo_refuses_a_bad_haystack_length_before_training(tmp_path: Path, tokens: str) -> None:
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), "--haystack-tokens", tokens])
    assert result.exit_code == 2 and not (tmp_path / "d").exists()


#: The bundled ELECTRA preset shrunk to seconds (bytes, one block, three steps).
ELECTRA = [
    "--config", "configs/electra-small.toml",
    *_sets(
        "data.tokenizer=byte", "electra.seq_len=32", "electra.d_model=32",
        "electra.n_layers=1", "electra.n_heads=2", "electra.generator_d_model=16",
        "electra.generator_layers=1", "electra.generator_heads=1", "replay.capacity=16",
        "replay.ratio=0.2", "replay.min_fill=4", "pretrain.steps=3", "pretrain.batch_size=4",
        "pretrain.warmup_steps=1", "pretrain.eval_examples=8", "finetune.epochs=1",
        "finetune.max_len=32", "finetune.passage_len=32", "finetune.max_train_per_class=4",
        "finetune.max_eval_per_class=2", 'finetune.speaker_plays=["hamlet_gut"]',
        'finetune.play_names=["hamlet_gut", "othello_gut"]',
    ),
]  # fmt: skip


def test_pretrain(tmp_path: Path) -> None:
    out = _invoke("pretrain", "--out", str(tmp_path / "run"), *ELECTRA, "--no-progress")
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["steps"] == 3 and summary["generated_examples"] > 0, summary
    assert (tmp_path / "run" / "config.json").exists()


def test_repro_tmr(tmp_path: Path) -> None:
    out = _invoke(
        "repro", "tmr", "--out", str(tmp_path / "bench"), "--seeds", "0", *ELECTRA,
        "--runs", str(tmp_path / "runs"), "--threads", "1", "--probe", "--shots", "2",
        "--finetune-seeds", "0",
    )  # fmt: skip
    assert "wrote" in out
    text = (tmp_path / "bench" / "tmr.md").read_text()
    assert "ELECTRA + replay (TMR)" in text
    assert "2-shot/play | 2-shot/speaker | probe/play | probe/speaker |" in text


def test_repro_rmt(tmp_path: Path) -> None:
    settings = _sets(
        "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "task.eval_samples=8"
    )
    out = _invoke(
        "repro", "rmt", "--out", str(tmp_path / "bench"), "--runs", str(tmp_path / "runs"),
        "--steps", "3", "--stage-steps", "1", "--no-facts", "--tasks", "copy",
        "--variants", "rmt", *settings,
    )  # fmt: skip
    assert "wrote" in out
    assert "| copy | rmt |" in (tmp_path / "bench" / "rmt.md").read_text()


@pytest.mark.slow
def test_repro_memformer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import memtx.repro.memformer

    _tiny(
        monkeypatch, memtx.repro.memformer, "repro_memformer", eval_tokens=1000,
        infer_tokens=256, infer_rows=2,
    )  # fmt: skip
    out = _invoke(
        "repro", "memformer", "--out", str(tmp_path / "bench"), "--runs", str(tmp_path / "runs"),
        "--caches", "16", "--steps", "2", "--threads", "1",
        *_sets("model.d_model=32", "train.warmup_steps=1"),
    )  # fmt: skip
    assert "wrote" in out
    rows = json.loads((tmp_path / "bench" / "memformer.json").read_text())["rows"]
    assert rows and all(row["status"] == "ok" for row in rows), rows


# --------------------------------------------------------------------------- bench


def test_bench_scaling(tmp_path: Path) -> None:
    out = _invoke(
        "bench", "scaling", "--out", str(tmp_path), "--lengths", "256",
        "--models", "transformer_xl", "--mem-len", "16",
    )  # fmt: skip
    assert "wrote" in out
    rows = json.loads((tmp_path / "scaling.json").read_text())
    assert [row["status"] for row in rows] == ["ok"], rows


def _tiny(monkeypatch: pytest.MonkeyPatch, module: Any, name: str, **tiny: Any) -> None:
    """Make ``module.name`` (what the verb imports when it runs) build at tiny sizes."""
    monkeypatch.setattr(module, name, functools.partial(getattr(module, name), **tiny))


def test_bench_mrbp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from memtx.bench import mrbp

    sizes = {"d_model": 32, "n_heads": 2, "d_ff": 64, "encoder_layers": 1, "decoder_layers": 1}
    _tiny(
        monkeypatch, mrbp, "run_mrbp_benchmark", **sizes, memory_slots=4, segment_len=8,
        batch_size=2, warmup=0, strategies=("mrbp",), threads=1, progress=False,
    )  # fmt: skip
    out = _invoke("bench", "mrbp", "--out", str(tmp_path), "--rollouts", "2", "--steps", "1")
    assert "wrote" in out
    rows = json.loads((tmp_path / "mrbp.json").read_text())["results"]
    assert [row["status"] for row in rows] == ["ok"], rows
    assert (tmp_path / "mrbp.png").stat().st_size > 0


def _bench_peers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rows: list[str]) -> list[dict]:
    from memtx.bench import peers

    tiny = peers.PeerSizes(
        d_model=32, n_heads=2, d_ff=64, segment_len=8, batch_size=2, rollout=2,
        encoder_layers=1, decoder_layers=1, memory_slots=4, rmt_layers=1, memory_tokens=4,
    )  # fmt: skip
    _tiny(
        monkeypatch, peers, "run_peers_benchmark", sizes=tiny, rows=rows, warmup=0,
        jobs=2, progress=False,
    )  # fmt: skip
    out = _invoke("bench", "peers", "--out", str(tmp_path), "--steps", "1", "--threads", "1")
    assert "wrote" in out and (tmp_path / "peers.md").exists()
    return json.loads((tmp_path / "peers.json").read_text())["rows"]


def test_bench_peers_memtx_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = _bench_peers(tmp_path, monkeypatch, ["memtx-rmt-full"])
    assert [r["status"] for r in results] == ["ok"], results


def test_bench_peers_peer_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("memformer", "recurrent_memory_transformer_pytorch", "hyper_connections"):
        pytest.importorskip(module)
    from memtx.bench.peers import ROWS

    theirs = [row for row, spec in ROWS.items() if spec.package is not None]
    results = _bench_peers(tmp_path, monkeypatch, theirs)
    assert [r["status"] for r in results] == ["ok"] * len(theirs), results
