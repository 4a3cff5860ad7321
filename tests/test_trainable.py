"""train.trainable: only the memory (and LoRA adapters) trained around a frozen pretrained
backbone; checkpoints of trained parts only; eval and generate from such a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import memtx
from memtx.cli import app
from memtx.config import RunConfig, TrainConfig
from memtx.errors import ConfigError
from memtx.train import evaluate_task_run, load_trained, train
from memtx.training.trainable import select_trainable
from tests.pretrained_models import TEXT, needs_peft, save_tiny

pytestmark = needs_peft
runner = CliRunner()


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    (root / "corpus.txt").write_text(TEXT * 4)
    return {f: save_tiny(root / f, f) for f in ("gpt2", "llama")} | {"corpus": root / "corpus.txt"}


def run_config(folder: Path, corpus: Path, **train: object) -> RunConfig:
    return RunConfig.from_dict(
        {
            "model": {
                "name": "rmt",
                "backbone": "hf",
                "hf_path": str(folder),
                "segment_len": 16,
                "memory_tokens": 2,
            },
            "train": {"steps": 4, "batch_size": 2, "rollout": 2, "lr": 1e-2, "warmup_steps": 0}
            | train,
            "data": {"corpus": str(corpus), "tokenizer": "hf"},
        }
    )


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_memory_and_lora_are_all_that_trains_with_the_family_default_targets(
    folders, family
) -> None:
    model = memtx.build("rmt", backbone="hf", hf_path=str(folders[family]), segment_len=16)
    trained = select_trainable(model, TrainConfig(trainable="memory+lora", lora_rank=2))
    assert "initial_memory" in trained and any("lora_A" in n for n in trained)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all("lora_" not in n for n in frozen)
    assert set(model.state_dict()) == set(trained)  # the frozen base is never in a state
    armt = memtx.build("armt", backbone="hf", hf_path=str(folders[family]), segment_len=16)
    only_memory = select_trainable(armt, TrainConfig(trainable="memory"))
    assert {n.split(".")[0] for n in only_memory} == {"memory_embedding", "associative"}


def test_bad_trainable_choices_are_one_line_errors(folders) -> None:
    with pytest.raises(ConfigError, match="model 'transformer' has no memory parameters"):
        select_trainable(memtx.build("transformer"), TrainConfig(trainable="memory"))
    with pytest.raises(ConfigError, match=r"must be a pretrained one: set model\.hf_path"):
        select_trainable(memtx.build("rmt"), TrainConfig(trainable="memory"))
    model = memtx.build("rmt", backbone="hf", hf_path=str(folders["llama"]), segment_len=16)
    lora = TrainConfig(trainable="memory+lora", lora_targets=("q_proj", "qkv_proj"))
    with pytest.raises(ConfigError, match=r"'llama' backbone has no module named 'qkv_proj'"):
        select_trainable(model, lora)


def test_a_memory_and_lora_run_saves_only_trained_parts_and_loads_back(folders, tmp_path) -> None:
    run = run_config(folders["gpt2"], folders["corpus"], trainable="memory+lora", lora_rank=2)
    before = memtx.build("rmt", backbone="hf", hf_path=str(folders["gpt2"]), segment_len=16)
    result = train(run, out_dir=tmp_path / "run", progress=False)
    assert result.history[-1]["loss"] < result.history[0]["loss"] or len(result.history) < 2
    (checkpoint,) = (tmp_path / "run/checkpoints").iterdir()
    saved = load_file(str(checkpoint / "model.safetensors"))
    assert "initial_memory" in saved and all(k == "initial_memory" or "lora_" in k for k in saved)
    base = {k: v for k, v in before.state_dict().items() if k.startswith("hf.")}
    for name, tensor in result.model.named_parameters():  # the base did not move
        if not tensor.requires_grad:
            key = name.replace(".base_layer", "")
            torch.testing.assert_close(tensor, base[key], rtol=0, atol=0)
    meta = json.loads((checkpoint / "meta.json").read_text())
    assert (
        meta["base_model"]["path"] == str(folders["gpt2"])
        and len(meta["base_model"]["sha256"]) == 64
    )
    assert json.loads((tmp_path / "run/tokenizer.json").read_text())["kind"] == "hf"
    _, loaded = load_trained(tmp_path / "run")
    x = torch.randint(0, 300, (1, 16))
    with torch.no_grad():
        want = result.model.eval().step(x, result.model.init_memory(1)).logits
        got = loaded.step(x, loaded.init_memory(1)).logits
    torch.testing.assert_close(got, want)
    evaluated = runner.invoke(
        app, ["eval", "--run", str(tmp_path / "run"), "--json", "--no-progress"]
    )
    assert evaluated.exit_code == 0, evaluated.output
    assert {"bpc", "ppl"} <= set(json.loads(evaluated.stdout))
    generated = runner.invoke(
        app,
        [
            "generate",
            "--run",
            str(tmp_path / "run"),
            "--prompt",
            "The key",
            "--temperature",
            "0",
            "--max-new-tokens",
            "4",
        ],
    )
    assert generated.exit_code == 0, generated.output


def test_trained_parts_load_only_onto_their_own_base(folders, tmp_path) -> None:
    run = run_config(folders["gpt2"], folders["corpus"], trainable="memory", steps=1)
    train(run, out_dir=tmp_path / "run", progress=False)
    other = save_tiny(tmp_path / "other", "gpt2")
    with torch.no_grad():  # same sizes, other weights
        weights = other / "model.safetensors"
        from safetensors.torch import save_file

        state = load_file(str(weights))
        save_file({k: v + 1 for k, v in state.items()}, str(weights), metadata={"format": "pt"})
    config = json.loads((tmp_path / "run/config.json").read_text())
    config["model"]["hf_path"] = str(other)
    (tmp_path / "run/config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"trained on the base model .* load it onto the same"):
        load_trained(tmp_path / "run")


def test_a_tokenizer_the_vocabulary_cannot_hold_exits_2(folders, tmp_path) -> None:
    import transformers

    small = tmp_path / "small"
    save_tiny(small, "gpt2")
    config = transformers.GPT2Config(vocab_size=256, n_embd=32, n_layer=2, n_head=2, n_positions=96)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(small)
    result = runner.invoke(
        app,
        [
            "train",
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
            "--set",
            "model.name=rmt",
            "--set",
            "model.backbone=hf",
            "--set",
            f"model.hf_path={small}",
            "--set",
            "model.segment_len=16",
            "--set",
            "data.tokenizer=hf",
            "--set",
            f"data.corpus={folders['corpus']}",
            "--set",
            "train.steps=1",
        ],
    )
    assert result.exit_code == 2, result.output
    assert "tokenizer has 300 ids, but the model" in result.output
    assert not (tmp_path / "run").exists()


def test_trainable_memory_on_a_model_without_memory_exits_2(tmp_path) -> None:
    result = runner.invoke(
        app,
        [
            "train",
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
            "--set",
            "train.trainable=memory",
            "--set",
            "train.steps=1",
        ],
    )
    assert result.exit_code == 2 and "has no memory parameters" in result.output


def test_facts_in_the_models_own_tokens_train_and_evaluate(folders, tmp_path) -> None:
    raw = {
        "model": {
            "name": "armt",
            "backbone": "hf",
            "hf_path": str(folders["llama"]),
            "segment_len": 32,
            "memory_tokens": 2,
            "d_mem": 4,
        },
        "train": {"steps": 2, "batch_size": 2, "trainable": "memory+lora", "lora_rank": 2},
        "data": {"corpus": str(folders["corpus"]), "tokenizer": "hf"},
        "task": {"name": "facts", "segments": 2, "num_facts": 1, "eval_samples": 4},
    }
    train(RunConfig.from_dict(raw), out_dir=tmp_path / "run", progress=False)
    metrics = evaluate_task_run(tmp_path / "run", segments=3, samples=4)
    assert 0.0 <= metrics["token_accuracy"] <= 1.0 and metrics["segments"] == 3.0


def test_babilong_in_the_models_own_tokens_trains_and_evaluates(folders, tmp_path) -> None:
    raw = {
        "model": {
            "name": "rmt",
            "backbone": "hf",
            "hf_path": str(folders["gpt2"]),
            "segment_len": 32,
            "memory_tokens": 2,
        },
        "train": {"steps": 2, "batch_size": 2, "trainable": "memory+lora", "lora_rank": 2},
        "data": {"corpus": str(folders["corpus"]), "tokenizer": "hf"},
        "task": {"name": "babilong", "segments": 4, "qa": "qa1", "story_facts": 1},
    }
    raw["task"]["eval_samples"] = 4
    train(RunConfig.from_dict(raw), out_dir=tmp_path / "run", progress=False)
    metrics = evaluate_task_run(tmp_path / "run", segments=6, samples=4)
    assert 0.0 <= metrics["exact_match"] <= 1.0 and metrics["segments"] == 6.0


@pytest.mark.parametrize(
    "case", ["gguf_not_causal", "folder_not_causal", "hub_offline", "lora_targets"]
)
def test_bad_pretrained_input_is_one_line_and_exit_2(case, folders, tmp_path, monkeypatch) -> None:
    from huggingface_hub import constants

    from tests.pretrained_models import write_gguf

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    bert = tmp_path / "bert"
    if case == "folder_not_causal":
        from transformers import BertConfig

        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(bert)
    path, extra, expected = {
        "gguf_not_causal": (
            str(write_gguf(tmp_path / "x.gguf", architecture="bert")),
            [],
            "not a causal LM",
        ),
        "folder_not_causal": (str(bert), [], "not a causal LM"),
        "hub_offline": ("no-such-org/no-such-model", [], "not cached while offline"),
        "lora_targets": (
            str(folders["gpt2"]),
            ["train.trainable=memory+lora", "train.lora_targets=['q_proj']"],
            "has no module named 'q_proj'",
        ),
    }[case]
    sets = [
        "model.name=rmt",
        "model.backbone=hf",
        "model.segment_len=16",
        f"model.hf_path={path}",
        "train.steps=1",
        f"data.corpus={folders['corpus']}",
        *extra,
    ]
    args = ["train", "--out", str(tmp_path / "run"), "--no-progress"]
    result = runner.invoke(app, [*args, *(x for s in sets for x in ("--set", s))])
    assert result.exit_code == 2, result.output
    (error,) = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert expected in error


def test_a_memory_and_lora_run_warm_starts_every_trained_tensor(folders, tmp_path) -> None:
    source = tmp_path / "source"
    run = run_config(folders["llama"], folders["corpus"], trainable="memory+lora", lora_rank=2)
    train(run, out_dir=source, progress=False)
    (checkpoint,) = (source / "checkpoints").iterdir()
    saved = load_file(str(checkpoint / "model.safetensors"))
    assert any("lora_A" in k for k in saved)
    warm = run_config(
        folders["llama"],
        folders["corpus"],
        trainable="memory+lora",
        lora_rank=2,
        steps=1,
        init_from=str(source),
    )
    train(warm, out_dir=tmp_path / "warm", progress=False)
    lines = (tmp_path / "warm/metrics.jsonl").read_text().splitlines()
    event = next(json.loads(x)["event"] for x in lines if "event" in json.loads(x))
    # every memory and LoRA tensor, none left as initialised (the frozen base is not listed)
    assert event == f"init_from {source}: {len(saved)} tensors copied"
