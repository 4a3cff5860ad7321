"""memtx repro pretrained end to end on a tiny random Llama checkpoint (SmolLM2 stand-in)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from memtx.cli import app
from memtx.errors import ConfigError
from memtx.repro.pretrained import ASKED, PretrainedRepro, in_view_row, repro_pretrained
from tests.pretrained_models import TEXT, needs_peft, save_tiny

pytestmark = needs_peft
BOGUS = ("--set", "model.bogus=1")


def _tiny(tmp_path, *, positions: int | None = None) -> dict:
    """The fields every tiny table shares: a tiny random Llama, a small corpus, 1 step a stage."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 8)
    extra = {} if positions is None else {"positions": positions}
    checkpoint = save_tiny(tmp_path / "llama", "llama", **extra)
    return {"hf_path": str(checkpoint), "corpus": str(corpus), "stage_steps": 1}


def test_the_table_has_every_model_at_every_length_on_the_same_samples(tmp_path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 8)
    settings = PretrainedRepro(
        hf_path=str(save_tiny(tmp_path / "llama", "llama")),
        segment_len=32,
        stages=(1, 2),
        stage_steps=1,
        lengths=(2, 3),
        eval_samples=2,
        corpus=str(corpus),
    )
    path = repro_pretrained(runs=tmp_path / "runs", out=tmp_path / "out", settings=settings)
    results = json.loads((tmp_path / "out/pretrained.json").read_text())
    names = {key.rsplit(" @ ", 1)[0] for key in results["cells"]}
    assert len(names) == 4 and len(results["cells"]) == 8
    assert set(results["throughput"]) == {"rmt", "armt", "bare"}
    table = path.read_text()
    assert "last segment only" in table and "full attention" in table and "x the bare" in table
    # the thread count it ran with, not an assumed one
    assert f"OMP_NUM_THREADS={torch.get_num_threads()} memtx repro pretrained" in table
    again = repro_pretrained(runs=tmp_path / "runs", out=tmp_path / "out", settings=settings)
    assert again.read_text() == table  # finished runs and cells are reused


def test_the_verb_refuses_bad_options_with_exit_2(tmp_path) -> None:
    result = CliRunner().invoke(
        app, ["repro", "pretrained", "--out", str(tmp_path), "--samples", "0"]
    )
    assert result.exit_code == 2 and "--samples must be >= 1" in result.output


def test_a_babilong_task_is_the_runs_task_and_a_bad_one_is_refused(tmp_path) -> None:
    checkpoint = str(save_tiny(tmp_path / "llama", "llama"))
    settings = PretrainedRepro(hf_path=checkpoint, task="qa1", stages=(2, 4))
    task = settings.run_config("rmt").task
    assert task is not None and task.name == "babilong" and task.qa == "qa1"
    assert task.stage_segments == (2, 4)
    adapted = PretrainedRepro(hf_path=checkpoint, lora_targets=("q_proj", "up_proj"))
    assert tuple(adapted.run_config("rmt").train.lora_targets) == ("q_proj", "up_proj")
    from memtx.repro.pretrained_report import _flags

    assert "--lora-targets q_proj,up_proj" in _flags(adapted)
    gated = PretrainedRepro(hf_path=checkpoint, overrides=("model.write_gate=true",))
    assert gated.run_config("rmt").model.write_gate  # type: ignore[union-attr]
    assert "--set model.write_gate=true" in _flags(gated)
    result = CliRunner().invoke(
        app,
        ["repro", "pretrained", "--out", str(tmp_path), "--hf-path", checkpoint, *BOGUS],
    )
    assert result.exit_code == 2 and "bogus" in result.output
    facts = PretrainedRepro(hf_path=checkpoint).run_config("armt").task
    assert facts is not None and facts.name == "facts"
    result = CliRunner().invoke(
        app, ["repro", "pretrained", "--out", str(tmp_path), "--task", "qa9"]
    )
    assert result.exit_code == 2 and "task must be one of facts, qa1" in result.output


def test_qa1_scores_the_story_alone_at_0_and_skips_full_attention_past_its_positions(
    tmp_path,
) -> None:
    settings = PretrainedRepro(
        **_tiny(tmp_path),
        task="qa1",
        segment_len=72,  # the tiny tokenizer's story needs up to 129 tokens
        stages=(2,),
        lengths=(0, 2),
        eval_samples=2,
        models=("rmt",),
        vary_segments=True,
    )
    assert settings.run_config("rmt").task.vary_segments  # type: ignore[union-attr]
    trained = repro_pretrained(
        runs=tmp_path / "runs", out=tmp_path / "out", settings=settings, train_only=True
    )
    assert trained is None and (tmp_path / "runs/rmt/result.json").is_file()
    assert not (tmp_path / "runs/armt").exists() and not (tmp_path / "out/pretrained.md").exists()
    path = repro_pretrained(runs=tmp_path / "runs", out=tmp_path / "out", settings=settings)
    assert path is not None
    cells = json.loads((tmp_path / "out/pretrained.json").read_text())["cells"]
    # 2 segments of 72 = 144 tokens: past the tiny Llama's 96 positions, so no full attention.
    assert set(cells) == {
        f"{name} @ {length}"
        for name in ("rmt-SmolLM2 (memory+LoRA)", "SmolLM2, last segment only")
        for length in (0, 2)
    }
    table = path.read_text()
    assert "0 (story alone)" in table and "--vary-segments" in table and "--models rmt" in table
    for length in (0, 2):  # the memory rows are split by where the supporting fact ends
        cell = cells[f"rmt-SmolLM2 (memory+LoRA) @ {length}"]
        counts = {k: v for k, v in cell.items() if k.startswith("samples_back_")}
        assert counts and sum(counts.values()) == 2


