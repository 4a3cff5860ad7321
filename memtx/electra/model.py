"""ELECTRA's networks: a generator and a discriminator sharing one token embedding.

Choices where the paper leaves room (the rest of them are in :mod:`memtx.electra`):

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
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memtx.config import MemformerConfig
from memtx.electra.config import ElectraConfig
from memtx.models.memformer import Memformer
from memtx.modules import Block, RotaryEmbedding

__all__ = ["BidirectionalEncoder", "Corruption", "Discriminator", "ElectraModel", "Generator"]


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
            if self.memformer.null_context is not None:  # the cross-attention's only
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
            positions = torch.arange(width, device=ids.device)
            if key_mask is None:
                keys = torch.ones(batch, width, dtype=torch.bool, device=ids.device)  # (B, S)
            else:
                # A row already finished still runs on padding (length 1); nobody reads it.
                lengths = key_mask[:, start : start + step].sum(-1).clamp_min(1)  # (B,)
                keys = positions[None, :] < lengths[:, None]  # (B, S)
            write_mask = None if key_mask is None else keys
            hidden = memformer.encode(segment, keys, slots)  # (B, S, d)
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
