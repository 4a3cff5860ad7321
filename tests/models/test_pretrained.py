"""RMT and ARMT around pretrained checkpoints: GPT-2 (learned positions) and Llama (rotary).

Tiny random checkpoints saved as folders stand in for real ones (tests/pretrained_models.py);
the real SmolLM2 is in tests/test_smollm2.py.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import memtx
from memtx.config.pretrained import pretrained_sizes
from memtx.errors import ConfigError
from memtx.models.rmt import rmt_attention_mask
from tests.pretrained_models import POSITIONS, VOCAB, WIDTH, needs_peft, save_tiny, write_gguf

pytestmark = needs_peft
FAMILIES = ("gpt2", "llama")
SEG, MEM = 16, 4


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("pretrained")
    return {family: str(save_tiny(root / family, family)) for family in FAMILIES}


def build(name: str, folder: str, **fields: Any) -> memtx.SegmentLM:
    defaults = {
        "segment_len": SEG,
        "memory_tokens": MEM,
        **({"d_mem": 4} if name == "armt" else {}),
    }
    model = memtx.build(name, backbone="hf", hf_path=folder, **{**defaults, **fields})
    return model.eval()


def bare_logits(folder: str, ids: torch.Tensor) -> torch.Tensor:
    import transformers

    bare = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return bare(input_ids=ids).logits


def ids(length: int, *, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
def test_sizes_are_read_from_the_checkpoint_and_a_restated_one_must_agree(folders, family) -> None:
    model = build("rmt", folders[family])
    cfg = model.config
    assert (cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.n_heads) == (VOCAB, WIDTH, 2, 2)
    assert cfg.hf_model_type == family
    assert build("rmt", folders[family], d_model=WIDTH).config == cfg
    with pytest.raises(ConfigError, match=rf"model.d_model=64 but .* has d_model={WIDTH}"):
        build("rmt", folders[family], d_model=64)
    with pytest.raises(ConfigError, match=r"hf_model_type=.opt. but .* holds a"):
        build("armt", folders[family], hf_model_type="opt")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", ["rmt", "armt"])
def test_with_the_memory_masked_out_the_wrapped_logits_are_the_bare_models(
    folders, family, name, monkeypatch
) -> None:
    """Position by position, every token's logits equal the bare model's (max diff <= 1e-4)."""
    model = build(name, folders[family])
    if name == "rmt":  # tokens see no read slot: nothing of the memory reaches them
        masked = rmt_attention_mask(MEM, SEG).clone()
        masked[MEM : MEM + SEG, :MEM] = False
        monkeypatch.setattr(model, "attention_mask", lambda length: masked)
    # ARMT: tokens precede the memory tokens (causal) and an empty memory reads exactly 0.
    x = ids(SEG)
    with torch.no_grad():
        wrapped = model.step(x, model.init_memory(2)).logits
    reference = bare_logits(folders[family], x)
    per_position = (wrapped - reference).abs().amax(dim=(0, 2))  # (L,)
    assert per_position.shape == (SEG,)
    assert float(per_position.max()) <= 1e-4, per_position


@pytest.mark.parametrize("family", FAMILIES)
def test_memory_position_ids_and_the_4d_mask_reach_the_model_per_family(folders, family) -> None:
    model = build("rmt", folders[family])
    seen: dict[str, torch.Tensor] = {}

    def capture(module, args, kwargs):
        seen["positions"], seen["mask"] = kwargs["position_ids"][0], kwargs["attention_mask"]

    model.hf.register_forward_pre_hook(capture, with_kwargs=True)
    length = SEG - 3  # a partial segment: the memory's ids do not depend on its length
    with torch.no_grad():
        model.step(ids(length), model.init_memory(2))
    positions = seen["positions"].tolist()
    read, tokens, write = positions[:MEM], positions[MEM : MEM + length], positions[MEM + length :]
    if family == "gpt2":  # a learned table: tokens keep the bare ids, memory after the segment
        assert tokens == list(range(length))
        assert read == list(range(SEG, SEG + MEM))
        assert write == list(range(SEG + MEM, SEG + 2 * MEM))
    else:  # rotary: input order, so tokens keep their offsets to each other
        assert positions == list(range(2 * MEM + length))
    allowed = rmt_attention_mask(MEM, length)
    mask = seen["mask"][0, 0]
    assert mask.shape == allowed.shape
    assert torch.equal(mask == 0, allowed)  # 0 where attending, the dtype's min elsewhere
    assert model.backbone.absolute_positions == (family == "gpt2")


@pytest.mark.parametrize("family", FAMILIES)
def test_armt_memory_tokens_take_the_ids_after_the_longest_segment(folders, family) -> None:
    model = build("armt", folders[family])
    seen: dict[str, torch.Tensor] = {}
    model.hf.register_forward_pre_hook(
        lambda m, a, kw: seen.update(positions=kw["position_ids"][0]), with_kwargs=True
    )
    with torch.no_grad():
        model.step(ids(5), model.init_memory(2))
    assert seen["positions"].tolist() == [*range(5), *range(SEG, SEG + MEM)]


def test_a_memory_table_the_checkpoint_cannot_hold_is_refused(folders) -> None:
    with pytest.raises(ConfigError, match=r"has \d+ positions, but a segment needs"):
        build("rmt", folders["gpt2"], segment_len=POSITIONS)


def test_a_gguf_that_is_not_a_causal_lm_is_refused(tmp_path) -> None:
    bert = write_gguf(tmp_path / "bert.gguf", architecture="bert")
    with pytest.raises(ConfigError, match=r"GGUF 'bert' model, not a causal LM"):
        pretrained_sizes(str(bert))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all")
    with pytest.raises(ConfigError, match="is not a readable GGUF file"):
        memtx.build("rmt", backbone="hf", hf_path=str(junk))
    with pytest.raises(ConfigError, match="is not a GGUF file"):
        memtx.build("rmt", backbone="hf", hf_path=str(tmp_path / "missing.gguf"))


def test_a_hub_name_that_is_not_cached_while_offline_is_one_line(monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="not cached while offline") as info:
        memtx.build("rmt", backbone="hf", hf_path="no-such-org/no-such-model-memtx")
    assert "\n" not in str(info.value)
