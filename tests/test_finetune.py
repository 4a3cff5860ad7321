"""Downstream tasks: the speaker parser, fixed splits, fine-tuning, and the TMR repro."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from memtx.config import DataConfig
from memtx.data import prepare_data
from memtx.electra import (
    ClassificationTask,
    ElectraConfig,
    ElectraModel,
    FinetuneConfig,
    build_task,
    evaluate_downstream,
    finetune_task,
    load_electra_run,
    parse_speeches,
    pretrain,
)
from memtx.errors import ConfigError
from memtx.repro.tmr import repro_tmr

PLAY = """\
THE TRAGEDY OF A TEST

Dramatis Personae

ACT I.

SCENE I. A room in the castle.

[Enter Hamlet and Horatio.]

Ham.
Who's there?

Hor.
Nay, answer me: [Aside.] stand,
and unfold yourself.

HAMLET.
Long live the king!

Ham.
[Draws.]
Bernardo?

THESEUS
Now, fair Hippolyta, our nuptial hour

Lady Capulet.{trailing}
What say you? can you love the gentleman?

Hor.
He.

[Exit Ghost.]

PROLOGUE.

Two households, both alike in dignity,
In fair Verona, where we lay our scene,

Hor.
Peace!

THESEUS
Draws on apace.

Lady Capulet.
Speak briefly.

THESEUS
Four days.

