"""memtx bench babilong at tiny settings: cells saved as they finish, runs and cells reused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import memtx.evaluate
from memtx.bench.babilong import (
    MODELS,
    QA1_ONLY,
    TASK_OVERRIDES,
    bench_babilong,
    length_label,
    run_config,
    write_report,
)
from memtx.cli import app
from memtx.errors import ConfigError
from tests.helpers import bpe_corpus

TINY = [
    "model.d_model=16",
    "model.n_heads=2",
    "model.n_layers=1",
    "train.steps=2",
    "train.eval_every=2",
    "train.checkpoint_every=2",
    "task.eval_samples=2",
]


def _bench(tmp_path: Path, lengths: list[int], **kwargs) -> Path:
    return bench_babilong(
        out_dir=tmp_path / "out",
        runs_dir=tmp_path / "runs",
        models=kwargs.pop("models", ["rmt", "transformer"]),
        tasks=["qa1"],
        lengths=lengths,
        samples=3,
        long_samples=2,
        batch_size=2,
        overrides=kwargs.pop("overrides", TINY),
        progress=False,
        echo=kwargs.pop("echo", lambda _: None),
        **kwargs,
    )


def test_labels() -> None:
    assert [length_label(n) for n in (0, 256, 1024, 65536, 1048576)] == [
        "0",
        "256",
        "1K",
        "64K",
        "1M",
    ]


def test_cells_are_saved_as_they_finish_and_a_killed_run_continues(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Killed(Exception):
        pass

    real = memtx.evaluate.evaluate_haystacks
    calls: list[int] = []
    die = [True]

    def dies_on_the_third(*args, **kwargs):
        calls.append(args[1].total_len)
        if die[0] and len(calls) == 3:
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(memtx.evaluate, "evaluate_haystacks", dies_on_the_third)
    with pytest.raises(Killed):
        _bench(tmp_path, [0, 256])
    saved = json.loads((tmp_path / "out" / "babilong.json").read_text())["cells"]
    assert sorted(saved) == ["rmt/qa1/0", "rmt/qa1/256"]
    assert not (tmp_path / "out" / "babilong.md").exists()

    # Run again (one more length): the finished runs and the saved cells are reused.
    calls.clear()
    die[0] = False
    said: list[str] = []
    md = _bench(tmp_path, [0, 256, 512], echo=said.append)
    assert len(calls) == 1 + 3  # rmt at 512; the transformer at 0, 256, 512
    assert any("reusing the finished run" in line and "rmt-qa1" in line for line in said)
    assert any("2 of 6 cells already saved" in line for line in said)
    text = md.read_text()
    assert "| RMT | qa1 |" in text and "| Transformer (no memory) | qa1 |" in text
    assert "valid+test documents" in text
    assert (tmp_path / "out" / "babilong.png").stat().st_size > 0
    cells = json.loads((tmp_path / "out" / "babilong.json").read_text())["cells"]
    assert len(cells) == 6
    for cell in cells.values():
        assert 0.0 <= cell["exact_match"] <= 1.0 and cell["samples"] == 3
        assert cell["tokens"] == 3 * (cell["segments"] * 64) and cell["tokens_per_s"] > 0
    assert cells["rmt/qa1/0"]["segments"] == 4 and cells["rmt/qa1/512"]["segments"] == 8
    for cell in cells.values():  # every sample in one bin of where its fact ends, no more
        assert sum(rows for _, rows in cell["by_distance"].values()) == 3
        assert not any(key.startswith(("samples_back_", "exact_match_back_")) for key in cell)
    assert "Exact match by how many segments before the question's" in text
    assert "| RMT, qa1, 512 |" in text and "| RMT, qa1, 0 |" not in text

    # Delete the report and run once more: nothing is trained or evaluated again.
    md.unlink()
    calls.clear()
    _bench(tmp_path, [0, 256, 512])
    assert calls == [] and md.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--models", "gpt5"], "unknown"),
        (["--tasks", "qa9"], "unknown"),
        (["--lengths", "100"], "not a multiple of 64"),
        (["--lengths", "64"], "too short"),
        (["--samples", "0"], "--samples must be >= 1"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(
    tmp_path: Path, args: list[str], message: str
) -> None:
    out, runs = tmp_path / "out", tmp_path / "runs"
    result = CliRunner().invoke(
        app, ["bench", "babilong", "--out", str(out), "--runs", str(runs), *args]
    )
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists() and not runs.exists()


def test_the_verb_end_to_end(tmp_path: Path) -> None:
    out, runs = tmp_path / "out", tmp_path / "runs"
    sets = [arg for item in TINY for arg in ("--set", item)]
    args = ["--models", "transformer", "--tasks", "qa1", "--lengths", "0,256", "--samples", "2"]
    args += ["--no-progress"]
    result = CliRunner().invoke(
        app, ["bench", "babilong", "--out", str(out), "--runs", str(runs), *args, *sets]
    )
    assert result.exit_code == 0, result.output
    assert (runs / "transformer-qa1" / "loss.png").exists()
    text = (out / "babilong.md").read_text()
    assert "| Transformer (no memory) | qa1 |" in text and "Made by:" in text


@pytest.mark.parametrize("model", list(MODELS))
def test_every_row_is_its_preset_with_overrides_that_apply(model: str) -> None:
    label, _, overrides = MODELS[model]
    for qa in TASK_OVERRIDES:
        if model in QA1_ONLY and qa != "qa1":
            with pytest.raises(ConfigError, match="is a qa1 row"):
                run_config(model, qa)
            continue
        run = run_config(model, qa)
        assert run.model.name in model and run.task is not None and run.task.qa == qa
    for override in overrides:  # each override is in the config it made
        section, rest = override.split(".", 1)
        key, value = rest.split("=", 1)
        got = getattr(getattr(run, section), key)
        if isinstance(got, tuple):  # a list override, e.g. task.stages=[4, 8]
            assert list(got) == json.loads(value), (label, override)
            continue
        assert str(got).lower() == value.lower() or float(got) == float(value), (label, override)


def test_a_bpe_row_is_scored_on_held_out_text_in_its_own_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from memtx.data import load_tokenizer

    corpus = tmp_path / "plays"
    overrides = [*TINY, *bpe_corpus(corpus, vocab_size=400)]
    kwargs = {"overrides": overrides, "models": ["rmt"], "corpus": str(corpus)}
    md = _bench(tmp_path, [0, 256], **kwargs)
    tokenizer = load_tokenizer(tmp_path / "runs" / "rmt-qa1")
    assert tokenizer.kind == "bpe" and len(tokenizer.encode(" bathroom")) == 1
    cells = json.loads((tmp_path / "out" / "babilong.json").read_text())["cells"]
    hidden = cells["rmt/qa1/256"]
    assert "bpe tokens, never trained on" in hidden["background"]
    assert hidden["tokens"] == 3 * 256 and 0.0 <= hidden["exact_match"] <= 1.0
    # The saved cells are fresh for the same run: nothing is evaluated again.
    calls: list[int] = []
    real = memtx.evaluate.evaluate_haystacks

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(memtx.evaluate, "evaluate_haystacks", counted)
    _bench(tmp_path, [0, 256], **kwargs)
    assert calls == [] and md.exists()
    # Cells lost (a run killed after training): the finished BPE run is reused, not refused
    # for the vocabulary size its tokenizer set.
    (tmp_path / "out" / "babilong.json").unlink()
    said: list[str] = []
    _bench(tmp_path, [0, 256], **kwargs, echo=said.append)
    assert len(calls) == 2 and any(line.startswith("reusing the finished run") for line in said)


def test_a_bpe_row_whose_story_fits_one_segment_only_in_its_tokens_is_not_refused(
    tmp_path: Path,
) -> None:
    # In bytes a 4-fact story needs 160 tokens (3 segments of 64); in the run's BPE, 29.
    corpus = tmp_path / "plays"
    overrides = [*TINY, *bpe_corpus(corpus, vocab_size=400), "task.stages=[1]"]
    _bench(tmp_path, [0], overrides=overrides, models=["rmt"], corpus=str(corpus))
    cells = json.loads((tmp_path / "out" / "babilong.json").read_text())["cells"]
    assert cells["rmt/qa1/0"]["segments"] == 1 and cells["rmt/qa1/0"]["tokens"] == 3 * 64


def _cell(qa: str, length: int, exact: float) -> dict[str, object]:
    return {
        "length": length,
        "samples": 4,
        "exact_match": exact,
        "tokens_per_s": 1.0,
        "background": "x",
        "qa": qa,
    }


def test_the_report_holds_only_what_was_measured(tmp_path: Path) -> None:
    lengths = [0, 65536]
    cells = {f"armt/{qa}/{n}": _cell(qa, n, 0.5) for qa in ("qa1", "qa4") for n in lengths}
    payload = {"background": "test text", "cells": cells}
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    with_qa1 = write_report(
        tmp_path / "a", payload, models=["armt"], tasks=["qa1", "qa4"], lengths=lengths
    ).read_text()
    assert (
        "Against the target" in with_qa1 and "- ARMT at 64K: 0.50 (-0.40 against 0.9)" in with_qa1
    )
    without = {k: v for k, v in cells.items() if "/qa4/" in k}
    text = write_report(
        tmp_path / "b",
        {**payload, "cells": without},
        models=["armt"],
        tasks=["qa1", "qa4"],
        lengths=lengths,
    ).read_text()
    assert "| ARMT | qa4 | 0.50 | 0.50 |" in text and "Against the target" not in text
    assert "| ARMT | qa1 |" not in text  # a task with no cell has no empty row
    assert "- Samples per length: 0: 4, 64K: 4." in text
