"""ELECTRA pre-training: labels, backbones, the loop with replay, resume, config errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from memtx.checkpoint import checkpoint_dirs
from memtx.config import DataConfig
from memtx.data import prepare_data
from memtx.electra import (
    ElectraConfig,
    ElectraModel,
    electra_step,
    load_electra_run,
    load_pretrained,
    pretrain,
)
from memtx.electra.replay import ReplayBuffer, ReplayConfig
from memtx.errors import ConfigError

TINY = [
    "electra.seq_len=32",
    "electra.d_model=32",
    "electra.n_layers=2",
    "electra.n_heads=2",
    "electra.generator_d_model=16",
    "electra.generator_layers=1",
    "electra.generator_heads=1",
    "pretrain.batch_size=8",
    "pretrain.steps=6",
    "pretrain.warmup_steps=2",
    "pretrain.log_every=1",
    "pretrain.eval_examples=16",
    "replay.capacity=32",
    "replay.ratio=0.2",
    "replay.min_fill=8",
]

SMALL = ElectraConfig(
    seq_len=16,
    d_model=32,
    n_layers=1,
    n_heads=2,
    generator_d_model=16,
    generator_layers=1,
    generator_heads=1,
)


@pytest.fixture(scope="module")
def shakespeare():
    return prepare_data(DataConfig())


def _train_lines(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [m for m in map(json.loads, lines) if m["split"] == "train"]


def test_labels_mark_exactly_the_tokens_that_changed() -> None:
    model = ElectraModel(SMALL)
    ids = torch.randint(0, 256, (4, 16))
    out = model.corrupt(ids, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.labels, out.inputs != ids)
    assert not (out.labels & ~out.masked).any()  # only masked positions can change
    assert torch.equal(out.inputs[~out.masked], ids[~out.masked])
    assert (out.masked.sum(-1) == round(0.15 * 16)).all()
    assert out.generator_loss.requires_grad


def test_a_sample_equal_to_the_original_is_not_replaced(monkeypatch) -> None:
    model = ElectraModel(SMALL)
    ids = torch.randint(0, 256, (3, 16))
    ids[:, ::2] = ord("e")  # half the positions hold the letter the generator will pick

    def always(letter: int):
        def forward(embedded, where, embedding):  # [M, V] logits: certain of one letter
            logits = torch.full((int(where.sum()), 256), -1e4)
            logits[:, letter] = 1e4
            return logits

        return forward

    monkeypatch.setattr(model.generator, "forward", always(ord("e")))
    out = model.corrupt(ids)
    assert out.masked.any()
    assert torch.equal(out.labels, out.masked & (ids != ord("e")))
    original_is_e = out.masked & (ids == ord("e"))
    assert original_is_e.any() and not out.labels[original_is_e].any()

    # A generator that always reproduces the original replaces nothing at all.
    def echo(embedded, where, embedding):
        logits = torch.full((int(where.sum()), 256), -1e4)
        logits[torch.arange(logits.shape[0]), ids[where]] = 1e4
        return logits

    monkeypatch.setattr(model.generator, "forward", echo)
    out = model.corrupt(ids)
    assert out.masked.any() and not out.labels.any()
    assert torch.equal(out.inputs, ids)


def test_generator_and_discriminator_share_the_embedding() -> None:
    model = ElectraModel(SMALL)
    ids = torch.randint(0, 256, (2, 16))
    out = model.corrupt(ids)
    out.generator_loss.backward()
    embedding = model.discriminator.token_embedding.weight
    assert embedding.grad is not None and embedding.grad.abs().sum() > 0
    assert embedding.shape[0] == 256 + 2  # + pad and mask


def test_embedded_tokens_are_normalized_before_the_encoder() -> None:
    # The embedding's scale cannot drown the token identity: hidden states ignore it.
    model = ElectraModel(SMALL).eval()
    ids = torch.randint(0, 256, (2, 16))
    before = model.discriminator.hidden(ids)
    with torch.no_grad():
        model.discriminator.token_embedding.weight.mul_(37.0)
    # Up to the LayerNorm epsilon (1e-5 against a variance of ~4e-4 at init).
    torch.testing.assert_close(model.discriminator.hidden(ids), before, rtol=1e-3, atol=2e-3)


def test_memformer_backbone_walks_segments_and_learns_its_memory() -> None:
    config = ElectraConfig(
        seq_len=32,
        d_model=32,
        n_layers=1,
        n_heads=2,
        generator_d_model=16,
        generator_layers=1,
        generator_heads=1,
        backbone="memformer",
        segment_len=8,
        memory_slots=4,
    )
    model = ElectraModel(config)
    ids = torch.randint(0, 256, (2, 32))
    logits = model.discriminator(ids)
    assert logits.shape == (2, 32)
    logits[:, -8:].sum().backward()  # the last segment reads the slots the earlier ones wrote
    memformer = model.discriminator.memformer
    assert memformer.writer.v_proj.weight.grad.abs().sum() > 0
    # Right padding: the real tokens' outputs do not depend on what the padding holds.
    mask = torch.ones(2, 32, dtype=torch.bool)
    mask[1, 20:] = False
    other = ids.clone()
    other[1, 20:] = 7
    with torch.no_grad():
        a = model.discriminator.hidden(ids, key_mask=mask)
        b = model.discriminator.hidden(other, key_mask=mask)
    assert torch.allclose(a[1, :20], b[1, :20], atol=1e-5)
    # And a whole step of pre-training runs with replay.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    buffer = ReplayBuffer(ReplayConfig(capacity=8, min_fill=2), example_len=32)
    for _ in range(2):
        stats = electra_step(
            model, optimizer, ids, buffer=buffer, replayed_rows=1, beta=0.4, grad_clip=1.0
        )
    assert stats.replayed == 1 and len(buffer) == 4


def test_short_pretraining_lowers_the_discriminator_loss(tmp_path: Path, shakespeare) -> None:
    run = load_electra_run(None, overrides=[*TINY, "pretrain.steps=40", "pretrain.lr=3e-3"])
    result = pretrain(run, out_dir=tmp_path / "run", data=shakespeare)
    losses = [m["rtd_loss"] for m in _train_lines(tmp_path / "run")]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.1, f"discriminator loss went from {first:.3f} to {last:.3f}"
    assert result.generated_examples == 40 * 8
    assert result.replayed_examples == 2 * (40 - 1)  # from step 2, when 8 examples are held
    assert result.valid["rtd_loss"] < 0.69  # better than an untrained coin flip
    assert (tmp_path / "run" / "result.json").is_file()
    _, model = load_pretrained(tmp_path / "run")
    assert isinstance(model, ElectraModel)


def test_replay_keeps_the_number_of_generated_examples(tmp_path: Path, shakespeare) -> None:
    with_replay = pretrain(
        load_electra_run(None, overrides=TINY), out_dir=tmp_path / "a", data=shakespeare
    )
    without = pretrain(
        load_electra_run(None, overrides=[*TINY, "replay.enabled=false"]),
        out_dir=tmp_path / "b",
        data=shakespeare,
    )
    assert with_replay.generated_examples == without.generated_examples == 6 * 8
    assert with_replay.replayed_examples > 0 and without.replayed_examples == 0


def test_resume_restores_the_buffer_and_continues_exactly(tmp_path: Path, shakespeare) -> None:
    run = load_electra_run(None, overrides=[*TINY, "pretrain.checkpoint_every=3"])
    pretrain(run, out_dir=tmp_path / "straight", data=shakespeare)
    pretrain(run, out_dir=tmp_path / "broken", data=shakespeare, stop_after=4)
    newest = checkpoint_dirs(tmp_path / "broken")[-1]
    shutil.rmtree(newest)  # killed before the step-4 checkpoint: resume from step 3
    pretrain(run, out_dir=tmp_path / "broken", data=shakespeare, resume=True)

    def losses(name: str) -> list[tuple[int, float, int]]:
        return [(m["step"], m["rtd_loss"], m["replayed"]) for m in _train_lines(tmp_path / name)]

    assert losses("straight") == losses("broken")
    assert len(losses("broken")) == 6


def test_an_existing_run_is_never_overwritten(tmp_path: Path, shakespeare) -> None:
    run = load_electra_run(None, overrides=[*TINY, "pretrain.steps=1"])
    pretrain(run, out_dir=tmp_path / "run", data=shakespeare)
    with pytest.raises(ConfigError, match="already holds a run"):
        pretrain(run, out_dir=tmp_path / "run", data=shakespeare)


def test_presets_load() -> None:
    root = Path(__file__).resolve().parents[1] / "configs"
    presets = sorted(root.glob("electra-*.toml"))
    assert presets
    for path in presets:
        run = load_electra_run(path)
        assert run.pretrain.steps >= 1
    run = load_electra_run(root / "electra-small.toml", overrides=["replay.enabled=false"])
    assert run.replay.enabled is False


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("replay.capacity=0", r"^replay\.capacity must be >= 1, got 0$"),
        ("replay.ratio=1", r"^replay\.ratio must be in \[0\.0, 1\.0\), got 1\.0$"),
        ("replay.priority=magic", r"^replay\.priority must be one of grad_norm, loss_change"),
        ("replay.size=3", r"^unknown key replay\.size"),
        ("electra.backbone=lstm", r"^electra\.backbone must be"),
        ("electra.mask_prob=0", r"^electra\.mask_prob must be in \(0, 1\), got 0"),
        ("pretrain.steps=0", r"^pretrain\.steps must be >= 1, got 0$"),
        ("optim.lr=1", r"^unknown section"),
        ("lr=1", r"section\.key=value"),
    ],
)
def test_bad_settings_are_named(item: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_electra_run(None, overrides=[item])
    assert "\n" not in str(info.value)


def test_memformer_backbone_needs_whole_segments() -> None:
    with pytest.raises(ConfigError, match=r"electra\.segment_len \(20\) must divide"):
        ElectraConfig(backbone="memformer", seq_len=64, segment_len=20)
