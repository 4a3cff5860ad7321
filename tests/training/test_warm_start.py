"""train.init_from: a run starts from another run's weights (an LM's backbone into a
memory model), reuses its tokenizer, and refuses what does not fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from memtx.errors import ConfigError
from memtx.models import from_config
from memtx.train import load_trained, train
from memtx.training.trainable import warm_start
from tests.helpers import bpe_corpus, tiny_run

LM = ["model.name=transformer", "train.steps=4"]
RMT = ["model.name=rmt", "model.memory_tokens=2", "train.steps=2"]


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lm") / "run"
    train(tiny_run(*LM), out_dir=out, progress=False)
    return out


def test_the_backbone_is_copied_and_the_memory_keeps_its_initialisation(lm: Path) -> None:
    _, source = load_trained(lm)
    model = from_config(tiny_run(*RMT).model)
    memory_before = model.initial_memory.detach().clone()
    copied, fresh = warm_start(model, lm)
    assert fresh == ["initial_memory"] and "embed.weight" in copied
    weights = model.state_dict()
    for name, tensor in source.state_dict().items():
        assert torch.equal(weights[name], tensor), name
    assert torch.equal(model.initial_memory, memory_before)


def test_a_warm_started_run_logs_what_it_copied_and_trains_on(lm: Path, tmp_path: Path) -> None:
    run = tiny_run(*RMT, f"train.init_from={lm}")
    result = train(run, out_dir=tmp_path / "rmt", progress=False)
    assert result.steps == 2
    lines = [json.loads(x) for x in (tmp_path / "rmt" / "metrics.jsonl").read_text().splitlines()]
    events = [x["event"] for x in lines if "event" in x]
    assert events[0].startswith(f"init_from {lm}: ")
    assert "as initialised: initial_memory" in events[0]
    # The warm-started run's first loss is the LM's, not a fresh model's (~ln 256 = 5.5).
    fresh = train(tiny_run(*RMT), out_dir=tmp_path / "fresh", progress=False)
    first = next(x["loss"] for x in lines if x.get("split") == "train")
    assert first < fresh.history[0]["loss"] - 0.1


def test_other_sizes_another_model_or_no_run_are_refused(lm: Path, tmp_path: Path) -> None:
    wider = from_config(tiny_run(*RMT, "model.d_model=48").model)
    with pytest.raises(ConfigError, match=r"is \[32\] there and \[48\] here: the sizes"):
        warm_start(wider, lm)
    with pytest.raises(ConfigError, match=r"none of its \d+ tensors is in this model"):
        warm_start(torch.nn.Linear(2, 2), lm)
    with pytest.raises(ConfigError, match="holds no run"):
        warm_start(wider, tmp_path)
    with pytest.raises(ConfigError, match="holds no run"):
        train(tiny_run(*RMT, f"train.init_from={tmp_path}"), out_dir=tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


def test_a_warm_start_reuses_the_tokenizer_and_refuses_another_kind(
    tmp_path: Path,
) -> None:
    corpus = bpe_corpus(tmp_path / "plays", vocab_size=300)
    source = tmp_path / "lm"
    train(tiny_run(*LM, *corpus), out_dir=source, progress=False)
    run = tiny_run(*RMT, *corpus, f"train.init_from={source}")
    train(run, out_dir=tmp_path / "rmt", progress=False)
    assert (tmp_path / "rmt" / "tokenizer.json").read_bytes() == (
        source / "tokenizer.json"
    ).read_bytes()
    with pytest.raises(ConfigError, match=r"data\.tokenizer='bpe', this run has 'byte'"):
        train(tiny_run(*RMT, f"train.init_from={source}"), out_dir=tmp_path / "b", progress=False)
