"""ELECTRA pre-training (Clark et al. 2020), with TMR's replay buffer between its two halves.

A small masked-LM generator fills masked positions by sampling; the discriminator learns
replaced-token detection (RTD) on the result. Both share the token embedding; the loss
is ``L_mlm + discriminator_weight * L_rtd`` with weight 50, as in ELECTRA. With replay
(Transformer with Memory Replay, :mod:`memtx.replay`) every generated example is stored
in a prioritized buffer and each discriminator batch is ``B`` fresh examples plus
``round(B * ratio / (1 - ratio))`` replayed ones: the generator makes exactly the same
number of examples, with the same batch size and steps, with or without replay.

Choices where the papers leave room:

- Tokens: the tokenizer's ids, plus ``pad_id = vocab_size`` and ``mask_id = vocab_size + 1``
  (the embedding has ``vocab_size + 2`` rows; the generator never samples the two).
- Masking: exactly ``round(mask_prob * L)`` (>= 1) positions per row, uniformly, all
  replaced by ``mask_id`` before the generator reads them. The generator's sample is
  detached (no gradient through sampling). A sample equal to the original token is
  labelled NOT replaced, as in ELECTRA.
- Generator: a narrower bidirectional encoder; the shared embedding (width ``d_model``)
  is projected to ``generator_d_model`` and back, then scored against the tied embedding
  (ELECTRA's setup for a smaller generator). It scores only the masked positions.
- Discriminator backbone (``backbone``): ``"encoder"``, a LayerNorm over the embedded
  tokens (as in BERT and ELECTRA) and our pre-LN bidirectional
  :class:`~memtx.modules.Block` stack with rotary positions, over the whole example; or
  ``"memformer"``, Memformer's memory encoder walking the example ``segment_len`` tokens
  at a time: each segment is encoded reading the slots, then written into them
  (:meth:`Memformer.encode` / :meth:`Memformer.write`, gradients through the slots across
  the whole example). The generator then reads each segment on its own, so no part of
  the model attends over more than ``segment_len`` tokens. Memformer's decoder is unused
  (built with one block and frozen).
- Priorities for replay come from the discriminator's per-example loss and the
  closed-form norm of dLoss/dlogits of the very forward pass that trains on the batch
  (:func:`memtx.replay.rtd_example_stats`); the replayed examples' losses are scaled by
  their importance weights.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple

import numpy as np
import tomllib
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from memtx.checkpoint import (
    atomic_write_text,
    checkpoint_dirs,
    join_optimizer_state,
    load_latest,
    rng_state,
    save_checkpoint,
    set_rng_state,
    split_optimizer_state,
)
from memtx.config import Checked, DataConfig, MemformerConfig, RunConfig, TrainConfig
from memtx.errors import ConfigError, DataError
from memtx.modules import Block, RotaryEmbedding
from memtx.replay import ReplayBuffer, ReplayConfig, replay_count, rtd_example_stats

if TYPE_CHECKING:
    from memtx.finetune import FinetuneConfig
    from memtx.models.memformer import Memformer

__all__ = [
    "Corruption",
    "Discriminator",
    "ElectraConfig",
    "ElectraModel",
    "ElectraRun",
    "Generator",
    "PretrainConfig",
    "PretrainResult",
    "StepStats",
    "WindowSampler",
    "electra_step",
    "evaluate_rtd",
    "load_electra_run",
    "load_pretrained",
    "measure_replay_overhead",
    "pretrain",
    "pretrain_from_config",
]


# --------------------------------------------------------------------------- configs


@dataclass(frozen=True, kw_only=True)
class ElectraConfig(Checked):
    """The generator and discriminator (the ``[electra]`` table).

    Attributes:
        vocab_size: token ids of the tokenizer (set from it; 256 for bytes).
        seq_len: tokens per pre-training example.
        d_model: discriminator width, also the width of the shared token embedding.
        n_layers: discriminator blocks (memformer backbone: encoder blocks).
        n_heads: discriminator attention heads.
        d_ff: discriminator FFN width (``None``: 4 x ``d_model``).
        generator_d_model: generator width (ELECTRA: 1/4 to 1/2 of the discriminator's).
        generator_layers: generator blocks.
        generator_heads: generator attention heads.
        mask_prob: share of positions masked per example.
        discriminator_weight: lambda in ``L_mlm + lambda * L_rtd`` (ELECTRA: 50).
        sampling_temperature: temperature of the generator's samples.
        dropout: dropout in both networks.
        backbone: ``"encoder"`` (whole example at once) or ``"memformer"`` (Memformer's
            memory encoder, segment by segment, for long examples).
        segment_len: memformer backbone: tokens per segment (must divide ``seq_len``).
        memory_slots: memformer backbone: memory slots.
    """

    section: ClassVar[str] = "electra"

    vocab_size: int = 256
    seq_len: int = 128
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int | None = None
    generator_d_model: int = 64
    generator_layers: int = 2
    generator_heads: int = 2
    mask_prob: float = 0.15
    discriminator_weight: float = 50.0
    sampling_temperature: float = 1.0
    dropout: float = 0.0
    backbone: Literal["encoder", "memformer"] = "encoder"
    segment_len: int = 64
    memory_slots: int = 16

    @property
    def pad_id(self) -> int:
        return self.vocab_size

    @property
    def mask_id(self) -> int:
        return self.vocab_size + 1

    @property
    def embedding_rows(self) -> int:
        return self.vocab_size + 2

    def _validate(self) -> None:
        for name in ("vocab_size", "seq_len", "d_model", "n_layers", "n_heads"):
            self._at_least(name, 1)
        for name in ("generator_d_model", "generator_layers", "generator_heads"):
            self._at_least(name, 1)
        for name in ("segment_len", "memory_slots"):
            self._at_least(name, 1)
        if self.d_ff is not None:
            self._at_least("d_ff", 1)
        self._in_range("dropout", 0.0, 1.0)
        if not 0.0 < self.mask_prob < 1.0:
            raise ConfigError(f"electra.mask_prob must be in (0, 1), got {self.mask_prob}")
        if not self.discriminator_weight > 0:
            raise ConfigError(
                f"electra.discriminator_weight must be > 0, got {self.discriminator_weight}"
            )
        if not self.sampling_temperature > 0:
            raise ConfigError(
                f"electra.sampling_temperature must be > 0, got {self.sampling_temperature}"
            )
        for width, heads in (("d_model", "n_heads"), ("generator_d_model", "generator_heads")):
            w, h = getattr(self, width), getattr(self, heads)
            if w % h or (w // h) % 2:
                raise ConfigError(
                    f"electra.{width} ({w}) must be divisible by electra.{heads} ({h}) "
                    "into an even head width (rotary positions)"
                )
        if self.backbone == "memformer" and self.seq_len % self.segment_len:
            raise ConfigError(
                f"electra.segment_len ({self.segment_len}) must divide electra.seq_len "
                f"({self.seq_len}) with the memformer backbone"
            )


@dataclass(frozen=True, kw_only=True)
class PretrainConfig(Checked):
    """How to pre-train (the ``[pretrain]`` table).

    Attributes:
        steps: optimizer steps; each generates ``batch_size`` fresh examples.
        batch_size: fresh (generated) examples per step.
        lr: peak AdamW learning rate (warmup, then cosine to ``lr * min_lr_ratio``).
        warmup_steps: linear warmup steps.
        min_lr_ratio: the final learning rate as a share of ``lr``.
        weight_decay: AdamW weight decay on matrices.
        betas: AdamW betas.
        grad_clip: global gradient-norm clip (0 disables).
        seed: seeds the weights, the corpus windows and the masks.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        log_every: write a metrics line every this many steps.
        checkpoint_every: checkpoint every this many steps (0: only at the end).
        keep_checkpoints: most recent checkpoints kept.
        eval_examples: held-out windows of the valid split scored for RTD at the end.
        eval_seed: seed of their masks and samples (fixed across runs).
    """

    section: ClassVar[str] = "pretrain"

    steps: int = 600
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "cpu"
    log_every: int = 10
    checkpoint_every: int = 0
    keep_checkpoints: int = 1
    eval_examples: int = 256
    eval_seed: int = 1234

    def _validate(self) -> None:
        for name in ("steps", "batch_size", "log_every", "keep_checkpoints"):
            self._at_least(name, 1)
        for name in ("warmup_steps", "checkpoint_every", "eval_examples"):
            self._at_least(name, 0)
        self._check_optimization()

    def as_train_config(self) -> TrainConfig:
        """The same schedule and optimizer as a :class:`TrainConfig` (for ``memtx.train``)."""
        return TrainConfig(
            steps=self.steps,
            batch_size=self.batch_size,
            lr=self.lr,
            warmup_steps=self.warmup_steps,
            min_lr_ratio=self.min_lr_ratio,
            weight_decay=self.weight_decay,
            betas=self.betas,
            grad_clip=self.grad_clip,
            seed=self.seed,
            device=self.device,
        )


_SECTIONS = ("electra", "replay", "pretrain", "data", "finetune")


def _finetune_config_class() -> type:
    from memtx.finetune import FinetuneConfig  # finetune imports this module

    return FinetuneConfig


@dataclass(frozen=True, kw_only=True)
class ElectraRun:
    """A whole pre-training (and downstream) run: ``configs/electra-*.toml``."""

    electra: ElectraConfig = field(default_factory=ElectraConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    finetune: FinetuneConfig = field(default_factory=lambda: _finetune_config_class()())

    def to_dict(self) -> dict[str, Any]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in _SECTIONS}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ElectraRun:
        """Build and validate from nested dicts (TOML or JSON); unknown keys are errors."""
        from memtx.config import construct

        if not isinstance(raw, dict):
            raise ConfigError(f"an electra run config must be a table of {', '.join(_SECTIONS)}")
        unknown = sorted(set(raw) - set(_SECTIONS))
        if unknown:
            raise ConfigError(f"unknown section {unknown[0]!r} (known: {', '.join(_SECTIONS)})")
        classes = {
            "electra": ElectraConfig,
            "replay": ReplayConfig,
            "pretrain": PretrainConfig,
            "data": DataConfig,
            "finetune": _finetune_config_class(),
        }
        built = {}
        for name, klass in classes.items():
            values = raw.get(name, {})
            if not isinstance(values, dict):
                raise ConfigError(f"{name} must be a table, got {values!r}")
            built[name] = construct(klass, dict(values), section=name)
        return cls(**built)


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def load_electra_run(path: Path | str | None, *, overrides: Sequence[str] = ()) -> ElectraRun:
    """Read an ``electra-*.toml`` preset (None: defaults) and apply ``section.key=value`` overrides.

    Raises:
        ConfigError: missing file, bad TOML, unknown section or key, bad type or value.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {str(path)!r} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {str(path)!r} cannot be read: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        if section not in _SECTIONS:
            raise ConfigError(f"unknown section in --set {item!r} (known: {', '.join(_SECTIONS)})")
        table = raw.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{section} must be a table")
        table[name] = _parse_value(value.strip())
    return ElectraRun.from_dict(raw)


# --------------------------------------------------------------------------- networks


def _init_weights(module: nn.Module) -> None:
    """BERT/GPT-style init: N(0, 0.02) matrices and embeddings, zero biases."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.normal_(sub.weight, std=0.02)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.Embedding):
            nn.init.normal_(sub.weight, std=0.02)


def _attention_mask(key_mask: Tensor | None) -> Tensor | None:
    """[B, L] bool (True = real token) -> [B, 1, 1, L] for SDPA, or None."""
    return None if key_mask is None else key_mask[:, None, None, :]


class BidirectionalEncoder(nn.Module):
    """Pre-LN blocks over a whole sequence, no causal mask, rotary positions from 0."""

    def __init__(
        self, d_model: int, n_layers: int, n_heads: int, d_ff: int, *, dropout: float
    ) -> None:
        super().__init__()
        self.rotary = RotaryEmbedding(d_model // n_heads)
        self.blocks = nn.ModuleList(
            Block(d_model, n_heads, d_ff, dropout=dropout) for _ in range(n_layers)
        )
        self.ln_out = nn.LayerNorm(d_model)

    def forward(self, x: Tensor, *, key_mask: Tensor | None = None) -> Tensor:
        """x [B, L, d] (key_mask [B, L], True = real token) -> [B, L, d], normalized."""
        rotary = self.rotary(torch.arange(x.shape[1], device=x.device))
        mask = _attention_mask(key_mask)
        for block in self.blocks:
            x = block(x, mask=mask, rotary=rotary)
        return self.ln_out(x)


class Discriminator(nn.Module):
    """Token embedding + backbone + RTD head: ids [B, L] -> logits [B, L] (> 0: replaced).

    :meth:`hidden` is what fine-tuning builds on. Padding must be on the right.
    """

    def __init__(self, config: ElectraConfig) -> None:
        super().__init__()
        self.config = config
        d, ffn = config.d_model, config.d_ff or 4 * config.d_model
        self.memformer: Memformer | None = None
        if config.backbone == "encoder":
            self.embed = nn.Embedding(config.embedding_rows, d)
            # BERT/ELECTRA normalize the embedded tokens. Without it the token identity
            # (embedding norm ~0.5) drowns in the blocks' outputs (norm ~20 after RTD
            # pre-training), pooled features of different passages end up alike (cosine
            # 0.98), and fine-tuning from the pre-trained weights lost 22 points of play
            # accuracy to fine-tuning from random init (BPE, 1,000 steps; see tmr.md).
            self.embed_norm = nn.LayerNorm(d)
            self.encoder = BidirectionalEncoder(
                d, config.n_layers, config.n_heads, ffn, dropout=config.dropout
            )
        else:
            from memtx.models.memformer import Memformer

            self.memformer = Memformer(
                MemformerConfig(
                    vocab_size=config.embedding_rows,
                    d_model=d,
                    n_heads=config.n_heads,
                    d_ff=ffn,
                    segment_len=config.segment_len,
                    encoder_layers=config.n_layers,
                    decoder_layers=1,
                    memory_slots=config.memory_slots,
                    dropout=config.dropout,
                )
            )
            # Only the memory encoder (embedding, encoder blocks, writer, slot bias) is used.
            for part in (self.memformer.decoder, self.memformer.ln_out):
                part.requires_grad_(False)
            self.memformer.null_context.requires_grad_(False)
            self.ln_memformer = nn.LayerNorm(d)
        self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))

    @property
    def token_embedding(self) -> nn.Embedding:
        """The embedding shared with the generator (``vocab_size + 2`` rows)."""
        if self.memformer is not None:
            return self.memformer.embed
        return self.embed

    def hidden(self, ids: Tensor, *, key_mask: Tensor | None = None) -> Tensor:
        """ids [B, L] (key_mask [B, L], True = real token) -> hidden states [B, L, d]."""
        if self.memformer is None:
            return self.encoder(self.embed_norm(self.embed(ids)), key_mask=key_mask)
        return self._memformer_hidden(ids, key_mask)

    def _memformer_hidden(self, ids: Tensor, key_mask: Tensor | None) -> Tensor:
        memformer = self.memformer
        assert memformer is not None
        batch, length = ids.shape
        step = self.config.segment_len
        # Terminal-state slots with their parameters' graph, so the bias v_i learns.
        slots = memformer.terminal_state()[None].expand(batch, -1, -1)  # (B, k, d)
        outputs = []
        for start in range(0, length, step):
            segment = ids[:, start : start + step]  # (B, S)
            width = segment.shape[1]
            if key_mask is None:
                lengths = torch.full((batch,), width, device=ids.device)
                padded, write_mask = False, None
            else:
                # A row already finished still runs on padding (length 1); nobody reads it.
                lengths = key_mask[:, start : start + step].sum(-1).clamp_min(1)  # (B,)
                padded = bool((lengths != width).any())
                positions = torch.arange(width, device=ids.device)
                write_mask = positions[None, :] < lengths[:, None] if padded else None
            hidden = memformer.encode(segment, lengths, slots, padded=padded)  # (B, S, d)
            slots, _ = memformer.write(slots, hidden, write_mask)  # (B, k, d)
            outputs.append(hidden)
        return self.ln_memformer(torch.cat(outputs, dim=1))  # (B, L, d)

    def forward(self, ids: Tensor, *, key_mask: Tensor | None = None) -> Tensor:
        """ids [B, L] -> RTD logits [B, L]."""
        return self.head(self.hidden(ids, key_mask=key_mask)).squeeze(-1)


class Generator(nn.Module):
    """Small masked LM over the shared embedding; scores only the positions asked for."""

    def __init__(self, config: ElectraConfig) -> None:
        super().__init__()
        d, g = config.d_model, config.generator_d_model
        self.vocab_size = config.vocab_size
        self.in_proj = nn.Linear(d, g) if g != d else nn.Identity()
        self.encoder = BidirectionalEncoder(
            g, config.generator_layers, config.generator_heads, 4 * g, dropout=config.dropout
        )
        # ELECTRA's MLM head: dense to the embedding width, GELU, LayerNorm, tied output.
        self.head = nn.Sequential(nn.Linear(g, d), nn.GELU(), nn.LayerNorm(d))
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, embedded: Tensor, where: Tensor, embedding: Tensor) -> Tensor:
        """Logits over the real vocabulary at the positions ``where``.

        Args:
            embedded: [B, L, d] the masked input, embedded with the shared table.
            where: [B, L] bool, the positions to score.
            embedding: [V + 2, d] the shared table (its first V rows are the output).

        Returns:
            [M, V] with M = ``where.sum()``, in row-major order of ``where``.
        """
        hidden = self.encoder(self.in_proj(embedded))  # (B, L, g)
        picked = self.head(hidden[where])  # (M, d)
        return picked @ embedding[: self.vocab_size].t() + self.bias  # (M, V)


class Corruption(NamedTuple):
    """What :meth:`ElectraModel.corrupt` returns.

    Attributes:
        inputs: [B, L] long, the corrupted ids (originals outside the masked positions).
        labels: [B, L] bool, True where ``inputs`` differs from the original.
        masked: [B, L] bool, the positions the generator filled.
        generator_loss: scalar, the generator's MLM cross-entropy at masked positions.
    """

    inputs: Tensor
    labels: Tensor
    masked: Tensor
    generator_loss: Tensor


class ElectraModel(nn.Module):
    """Generator + discriminator sharing one token embedding."""

    def __init__(self, config: ElectraConfig) -> None:
        super().__init__()
        self.config = config
        self.discriminator = Discriminator(config)
        self.generator = Generator(config)
        # Linear and embedding weights only: Memformer's slot biases keep their own init.
        _init_weights(self)

    @property
    def device(self) -> torch.device:
        return self.discriminator.token_embedding.weight.device

    def _generator_view(self, ids: Tensor) -> Tensor:
        """With the memformer backbone the generator reads each segment on its own."""
        if self.config.backbone != "memformer":
            return ids
        return ids.reshape(-1, self.config.segment_len)  # (B * T, S)

    def corrupt(self, ids: Tensor, *, generator: torch.Generator | None = None) -> Corruption:
        """Mask ``ids`` [B, L], let the generator fill the masks by sampling, label the result.

        Args:
            ids: [B, L] original token ids (< vocab_size).
            generator: random source for the mask positions and the samples (default:
                torch's global one); must live on ``ids``' device.
        """
        cfg = self.config
        batch, length = ids.shape
        count = max(1, round(cfg.mask_prob * length))
        noise = torch.rand(batch, length, device=ids.device, generator=generator)  # (B, L)
        chosen = noise.argsort(dim=-1)[:, :count]  # (B, n)
        masked = torch.zeros_like(ids, dtype=torch.bool).scatter_(1, chosen, True)  # (B, L)
        view = self._generator_view(ids.masked_fill(masked, cfg.mask_id))  # (B', L')
        where = self._generator_view(masked)
        embedding = self.discriminator.token_embedding.weight
        logits = self.generator(F.embedding(view, embedding), where, embedding)  # (M, V)
        originals = ids[masked]  # (M,): same row-major order as logits
        generator_loss = F.cross_entropy(logits.float(), originals)
        with torch.no_grad():
            probs = torch.softmax(logits.float() / cfg.sampling_temperature, dim=-1)  # (M, V)
            sampled = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (M,)
        inputs = ids.masked_scatter(masked, sampled)  # (B, L)
        # A sample that equals the original is not a replacement (ELECTRA's labels).
        labels = inputs != ids
        return Corruption(inputs, labels, masked, generator_loss)


# --------------------------------------------------------------------------- data


class WindowSampler:
    """Random windows of ``seq_len`` tokens from one token array, from a seeded NumPy generator."""

    def __init__(self, tokens: np.ndarray, *, seq_len: int, batch_size: int, seed: int) -> None:
        if len(tokens) < seq_len:
            raise DataError(
                f"the pre-training split holds {len(tokens)} tokens, fewer than "
                f"electra.seq_len={seq_len}"
            )
        self.tokens = tokens
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def next_batch(self) -> Tensor:
        """[batch_size, seq_len] long, each row a window at a uniform random offset."""
        starts = self.rng.integers(0, len(self.tokens) - self.seq_len + 1, size=self.batch_size)
        rows = np.stack([self.tokens[s : s + self.seq_len] for s in starts])
        return torch.from_numpy(rows.astype(np.int64))

    def state_dict(self) -> dict[str, Any]:
        return dict(self.rng.bit_generator.state)  # JSON-able (Python ints)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state


def _windows(tokens: np.ndarray, *, seq_len: int, count: int) -> Tensor:
    """``count`` evenly spaced windows [count, seq_len] over ``tokens`` (fixed, no randomness)."""
    if len(tokens) < seq_len:
        raise DataError(f"a split of {len(tokens)} tokens is shorter than seq_len={seq_len}")
    starts = np.linspace(0, len(tokens) - seq_len, num=max(count, 1)).astype(np.int64)
    return torch.from_numpy(np.stack([tokens[s : s + seq_len] for s in starts]).astype(np.int64))


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_rtd(
    model: ElectraModel,
    tokens: np.ndarray,
    *,
    examples: int,
    seed: int,
    batch_size: int = 64,
) -> dict[str, float]:
    """Replaced-token detection on fixed held-out windows, corrupted by the model's generator.

    Returns:
        ``rtd_accuracy`` (all tokens), ``rtd_replaced_recall`` (replaced tokens found),
        ``rtd_loss`` (mean BCE), ``replaced_fraction`` and ``generator_loss``.
    """
    cfg = model.config
    was_training = model.training
    model.eval()
    device = model.device
    windows = _windows(tokens, seq_len=cfg.seq_len, count=examples)
    rng = torch.Generator(device=device).manual_seed(seed)
    correct = total = found = replaced = 0
    loss_sum = gen_sum = 0.0
    for start in range(0, len(windows), batch_size):
        ids = windows[start : start + batch_size].to(device)
        corruption = model.corrupt(ids, generator=rng)
        logits = model.discriminator(corruption.inputs)  # (b, L)
        labels = corruption.labels
        predicted = logits > 0
        correct += int((predicted == labels).sum())
        total += labels.numel()
        found += int((predicted & labels).sum())
        replaced += int(labels.sum())
        loss_sum += float(
            F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="sum")
        )
        gen_sum += float(corruption.generator_loss) * ids.shape[0]
    model.train(was_training)
    return {
        "rtd_accuracy": correct / total,
        "rtd_replaced_recall": found / max(replaced, 1),
        "rtd_loss": loss_sum / total,
        "replaced_fraction": replaced / total,
        "generator_loss": gen_sum / len(windows),
    }


# --------------------------------------------------------------------------- the loop


@dataclass
class PretrainResult:
    """What a pre-training run reports.

    Attributes:
        run_dir: the run folder.
        steps: optimizer steps done.
        generated_examples: fresh examples the generator made (``steps * batch_size``).
        replayed_examples: examples the discriminator saw again from the buffer.
        final_rtd_loss: mean discriminator loss on the fresh rows over the last 10 steps.
        valid: :func:`evaluate_rtd` on the valid split (empty if the split is too short).
        step_seconds_median: median wall-clock seconds per step (after 5 warm-up steps).
        replay_seconds_per_step: mean seconds per step spent in the buffer (sample,
            add, update), included in the step time.
        seconds: wall-clock seconds of the loop.
        history: the metrics lines written to ``metrics.jsonl``.
    """

    run_dir: Path
    steps: int
    generated_examples: int
    replayed_examples: int
    final_rtd_loss: float
    valid: dict[str, float]
    step_seconds_median: float
    replay_seconds_per_step: float
    seconds: float
    history: list[dict[str, Any]]

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary (no history)."""
        out = dataclasses.asdict(self)
        out.pop("history")
        out["run_dir"] = str(self.run_dir)
        return out


class StepStats(NamedTuple):
    """What one :func:`electra_step` did (figures on the fresh rows unless said otherwise).

    Attributes:
        generator_loss: the generator's MLM loss.
        rtd_loss: mean discriminator BCE on the fresh examples (unweighted).
        rtd_accuracy: token accuracy of the discriminator on the fresh examples.
        replaced_fraction: share of fresh tokens that the generator really replaced.
        replayed: replayed examples in the discriminator batch.
        replay_seconds: wall-clock seconds spent in the buffer (sample, add, update).
    """

    generator_loss: float
    rtd_loss: float
    rtd_accuracy: float
    replaced_fraction: float
    replayed: int
    replay_seconds: float

    def to_dict(self) -> dict[str, float | int]:
        return self._asdict()


def electra_step(
    model: ElectraModel,
    optimizer: torch.optim.Optimizer,
    ids: Tensor,
    *,
    buffer: ReplayBuffer | None,
    replayed_rows: int,
    beta: float,
    grad_clip: float,
) -> StepStats:
    """One pre-training step on fresh ``ids`` [B, L] (the caller sets the learning rate).

    Corrupt ``ids`` with the generator; if the buffer holds at least ``min_fill`` examples,
    append ``replayed_rows`` replayed ones; one discriminator forward scores all rows;
    ``loss = L_mlm + weight * L_rtd`` with replayed rows scaled by their importance
    weights; one backward, clip, step. Then, from that same forward pass, the replayed
    rows' priorities are refreshed and the fresh rows are added to the buffer.
    """
    cfg = model.config
    optimizer.zero_grad(set_to_none=True)
    corruption = model.corrupt(ids)
    inputs, labels = corruption.inputs, corruption.labels
    fresh = ids.shape[0]
    replay_seconds = 0.0
    sample = None
    if buffer is not None and replayed_rows and len(buffer) >= buffer.config.min_fill:
        mark = time.perf_counter()
        sample = buffer.sample(replayed_rows, beta=beta, device=ids.device)
        replay_seconds += time.perf_counter() - mark
        inputs = torch.cat([inputs, sample.ids])  # (B + R, L)
        labels = torch.cat([labels, sample.labels])
    logits = model.discriminator(inputs)  # (B + R, L)
    losses, grad_norms = rtd_example_stats(logits, labels, torch.ones_like(labels))  # (B + R,)
    if sample is not None:
        # Importance weights undo the bias of prioritized sampling.
        weights = torch.cat([losses.new_ones(fresh), sample.weights.to(losses.dtype)])
        rtd_loss = (weights * losses).sum() / losses.shape[0]
    else:
        rtd_loss = losses.mean()
    loss = corruption.generator_loss + cfg.discriminator_weight * rtd_loss
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    detached = losses.detach()
    if buffer is not None:
        mark = time.perf_counter()
        # Priorities from this step's own forward pass: no extra pass.
        if sample is not None:
            buffer.update(sample.indices, losses=detached[fresh:], grad_norms=grad_norms[fresh:])
        buffer.add(
            ids=corruption.inputs,
            labels=corruption.labels,
            losses=detached[:fresh],
            grad_norms=grad_norms[:fresh],
        )
        replay_seconds += time.perf_counter() - mark
    with torch.no_grad():
        accuracy = ((logits[:fresh] > 0) == labels[:fresh]).float().mean()
    return StepStats(
        generator_loss=float(corruption.generator_loss.detach()),
        rtd_loss=float(detached[:fresh].mean()),
        rtd_accuracy=float(accuracy),
        replaced_fraction=float(labels[:fresh].float().mean()),
        replayed=0 if sample is None else sample.indices.numel(),
        replay_seconds=replay_seconds,
    )


def _beta_at(step: int, steps: int, cfg: ReplayConfig) -> float:
    return cfg.beta + (cfg.beta_final - cfg.beta) * step / max(steps - 1, 1)


def pretrain(
    run: ElectraRun,
    *,
    out_dir: Path,
    resume: bool = False,
    progress: bool = False,
    data: Any = None,
    stop_after: int | None = None,
) -> PretrainResult:
    """Pre-train ELECTRA (with replay when ``run.replay.enabled``) into ``out_dir``.

    The folder gets ``config.json``, ``tokenizer.json``, ``metrics.jsonl``, checkpoints
    (weights, optimizer, RNG, the replay buffer, the corpus sampler) and ``result.json``.

    Args:
        run: the validated run config.
        out_dir: the run folder (must not hold another run unless ``resume``).
        resume: continue from the newest intact checkpoint in ``out_dir``.
        progress: show a progress bar.
        data: prepared data (:func:`memtx.train.prepare_data`) to reuse.
        stop_after: stop (with a checkpoint) after this many steps of this call.

    Raises:
        ConfigError: an ``out_dir`` that holds another run, or bad combinations.
        DataError: a corpus that cannot be read or is too short.
    """
    from memtx.data import load_tokenizer
    from memtx.train import build_optimizer, lr_at, prepare_data, resolve_device, seed_everything

    out_dir = Path(out_dir)
    cfg = run.pretrain
    device = resolve_device(cfg.device)
    if resume and not (out_dir / "config.json").is_file():
        raise ConfigError(f"--resume: {out_dir} holds no run (no config.json)")
    if not resume and ((out_dir / "config.json").exists() or checkpoint_dirs(out_dir)):
        raise ConfigError(f"{out_dir} already holds a run; choose another output folder")
    if data is None:
        tokenizer = load_tokenizer(out_dir) if resume else None
        data = prepare_data(RunConfig(data=run.data), tokenizer=tokenizer)
    if run.electra.vocab_size != data.tokenizer.vocab_size:
        run = dataclasses.replace(
            run, electra=dataclasses.replace(run.electra, vocab_size=data.tokenizer.vocab_size)
        )
    electra = run.electra
    sampler = WindowSampler(
        data.train, seq_len=electra.seq_len, batch_size=cfg.batch_size, seed=cfg.seed
    )
    seed_everything(cfg.seed)
    model = ElectraModel(electra).to(device)
    train_cfg = cfg.as_train_config()
    optimizer = build_optimizer(model, train_cfg)
    buffer = ReplayBuffer(run.replay, example_len=electra.seq_len) if run.replay.enabled else None
    n_replay = replay_count(cfg.batch_size, run.replay.ratio) if buffer is not None else 0

    start_step = 0
    history: list[dict[str, Any]] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = out_dir / "metrics.jsonl"
    if resume:
        checkpoint = load_latest(out_dir, map_location=device)
        if checkpoint is not None:
            model.load_state_dict(checkpoint.model)
            optimizer.load_state_dict(
                join_optimizer_state(checkpoint.state, checkpoint.meta["optimizer"])
            )
            sampler.load_state_dict(checkpoint.meta["sampler"])
            set_rng_state({k: v.cpu() for k, v in checkpoint.state.items()}, checkpoint.meta["rng"])
            if buffer is not None:
                buffer.load_state_dict(
                    {k: v.cpu() for k, v in checkpoint.state.items()}, checkpoint.meta["replay"]
                )
            start_step = checkpoint.step
        if metrics_path.exists():
            lines = metrics_path.read_text(encoding="utf-8").splitlines()
            history = [m for m in map(json.loads, filter(None, lines)) if m["step"] <= start_step]
            atomic_write_text(metrics_path, "".join(json.dumps(m) + "\n" for m in history))
    else:
        atomic_write_text(out_dir / "config.json", json.dumps(run.to_dict(), indent=1) + "\n")
        data.tokenizer.save(out_dir)

    def checkpoint_now(step: int) -> None:
        optim_tensors, optim_meta = split_optimizer_state(optimizer.state_dict())
        rng_tensors, rng_meta = rng_state()
        state = {**optim_tensors, **rng_tensors}
        meta: dict[str, Any] = {
            "config": run.to_dict(),
            "optimizer": optim_meta,
            "rng": rng_meta,
            "sampler": sampler.state_dict(),
        }
        if buffer is not None:
            replay_tensors, meta["replay"] = buffer.state_dict()
            state.update(replay_tensors)
        save_checkpoint(
            out_dir,
            step=step,
            model_state=model.state_dict(),
            state=state,
            meta=meta,
            keep=cfg.keep_checkpoints,
        )

    metrics_file = metrics_path.open("a", encoding="utf-8")

    def log(entry: dict[str, Any]) -> None:
        history.append(entry)
        metrics_file.write(json.dumps(entry) + "\n")
        metrics_file.flush()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    end_step = cfg.steps if stop_after is None else min(cfg.steps, start_step + stop_after)
    step_times: list[float] = []
    replay_time = 0.0
    replayed = 0
    recent_losses: list[float] = []
    began = time.perf_counter()
    model.train()
    bar = tqdm(total=cfg.steps, initial=start_step, desc="pretrain", disable=not progress)
    try:
        for step in range(start_step, end_step):
            tick = time.perf_counter()
            ids = sampler.next_batch().to(device)  # (B, L)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, train_cfg)
            stats = electra_step(
                model,
                optimizer,
                ids,
                buffer=buffer,
                replayed_rows=n_replay,
                beta=_beta_at(step, cfg.steps, run.replay),
                grad_clip=cfg.grad_clip,
            )
            replay_time += stats.replay_seconds
            replayed += stats.replayed
            sync()
            step_times.append(time.perf_counter() - tick)
            recent_losses = [*recent_losses[-9:], stats.rtd_loss]
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                log(
                    {
                        "step": done,
                        "split": "train",
                        **stats.to_dict(),
                        "lr": lr_at(step, train_cfg),
                        "step_seconds": step_times[-1],
                    }
                )
            bar.set_postfix(rtd=f"{stats.rtd_loss:.3f}", gen=f"{stats.generator_loss:.2f}")
            bar.update(1)
            if (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == end_step:
                checkpoint_now(done)
        seconds = time.perf_counter() - began
        valid: dict[str, float] = {}
        if end_step == cfg.steps and cfg.eval_examples and len(data.valid) >= electra.seq_len:
            valid = evaluate_rtd(model, data.valid, examples=cfg.eval_examples, seed=cfg.eval_seed)
            log({"step": end_step, "split": "valid", **valid})
    finally:
        bar.close()
        metrics_file.close()
    timed = step_times[5:] if len(step_times) > 5 else step_times
    result = PretrainResult(
        run_dir=out_dir,
        steps=end_step,
        generated_examples=(end_step - start_step) * cfg.batch_size,
        replayed_examples=replayed,
        final_rtd_loss=statistics.fmean(recent_losses) if recent_losses else math.nan,
        valid=valid,
        step_seconds_median=statistics.median(timed) if timed else math.nan,
        replay_seconds_per_step=replay_time / max(len(step_times), 1),
        seconds=seconds,
        history=history,
    )
    if end_step == cfg.steps:
        atomic_write_text(out_dir / "result.json", json.dumps(result.summary(), indent=1) + "\n")
    return result


def measure_replay_overhead(
    run: ElectraRun, *, data: Any, rounds: int = 30, warmup: int = 4
) -> dict[str, float]:
    """Paired timing of a pre-training step without and with replay, on the same batches.

    Two identical models (same seed) train side by side in this process, alternating one
    step each on the same fresh batch, so a load that drifts over time (a shared machine)
    hits both alike. The buffer is filled to ``min_fill`` first (those steps untimed).

    Returns:
        ``baseline_ms`` and ``replay_ms`` (median step), ``overhead_pct`` (their ratio - 1,
        in %), ``bookkeeping_ms`` (median time in the buffer per replay step) and
        ``bookkeeping_pct`` (of the baseline step).
    """
    from memtx.train import build_optimizer, resolve_device, seed_everything

    cfg = run.pretrain
    device = resolve_device(cfg.device)
    electra = dataclasses.replace(run.electra, vocab_size=data.tokenizer.vocab_size)
    sampler = WindowSampler(
        data.train, seq_len=electra.seq_len, batch_size=cfg.batch_size, seed=cfg.seed
    )
    models, optimizers = [], []
    for _ in range(2):
        seed_everything(cfg.seed)
        model = ElectraModel(electra).to(device)
        models.append(model)
        optimizers.append(build_optimizer(model, cfg.as_train_config()))
    buffer = ReplayBuffer(
        dataclasses.replace(run.replay, enabled=True), example_len=electra.seq_len
    )
    rows = replay_count(cfg.batch_size, run.replay.ratio)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fill = math.ceil(run.replay.min_fill / cfg.batch_size)
    timings: dict[str, list[float]] = {"baseline": [], "replay": [], "bookkeeping": []}
    for index in range(max(warmup, fill) + rounds):
        ids = sampler.next_batch().to(device)
        order = ("baseline", "replay") if index % 2 == 0 else ("replay", "baseline")
        for name in order:
            replaying = name == "replay"
            sync()
            tick = time.perf_counter()
            stats = electra_step(
                models[replaying],
                optimizers[replaying],
                ids,
                buffer=buffer if replaying else None,
                replayed_rows=rows if replaying else 0,
                beta=run.replay.beta,
                grad_clip=cfg.grad_clip,
            )
            sync()
            if index >= max(warmup, fill):
                timings[name].append(time.perf_counter() - tick)
                if replaying:
                    timings["bookkeeping"].append(stats.replay_seconds)
    base = statistics.median(timings["baseline"])
    replay = statistics.median(timings["replay"])
    book = statistics.median(timings["bookkeeping"])
    return {
        "baseline_ms": 1000 * base,
        "replay_ms": 1000 * replay,
        "overhead_pct": 100 * (replay / base - 1),
        "bookkeeping_ms": 1000 * book,
        "bookkeeping_pct": 100 * book / base,
        "replayed_rows": float(rows),
        "rounds": float(rounds),
    }


def pretrain_from_config(
    config_path: Path, *, overrides: list[str], out_dir: Path, progress: bool
) -> dict[str, Any]:
    """``memtx pretrain``: read the preset, apply ``--set`` overrides, pre-train, summarize.

    Returns:
        A JSON-able summary: run folder, steps, generated and replayed examples, final
        RTD loss, valid RTD figures, seconds per step.

    Raises:
        ConfigError, DataError: bad config, existing run folder, unreadable corpus.
    """
    run = load_electra_run(config_path, overrides=overrides)
    return pretrain(run, out_dir=out_dir, progress=progress).summary()


def load_pretrained(
    run_dir: Path, *, device: torch.device | str = "cpu"
) -> tuple[ElectraRun, ElectraModel]:
    """A pre-training run's config and its model with the newest intact checkpoint's weights.

    Raises:
        ConfigError: no run or no intact checkpoint in ``run_dir``, or weights that do not
            fit the saved config.
    """
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir} holds no pre-training run (no config.json)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} cannot be read: {exc}") from None
    run = ElectraRun.from_dict(raw)
    checkpoint = load_latest(Path(run_dir), map_location=device)
    if checkpoint is None:
        raise ConfigError(f"{run_dir} has no intact checkpoint to load")
    model = ElectraModel(run.electra).to(device)
    try:
        model.load_state_dict(checkpoint.model)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise ConfigError(f"the checkpoint does not fit the electra config: {first}") from None
    return run, model