def test_a_qa_table_asks_the_bare_instruct_model_in_words_where_the_input_fits(tmp_path) -> None:
    settings = PretrainedRepro(
        **_tiny(tmp_path, positions=512),
        task="qa1",
        segment_len=72,
        stages=(2,),
        lengths=(0, 2),
        eval_samples=2,
        models=("rmt",),
    )
    path = repro_pretrained(runs=tmp_path / "runs", out=tmp_path / "out", settings=settings)
    assert path is not None
    cells = json.loads((tmp_path / "out/pretrained.json").read_text())["cells"]
    for length in (0, 2):
        asked = cells[f"{ASKED} @ {length}"]
        assert asked["rule"] == "babilong" and asked["token_accuracy"] is None
        assert 0 <= asked["exact_match"] <= 1 and len(asked["examples"]) == 2
        assert f"SmolLM2, whole input (full attention) @ {length}" in cells
    row = next(line for line in path.read_text().splitlines() if line.startswith(f"| {ASKED}"))
    assert " / " not in row and "BABILong's rule)." in path.read_text()


def test_bad_models_and_a_facts_length_0_are_refused(tmp_path) -> None:
    with pytest.raises(ConfigError, match="models must be some of rmt, armt"):
        PretrainedRepro(models=("memformer",))
    with pytest.raises(ConfigError, match="length 0"):
        PretrainedRepro(lengths=(0, 4))
    result = CliRunner().invoke(
        app, ["repro", "pretrained", "--out", str(tmp_path), "--models", "gpt"]
    )
    assert result.exit_code == 2 and "--models" in result.output
    result = CliRunner().invoke(app, ["repro", "pretrained", "--out", str(tmp_path), "--lr", "0"])
    assert result.exit_code == 2 and "--lr must be > 0" in result.output


def test_a_run_fine_tuned_in_view_reads_each_input_whole_and_equals_the_memory_at_one_segment(
    tmp_path,
) -> None:
    base = dict(
        **_tiny(tmp_path),
        segment_len=32,
        stages=(1, 2),
        lengths=(1, 2, 3),
        eval_samples=3,
        models=("rmt",),
    )
    repro_pretrained(
        runs=tmp_path / "runs",
        out=tmp_path / "x",
        settings=PretrainedRepro(**base),
        train_only=True,
    )
    settings = PretrainedRepro(**base, in_view_from=str(tmp_path / "runs/rmt"))
    path = repro_pretrained(runs=tmp_path / "runs", out=tmp_path / "out", settings=settings)
    assert path is not None
    cells = json.loads((tmp_path / "out/pretrained.json").read_text())["cells"]
    IN_VIEW = in_view_row(tmp_path / "runs/rmt")
    assert "(rmt)" in IN_VIEW
    # at one segment, reading it whole is what the memory model does
    for metric in ("loss", "exact_match", "token_accuracy"):
        expected = cells["rmt-SmolLM2 (memory+LoRA) @ 1"][metric]
        assert cells[f"{IN_VIEW} @ 1"][metric] == pytest.approx(expected, rel=1e-5)
    assert f"{IN_VIEW} @ 2" in cells
    # 3 x 32 tokens and 16 memory tokens: past the tiny Llama's 96 positions
    assert f"{IN_VIEW} @ 3" not in cells
    assert f"--in-view-from {tmp_path / 'runs/rmt'}" in path.read_text()


def test_an_in_view_run_of_another_task_or_no_run_is_refused(tmp_path) -> None:
    base = dict(
        **_tiny(tmp_path),
        segment_len=32,
        stages=(1,),
        lengths=(1,),
        eval_samples=1,
        models=("rmt",),
    )
    with pytest.raises(ConfigError, match="is not a memtx run folder"):
        repro_pretrained(
            runs=tmp_path / "runs",
            out=tmp_path / "out",
            settings=PretrainedRepro(**base, in_view_from=str(tmp_path / "nothing")),
        )
    assert not (tmp_path / "runs").exists()  # refused before any training
    repro_pretrained(
        runs=tmp_path / "facts",
        out=tmp_path / "x",
        settings=PretrainedRepro(**base),
        train_only=True,
    )
    qa = {**base, "task": "qa1", "segment_len": 72, "stages": (2,), "lengths": (2,)}
    with pytest.raises(ConfigError, match="was trained on task"):
        repro_pretrained(
            runs=tmp_path / "runs",
            out=tmp_path / "out",
            settings=PretrainedRepro(**qa, in_view_from=str(tmp_path / "facts/rmt")),
        )


def test_the_distance_table_splits_memory_rows_read_in_several_segments() -> None:
    from memtx.repro.pretrained_report import distance_table

    settings = PretrainedRepro(task="qa1", lengths=(0, 4))
    split = {"exact_match_back_0": 1.0, "samples_back_0": 3.0}
    cells = {
        "rmt @ 0": {**split, "exact_match_back_1": 0.5, "samples_back_1": 2.0},
        "rmt @ 4": {**split, "exact_match_back_3": 0.0, "samples_back_3": 1.0},
        "in view @ 4": split,  # one segment: nothing to split
        "bare @ 4": {"exact_match": 0.0},
    }
    lines = distance_table(cells, ["rmt", "in view", "bare"], settings)
    table = "\n".join(lines)
    assert "| model, length | 0 | 1 | 2-3 |" in table
    assert "| rmt, story alone | 1.00 (3) | 0.50 (2) |  |" in table
    assert "| rmt, 4 | 1.00 (3) |  | 0.00 (1) |" in table
    assert "in view" not in table and "bare" not in table
    assert distance_table({"bare @ 4": {"exact_match": 0.0}}, ["bare"], settings) == []
