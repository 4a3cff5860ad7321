"""The output head (tied to the embedding or its own) and the two init schemes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import memtx
from memtx.errors import ConfigError
from memtx.models.protocol import init_weights
from tests.models.small import COMMON, HAS_TRANSFORMERS, tokens

BUILT = {
    "transformer": {"n_layers": 2},
    "transformer_xl": {"n_layers": 2, "mem_len": 8},
    "memformer": {"encoder_layers": 1, "decoder_layers": 2, "memory_slots": 4},
    "rmt": {"n_layers": 2, "memory_tokens": 4},
    "armt": {"n_layers": 2, "memory_tokens": 4, "d_mem": 4},
}


@pytest.mark.parametrize("name", list(BUILT))
def test_an_untied_head_is_its_own_matrix_and_the_logits_come_from_it(name: str) -> None:
    torch.manual_seed(0)
    model = memtx.models.build(name, **COMMON, **BUILT[name], tie_embeddings=False)
    head = model.state_dict()["head.weight"]
    assert head.shape == (COMMON["vocab_size"], COMMON["d_model"])
    assert head.data_ptr() != model.state_dict()["embed.weight"].data_ptr()
    x = tokens(2, COMMON["segment_len"])
    before = model.step(x, model.init_memory(2)).logits
    with torch.no_grad():
        model.get_parameter("head.weight")[3].add_(1.0)  # one vocabulary row of the head
    after = model.step(x, model.init_memory(2)).logits
    changed = (after - before).abs().amax(dim=(0, 1)) > 0  # [V]
    assert changed.tolist() == [v == 3 for v in range(COMMON["vocab_size"])]


@pytest.mark.parametrize("name", list(BUILT))
def test_a_tied_model_has_no_head_of_its_own(name: str) -> None:
    model = memtx.models.build(name, **COMMON, **BUILT[name])
    assert not [key for key in model.state_dict() if key.startswith("head.")]


def test_fan_in_init_spreads_each_matrix_by_its_fan_in_and_keeps_gpt2_embeddings() -> None:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Embedding(500, 64), nn.Linear(64, 512), nn.Linear(512, 64))
    init_weights(module, scheme="fan_in")
    assert module[0].weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert module[1].weight.std().item() == pytest.approx((3 * 64) ** -0.5, rel=0.05)
    assert module[2].weight.std().item() == pytest.approx((3 * 512) ** -0.5, rel=0.05)
    assert module[1].bias.abs().max().item() == 0.0
    init_weights(module, scheme="gpt2")
    for part in module:
        assert part.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_the_model_config_picks_the_init_scheme() -> None:
    torch.manual_seed(0)
    wide = {**COMMON, "d_model": 64, "n_layers": 1}
    fan_in = memtx.models.build("transformer", **wide, init="fan_in")
    gpt2 = memtx.models.build("transformer", **wide)
    name = next(n for n, p in fan_in.named_parameters() if p.dim() == 2 and "blocks" in n)
    assert fan_in.get_parameter(name).std().item() == pytest.approx(64**-0.5 / 3**0.5, rel=0.1)
    assert gpt2.get_parameter(name).std().item() == pytest.approx(0.02, rel=0.1)


@pytest.mark.parametrize("name", list(BUILT))
def test_embed_std_spreads_the_token_embedding_and_the_memory_tokens(name: str) -> None:
    torch.manual_seed(0)
    sizes = {**COMMON, "vocab_size": 512, "d_model": 64}
    model = memtx.models.build(name, **sizes, **BUILT[name], embed_std=1.0, tie_embeddings=False)
    assert model.get_parameter("embed.weight").std().item() == pytest.approx(1.0, rel=0.05)
    default = memtx.models.build(name, **sizes, **BUILT[name])
    assert default.get_parameter("embed.weight").std().item() == pytest.approx(0.02, rel=0.05)
    memory = {"rmt": "initial_memory", "armt": "memory_embedding"}.get(name)
    if memory is not None:  # RMT's and ARMT's memory tokens live in the embedding space
        assert model.get_parameter(memory).std().item() == pytest.approx(1.0, rel=0.35)
        assert default.get_parameter(memory).std().item() == pytest.approx(0.02, rel=0.35)


@pytest.mark.parametrize("value", [0.0, -0.1])
def test_a_non_positive_embed_std_is_a_config_error(value: float) -> None:
    with pytest.raises(ConfigError, match=r"model\.embed_std must be > 0"):
        memtx.models.build("transformer", **COMMON, n_layers=1, embed_std=value)


def test_an_unknown_init_scheme_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="init"):
        memtx.models.build("transformer", **COMMON, n_layers=1, init="xavier")
    with pytest.raises(ValueError, match="unknown init scheme 'xavier'"):
        init_weights(nn.Linear(2, 2), scheme="xavier")


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="needs transformers")
@pytest.mark.parametrize(
    ("field", "value"), [("tie_embeddings", False), ("init", "fan_in"), ("embed_std", 1.0)]
)
def test_a_hugging_face_backbone_refuses_our_head_and_init_options(
    field: str, value: object
) -> None:
    with pytest.raises(ConfigError, match=f"model.{field} applies to the builtin backbone only"):
        memtx.models.build(
            "rmt", **COMMON, n_layers=2, memory_tokens=4, backbone="hf", **{field: value}
        )
