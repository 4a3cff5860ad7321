"""Backbones: one interface over our blocks and a Hugging Face causal LM; RMT's names kept."""

from __future__ import annotations

import pytest
import torch

from memtx.errors import ConfigError
from memtx.models.backbones import Backbone, BuiltinBackbone, HFBackbone
from memtx.models.rmt import RMT
from tests.models.small import small_model

BACKBONES = ["rmt", "rmt_hf"]
VOCAB, D, LAYERS = 32, 32, 2


def backbone_of(key: str) -> Backbone:
    model = small_model(key).eval()
    assert isinstance(model, RMT)
    return model.backbone


def causal(length: int) -> torch.Tensor:
    return torch.ones(length, length, dtype=torch.bool).tril()


def inputs(length: int, *, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, length, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("key", BACKBONES)
def test_run_gives_hidden_and_the_logits_asked_for(key: str) -> None:
    backbone = backbone_of(key)
    assert (backbone.width, backbone.n_layers) == (D, LAYERS)
    ids = torch.randint(0, VOCAB, (2, 5))
    assert backbone.embed(ids).shape == (2, 5, D)
    x, positions = inputs(7), torch.arange(7)
    with torch.no_grad():
        full = backbone.run(x, mask=causal(7), positions=positions)
        part = backbone.run(x, mask=causal(7), positions=positions, logits_at=slice(2, 5))
    assert full.hidden.shape == (2, 7, D) and full.logits.shape == (2, 7, VOCAB)
    assert full.caches is None
    torch.testing.assert_close(part.logits, full.logits[:, 2:5])
    torch.testing.assert_close(part.hidden, full.hidden)


@pytest.mark.parametrize("key", BACKBONES)
def test_layer_hook_sees_and_replaces_the_stream_between_layers(key: str) -> None:
    backbone = backbone_of(key)
    x, mask, positions = inputs(6), causal(6), torch.arange(6)
    seen: list[tuple[int, tuple[int, ...]]] = []

    def watch(index: int, stream: torch.Tensor) -> torch.Tensor:
        seen.append((index, tuple(stream.shape)))
        return stream

    direction = torch.randn(D, generator=torch.Generator().manual_seed(1))  # not a constant:
    # LayerNorm (every pre-LN block's and the final one) ignores a shift of all features

    def bump(index: int, stream: torch.Tensor) -> torch.Tensor:
        return stream + direction if index == 1 else stream

    def erase(index: int, stream: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(stream) if index == LAYERS else stream

    with torch.no_grad():
        plain = backbone.run(x, mask=mask, positions=positions)
        watched = backbone.run(x, mask=mask, positions=positions, layer_hook=watch)
        bumped = backbone.run(x, mask=mask, positions=positions, layer_hook=bump)
        erased = backbone.run(x, mask=mask, positions=positions, layer_hook=erase)
    # Every layer's input, then the last layer's output, in order.
    assert seen == [(index, (2, 6, D)) for index in range(LAYERS + 1)]
    torch.testing.assert_close(watched.hidden, plain.hidden, rtol=0, atol=0)
    assert (bumped.hidden - plain.hidden).abs().max() > 1e-3  # a layer's input was replaced
    # The last layer's output replaced by zeros: the final norm sees one vector everywhere.
    torch.testing.assert_close(erased.hidden, erased.hidden[:, :1].expand_as(erased.hidden))
    # Hooks are gone after the run.
    with torch.no_grad():
        again = backbone.run(x, mask=mask, positions=positions)
    torch.testing.assert_close(again.hidden, plain.hidden, rtol=0, atol=0)


def test_builtin_cached_run_equals_the_whole_run() -> None:
    backbone = backbone_of("rmt")
    assert isinstance(backbone, BuiltinBackbone) and backbone.supports_cache
    x = inputs(7)
    with torch.no_grad():
        whole = backbone.run(x, mask=causal(7), positions=torch.arange(7))
        first = backbone.run(
            x[:, :4], mask=causal(4), positions=torch.arange(4), caches=[None] * LAYERS
        )
        assert first.caches is not None and len(first.caches) == LAYERS
        rest_mask = torch.ones(3, 7, dtype=torch.bool)
        rest_mask[:, 4:] = causal(3)
        rest = backbone.run(
            x[:, 4:], mask=rest_mask, positions=4 + torch.arange(3), caches=first.caches
        )
    torch.testing.assert_close(first.logits, whole.logits[:, :4])
    torch.testing.assert_close(rest.logits, whole.logits[:, 4:])


def test_hf_backbone_has_no_cache() -> None:
    backbone = backbone_of("rmt_hf")
    assert isinstance(backbone, HFBackbone) and not backbone.supports_cache
    with pytest.raises(ConfigError, match="only for the builtin backbone"):
        backbone.run(inputs(3), mask=causal(3), positions=torch.arange(3), caches=[None, None])


BUILTIN_KEYS = ["initial_memory", "embed.weight", "ln_out.weight", "ln_out.bias"] + [
    f"blocks.{index}.{name}"
    for index in range(LAYERS)
    for name in (
        "ln_self.weight",
        "ln_self.bias",
        "self_attn.qkv_proj.weight",
        "self_attn.out_proj.weight",
        "ln_ffn.weight",
        "ln_ffn.bias",
        "ffn.up.weight",
        "ffn.up.bias",
        "ffn.down.weight",
        "ffn.down.bias",
    )
]


def test_builtin_rmt_keeps_the_checkpoint_names_and_order() -> None:
    """Run folders saved before the backbones were split out load unchanged."""
    model = small_model("rmt")
    assert list(model.state_dict()) == BUILTIN_KEYS
    assert [name for name, _ in model.named_parameters()] == BUILTIN_KEYS  # optimizer order
    assert model.backbone.embed is model.embed  # one set of parts, seen from both


def test_hf_rmt_keeps_the_checkpoint_names() -> None:
    model = small_model("rmt_hf")
    names = [name for name, _ in model.named_parameters()]
    assert names[0] == "initial_memory"
    assert all(name.startswith("hf.") for name in names[1:])
    assert all(name.startswith(("hf.", "initial_memory")) for name in model.state_dict())


@pytest.mark.parametrize("key", BACKBONES)
def test_mode_and_dtype_of_the_model_reach_its_backbone(key: str) -> None:
    model = small_model(key)
    model.train()
    assert all(part.training for _, part in model.backbone.named_children())
    model.eval()
    assert not any(part.training for _, part in model.backbone.named_children())
    model.double()
    assert model.backbone.dtype == torch.float64
    x = torch.randint(0, VOCAB, (2, 8))
    out = model.step(x, model.init_memory(2))
    assert out.logits.dtype == torch.float64
