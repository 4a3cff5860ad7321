"""Config validation: every bad value gets a one-line message naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import memtx
from memtx.config import load_run_config, parse_overrides
from memtx.errors import ConfigError


@pytest.mark.parametrize(
    ("name", "fields", "message"),
    [
        ("transformer", {"segment_len": 0}, r"model.segment_len must be >= 1, got 0"),
        ("transformer", {"d_model": 30, "n_heads": 4}, r"divisible by model.n_heads"),
        ("transformer", {"dropout": 1.0}, r"model.dropout must be in \[0.0, 1.0\)"),
        ("transformer", {"d_model": "wide"}, r"model.d_model must be int, got 'wide'"),
        ("transformer", {"n_layers": True}, r"model.n_layers must be int"),
        ("transformer", {"memory_slots": 4}, r"unknown key model.memory_slots"),
        ("transformer_xl", {"mem_len": -1}, r"model.mem_len must be >= 0"),
        ("memformer", {"memory_slots": 0}, r"model.memory_slots must be >= 1, got 0"),
        ("memformer", {"n_layers": 5, "encoder_layers": 2, "decoder_layers": 2}, r"must equal"),
        ("memformer", {"write_temperature": 0.0}, r"write_temperature must be > 0"),
        ("rmt", {"memory_tokens": 0}, r"model.memory_tokens must be >= 1, got 0"),
        ("rmt", {"memory_layout": "sideways"}, r"model.memory_layout must be"),
        ("lstm", {}, r"unknown model 'lstm'"),
    ],
)
def test_bad_model_configs(name: str, fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        memtx.model_config(name, **fields)


def test_memformer_layer_split() -> None:
    cfg = memtx.model_config("memformer", n_layers=6)
    assert (cfg.encoder_layers, cfg.decoder_layers, cfg.n_layers) == (2, 4, 6)
    cfg = memtx.model_config("memformer", encoder_layers=4, decoder_layers=8)
    assert cfg.n_layers == 12


def test_configs_are_frozen() -> None:
    cfg = memtx.model_config("transformer")
    with pytest.raises(AttributeError):
        cfg.d_model = 3  # type: ignore[misc]


def test_overrides_are_typed_toml_literals(tmp_path: Path) -> None:
    assert parse_overrides(["train.lr=1e-3", "model.name=rmt", "train.betas=[0.9, 0.95]"]) == {
        "train": {"lr": 0.001, "betas": [0.9, 0.95]},
        "model": {"name": "rmt"},
    }
    run = load_run_config(None, overrides=["train.betas=[0.9, 0.95]", "train.lr=1"])
    assert run.train.betas == (0.9, 0.95)
    assert run.train.lr == 1.0 and isinstance(run.train.lr, float)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("train.lr=abc", r"train.lr must be float, got 'abc'"),
        ("train.nope=1", r"unknown key train.nope"),
        ("optim.lr=1", r"unknown section"),
        ("lr=1", r"section.key=value"),
        ("train.strategy=magic", r"train.strategy must be"),
        ("train.device=tpu", r"train.device must be"),
        ("data.tokenizer=chars", r"data.tokenizer must be"),
    ],
)
def test_bad_overrides(item: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_run_config(None, overrides=[item])


def test_toml_errors_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nsteps = 3\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_run_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_config(tmp_path / "missing.toml")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[trian]\nsteps = 3\n")
    with pytest.raises(ConfigError, match="unknown section 'trian'"):
        load_run_config(unknown)


def test_bundled_presets_are_valid() -> None:
    import tomllib

    presets = sorted(Path("configs").glob("*.toml"))
    assert presets
    for path in presets:
        if "electra" in tomllib.loads(path.read_text()):
            continue  # ELECTRA pre-training presets: checked in tests/test_electra.py
        load_run_config(path)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=40))
def test_override_parser_never_crashes_unexpectedly(item: str) -> None:
    try:
        load_run_config(None, overrides=[item])
    except ConfigError as exc:
        assert "\n" not in str(exc)


@pytest.mark.parametrize("alpha", ["16", "16.0", "0.5"])
def test_lora_alpha_is_any_positive_number(alpha: str) -> None:
    # A run saved with ``"lora_alpha": 16.0`` (session 5) failed to load while it was an int.
    run = load_run_config(None, overrides=[f"train.lora_alpha={alpha}"])
    assert run.train.lora_alpha == float(alpha)


@pytest.mark.parametrize("alpha", ["0", "-1.0"])
def test_lora_alpha_must_be_positive(alpha: str) -> None:
    with pytest.raises(ConfigError, match=r"train\.lora_alpha must be > 0"):
        load_run_config(None, overrides=[f"train.lora_alpha={alpha}"])