Lady Capulet.
Well.
""".format(trailing="  ")  # an edition with trailing spaces after the speaker


def test_speaker_parser_handles_every_edition_style() -> None:
    speeches = parse_speeches(PLAY, min_count=1)
    assert [s.speaker for s in speeches] == [
        "Ham",
        "Hor",
        "HAMLET",
        "Ham",
        "THESEUS",
        "Lady Capulet",
        "Hor",
        "Hor",
        "THESEUS",
        "Lady Capulet",
        "THESEUS",
        "Lady Capulet",
    ]
    assert speeches[1].text == "Nay, answer me:  stand,\nand unfold yourself."  # no [Aside.]
    assert speeches[3].text == "Bernardo?"  # a stage-direction line is dropped
    # Headings (ACT, SCENE, PROLOGUE), titles and stage directions are never speakers.
    assert not {"ACT I", "SCENE I", "PROLOGUE", "THE TRAGEDY OF A TEST"} & {
        s.speaker for s in speeches
    }
    frequent = parse_speeches(PLAY)  # min_count=3
    assert {s.speaker for s in frequent} == {"Hor", "THESEUS", "Lady Capulet"}
    assert [s.index for s in frequent] == list(range(len(frequent)))


def test_speaker_parser_on_real_plays() -> None:
    from memtx.electra.tasks import _documents

    docs = _documents(["hamlet_gut", "othello_gut", "midsummer_nights_dream_gut"])
    tops = {}
    for name, data in docs.items():
        speeches = parse_speeches(data.decode("utf-8"))
        assert len(speeches) > 400
        counts: dict[str, int] = {}
        for speech in speeches:
            counts[speech.speaker] = counts.get(speech.speaker, 0) + 1
        tops[name] = max(counts, key=counts.__getitem__)
    assert tops == {
        "hamlet_gut": "Ham",
        "othello_gut": "OTHELLO",
        "midsummer_nights_dream_gut": "LYSANDER",
    }


def test_tasks_have_fixed_disjoint_splits() -> None:
    config = FinetuneConfig(max_train_per_class=20, max_eval_per_class=5)
    encode = list  # byte ids
    for name in ("play", "speaker"):
        task = build_task(name, config, encode=encode)
        again = build_task(name, config, encode=encode)
        assert task.train == again.train and task.test == again.test  # no hidden randomness
        train = {tuple(ids) for ids, _ in task.train}
        assert not train & {tuple(ids) for ids, _ in task.test}
        assert not train & {tuple(ids) for ids, _ in task.valid}
        assert len(task.classes) >= 2 and max(len(ids) for ids, _ in task.train) <= 128
    play = build_task("play", config, encode=encode)
    assert play.classes[0] == "hamlet" and len(play.train) == 20 * len(play.classes)


def test_finetuning_learns_a_separable_task() -> None:
    torch.manual_seed(0)
    # Class k: sequences full of letter 'a' + k, of random lengths (right padding).
    examples = []
    for index in range(120):
        label = index % 3
        examples.append(([97 + label] * (4 + index % 9), label))
    task = ClassificationTask("toy", ["a", "b", "c"], examples[:90], examples[90:], examples[90:])
    model = ElectraModel(
        ElectraConfig(
            seq_len=16,
            d_model=32,
            n_layers=1,
            n_heads=2,
            generator_d_model=16,
            generator_layers=1,
            generator_heads=1,
        )
    )
    before = {k: v.clone() for k, v in model.discriminator.state_dict().items()}
    config = FinetuneConfig(epochs=4, batch_size=16, lr=3e-3)
    result = finetune_task(model.discriminator, task, config=config, seed=0, pad_id=256)
    assert result.test_accuracy > 0.9
    for key, value in model.discriminator.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed: fine-tuning must use a copy"


TINY_PRESET = """
[electra]
seq_len = 32
d_model = 32
n_layers = 1
n_heads = 2
generator_d_model = 16
generator_layers = 1
generator_heads = 1
[replay]
capacity = 16
ratio = 0.2
min_fill = 4
[pretrain]
steps = 3
batch_size = 4
warmup_steps = 1
eval_examples = 8
[finetune]
epochs = 1
max_len = 32
passage_len = 32
max_train_per_class = 4
max_eval_per_class = 2
speaker_plays = ["hamlet_gut"]
play_names = ["hamlet_gut", "othello_gut"]
"""


def test_pretrain_then_downstream_and_the_repro_table(tmp_path: Path) -> None:
    preset = tmp_path / "tiny.toml"
    preset.write_text(TINY_PRESET, encoding="utf-8")
    data = prepare_data(DataConfig())
    run = load_electra_run(preset)
    pretrain(run, out_dir=tmp_path / "run", data=data)
    results = evaluate_downstream(tmp_path / "run", seed=0)
    assert set(results) == {"play", "speaker"}
    assert all(0.0 <= r.test_accuracy <= 1.0 for r in results.values())
    assert results["play"].classes == 2 and results["speaker"].classes == 3

    lines: list[str] = []
    table = repro_tmr(
        out_dir=tmp_path / "bench",
        seeds=(0,),
        config_path=preset,
        work_dir=tmp_path / "runs",
        echo=lines.append,
        overhead_rounds=3,
    )
    text = table.read_text(encoding="utf-8")
    assert "ELECTRA + replay (TMR)" in text and "no pre-training" in text
    assert "overhead per pre-training step" in text
    report = json.loads((tmp_path / "runs" / "tmr.json").read_text())
    conditions = [(r["condition"], r["seed"]) for r in report["runs"]]
    assert conditions == [("baseline", 0), ("replay", 0), ("no_pretraining", 0)]
    generated = [r["pretrain"]["generated_examples"] for r in report["runs"][:2]]
    assert generated == [12, 12]  # the same generated examples with and without replay
    assert (tmp_path / "bench" / "tmr.png").stat().st_size > 1000


def test_the_repro_protocol_reports_probes_few_shot_power_and_efficiency(tmp_path: Path) -> None:
    preset = tmp_path / "tiny.toml"
    preset.write_text(TINY_PRESET.replace("eval_examples = 8", "eval_examples = 8\neval_every = 1"))
    table = repro_tmr(
        out_dir=tmp_path / "bench",
        seeds=(0, 1),
        config_path=preset,
        work_dir=tmp_path / "runs",
        echo=lambda line: None,
        overhead_rounds=2,
        probe=True,
        shots=(2,),
        finetune_seeds=(0, 1),
    )
    report = json.loads((tmp_path / "runs" / "tmr.json").read_text())
    for entry in report["runs"]:
        figures = entry["protocol"]
        assert set(figures) == {"probe/play", "probe/speaker", "2-shot/play", "2-shot/speaker"}
        assert all(0.0 <= v <= 1.0 for v in figures.values())
        if entry["condition"] != "no_pretraining":  # 3 validations x 4 generated examples
            assert [x for x, _ in entry["rtd_curve"]] == [4, 8, 12]
    text = table.read_text(encoding="utf-8")
    assert "## Low-noise protocol" in text and "| no_pretraining |" in text
    assert "- probe/play: " in text and "seeds to detect 1 point" in text
    assert "Sample efficiency: generated examples replay needs" in text


@pytest.mark.parametrize("shots, seeds", [((0,), (0,)), ((4,), ()), ((5,), (0,))])
def test_a_bad_protocol_is_refused_before_pretraining(tmp_path: Path, shots, seeds) -> None:
    # (5: the tiny preset keeps 4 training examples per class)
    preset = tmp_path / "tiny.toml"
    preset.write_text(TINY_PRESET, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"shots|fine-tuning seed|fewer than per_class=5"):
        repro_tmr(
            out_dir=tmp_path, seeds=(0,), config_path=preset, work_dir=tmp_path / "runs",
            shots=shots, finetune_seeds=seeds,
        )  # fmt: skip
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tasks": ("play", "poetry")}, r"^finetune\.tasks must be a non-empty list of play"),
        ({"epochs": 0}, r"^finetune\.epochs must be >= 1, got 0$"),
        ({"play_names": ("hamlet_gut",)}, r"^finetune\.play_names needs >= 2 plays"),
    ],
)
def test_bad_finetune_configs(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        FinetuneConfig(**fields)


def test_unknown_play_is_named() -> None:
    config = FinetuneConfig(play_names=("hamlet_gut", "hamlet_2_gut"))
    with pytest.raises(ConfigError, match="'hamlet_2_gut' is not a document"):
        build_task("play", config, encode=list)


def test_a_bpe_floor_without_its_tasks_is_refused() -> None:
    # Byte ids would silently index a 4,096-token vocabulary: refuse instead.
    with pytest.raises(ConfigError, match="vocab_size 4096 needs its tasks built"):
        evaluate_downstream(
            None, seed=0, config=FinetuneConfig(), electra_config=ElectraConfig(vocab_size=4096)
        )
