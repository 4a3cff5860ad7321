"""Memformer (Wu et al. 2022): segment encoder + external slot memory + causal decoder.

Per segment t, with memory (slots M_{t-1}, previous segment x_{t-1}):

    H_{t-1}, M_t = Encoder(x_{t-1}, M_{t-1})   # reader in every block, slot writer at the end
    logits_t     = Decoder(x_t | H_{t-1})       # causal over x_t, cross-attends to H_{t-1}

so the decoder predicts segment t from the encoding of segment t-1, as in the paper, and
never reads the slots directly: history reaches it only through H. The memory value
therefore holds the slots and the previous segment's tokens (:class:`MemformerMemory`);
the encoder runs first in :meth:`Memformer.step`, and :meth:`Memformer.advance` runs only
the encoder and writer (the "critical path" MRBP's no-grad pass needs).

Choices where the paper leaves room (all documented where they are made):

- Decoder input: the paper feeds ``[bos, x_{t,0}, ..., x_{t,L-2}]`` and predicts
  ``x_{t,0..L-1}``. To keep the contract of every model here (``logits[:, i]`` predicts the
  token after ``tokens[:, i]``) we feed the real tokens: ``logits[:, 0]`` predicts
  ``x_t[1]`` from ``x_t[0]`` and H_{t-1}. The first token of a segment is predicted by the
  previous segment's last position, exactly as the driver's shifted targets ask.
- Start of a stream (``prev_len == 0``): there is no previous segment, so the encoder does
  not run for that row, the decoder cross-attends to one learned "null context" vector
  instead of H, and the row's next slots are the terminal state (what ``init_memory``
  holds: with no input the memory stays there). They are computed from the parameters,
  not copied from the input memory, so the terminal state / initial memory is learned
  the same way by every gradient strategy (MRBP detaches the input memory of a rollout;
  a copied initial memory would get gradient from ``full`` only).
- Positions: rotary, restarting at 0 in every segment, in the encoder and the decoder;
  attention scores depend only on distances inside a segment, so a segment is processed
  the same wherever it sits in the stream (the paper asks for any relative scheme).
- Writer: slot attention where slot i attends to itself and to H, never to other slots.
  Queries and keys are taken from LayerNorm'd slots and LayerNorm'd H (the pre-LN
  convention of every block here; BMN slots have unit norm, i.e. entries ~ 1/sqrt(d), so
  without it the slot's own key would be ~sqrt(d) times smaller than the tokens' keys),
  but the slot's VALUE is the raw slot m_i, un-projected, as in the paper. Scores are
  divided by sqrt(head_dim) and by the temperature tau (``write_temperature``). Per head
  h, the raw value is the head's slice of m_i. The output is
  ``m'_i = concat_h(a_ii^h m_i^h) + W_o concat_h(sum_j a_ij^h (H W_v)_j^h)``: the slot's
  own (retained) part is never projected, the written part goes through W_o. No dropout
  in the writer (noise in a long-lived state compounds across segments).
- Forgetting (BMN, ``use_forgetting=True``): ``m_i <- (m'_i + v_i) / ||m'_i + v_i||`` with a
  learned bias v_i ~ N(0, 1) per slot; the initial memory is the terminal state
  ``v_i / ||v_i||``. Without forgetting there is no bias and no normalization (the
  ablation removes BMN entirely), and the initial memory is a learned parameter
  (initialised as random unit vectors, the scale BMN slots have).
- No memory (``use_memory=False``, the paper's "w/o memory"): no reader, no writer, no
  bias; the slots (zeros) pass through unchanged, the decoder still sees H_{t-1}, and
  ``memory_carries_grad`` is False (only discrete tokens are carried).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memtx.config import MemformerConfig
from memtx.errors import DataError
from memtx.models.protocol import (
    CachedDecoding,
    DecodeState,
    StepOutput,
    TiedLM,
    cache_mask,
    check_memory_tensor,
    check_memory_type,
)
from memtx.modules import Block, RotaryEmbedding, decode_blocks
from memtx.modules.attention import merge_heads, split_heads


class MemformerMemory(NamedTuple):
    """Memformer's memory.

    Attributes:
        slots: [B, memory_slots, d_model] float, the external memory (carries gradient).
        prev_tokens: [B, segment_len] long, the previous segment, right-padded with 0.
        prev_len: [B] long, the previous segment's length (0: start of the stream).
    """

    slots: Tensor
    prev_tokens: Tensor
    prev_len: Tensor


class SlotWriter(nn.Module):
    """Multi-head slot attention: each slot attends to itself and to the encoder outputs.

    Slot i never sees slot j != i: its keys are only ``[its own ; H]``, so the score with
    itself is computed on its own and no [k, k] attention exists at all.
    """

    def __init__(self, d_model: int, n_heads: int, *, temperature: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.temperature = temperature
        self.ln_slots = nn.LayerNorm(d_model)
        self.ln_hidden = nn.LayerNorm(d_model)
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)  # shared by slot and token keys
        self.v_proj = nn.Linear(d_model, d_model, bias=False)  # token values only
        self.out_proj = nn.Linear(d_model, d_model, bias=False)  # written part only

    def forward(
        self, slots: Tensor, hidden: Tensor, key_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Write ``hidden`` into ``slots``.

        Args:
            slots: [B, k, d] the slots m_i before writing.
            hidden: [B, P, d] the encoder outputs H.
            key_mask: [B, P] bool, True where H is a real token (None: all are).

        Returns:
            The written slots m' [B, k, d] (before BMN) and the attention
            [B, heads, k, 1 + P], column 0 the weight each slot puts on itself.
        """
        normed = self.ln_slots(slots)  # (B, k, d)
        context = self.ln_hidden(hidden)  # (B, P, d)
        q = split_heads(self.q_proj(normed), self.n_heads)  # (B, h, k, hd)
        k_self = split_heads(self.k_proj(normed), self.n_heads)  # (B, h, k, hd)
        k_tokens = split_heads(self.k_proj(context), self.n_heads)  # (B, h, P, hd)
        v_tokens = split_heads(self.v_proj(context), self.n_heads)  # (B, h, P, hd)
        scale = 1.0 / (math.sqrt(q.shape[-1]) * self.temperature)
        self_score = (q * k_self).sum(-1, keepdim=True) * scale  # (B, h, k, 1)
        token_scores = (q @ k_tokens.transpose(-1, -2)) * scale  # (B, h, k, P)
        if key_mask is not None:
            token_scores = token_scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        attention = torch.cat([self_score, token_scores], dim=-1).softmax(-1)  # (B, h, k, 1+P)
        retained = attention[..., :1] * split_heads(slots, self.n_heads)  # (B, h, k, hd)
        written = attention[..., 1:] @ v_tokens  # (B, h, k, hd)
        new_slots = merge_heads(retained) + self.out_proj(merge_heads(written))  # (B, k, d)
        return new_slots, attention


class Memformer(TiedLM):
    """Memformer language model over segments; memory = :class:`MemformerMemory`.

    ``aux["write_attention"]`` ([B, heads, memory_slots, 1 + segment_len], detached) is the
    writer's attention of this step: column 0 is the weight a slot keeps on itself (the
    retention gate), columns 1.. the weights on the previous segment's tokens (0 on
    padding). Rows at the start of a stream did not write: weight 1 on themselves. Absent
    when ``use_memory`` is False.
    """

    memory_carries_grad = True

    def __init__(self, config: MemformerConfig) -> None:
        super().__init__(config)
        self.config: MemformerConfig = config
        d, heads, ffn = config.d_model, config.n_heads, config.ffn_dim
        assert config.encoder_layers is not None and config.decoder_layers is not None
        self.rotary = RotaryEmbedding(config.head_dim)
        # The memory reader is the cross-attention of every encoder block (context = slots).
        self.encoder = nn.ModuleList(
            Block(d, heads, ffn, dropout=config.dropout, cross_attention=config.use_memory)
            for _ in range(config.encoder_layers)
        )
        self.decoder = nn.ModuleList(
            Block(d, heads, ffn, dropout=config.dropout, cross_attention=True)
            for _ in range(config.decoder_layers)
        )
        self.null_context = nn.Parameter(torch.zeros(d))
        self.writer: SlotWriter | None = None
        self.slot_bias: nn.Parameter | None = None  # BMN's v_i
        self.initial_slots: nn.Parameter | None = None  # without forgetting
        if config.use_memory:
            self.writer = SlotWriter(d, heads, temperature=config.write_temperature)
            if config.use_forgetting:
                self.slot_bias = nn.Parameter(torch.zeros(config.memory_slots, d))
            else:
                self.initial_slots = nn.Parameter(torch.zeros(config.memory_slots, d))
        else:
            # Nothing is read or written: the slots are inert zeros kept for a uniform memory.
            self.memory_carries_grad = False
        self.init_weights()
        nn.init.normal_(self.null_context, std=0.02)
        for block in self.decoder:
            assert isinstance(block, Block) and block.cross_attn is not None
            # The decoder starts as a plain causal transformer and learns to read H: at
            # init H carries nothing yet, and a random projection of it is noise in the
            # residual stream. Measured on shakespeare (width 128, 400 steps): training
            # loss at step 100/200 2.238/2.157 with this vs 2.373/2.252 without (the
            # no-memory transformer: 2.240/2.132).
            nn.init.zeros_(block.cross_attn.out_proj.weight)
        with torch.no_grad():
            if self.slot_bias is not None:
                # Random, so every slot has its own terminal state.
                nn.init.normal_(self.slot_bias)
            if self.initial_slots is not None:
                self.initial_slots.copy_(F.normalize(torch.randn_like(self.initial_slots), dim=-1))

    # ----------------------------------------------------------------------- memory

    def terminal_state(self) -> Tensor:
        """The slots of a fresh stream, [memory_slots, d_model] (a function of the parameters).

        With BMN it is ``v_i / ||v_i||``, the state slots drift back to with no input;
        without forgetting the learned initial slots; without memory zeros.
        """
        cfg = self.config
        if self.slot_bias is not None:
            return F.normalize(self.slot_bias, dim=-1)
        if self.initial_slots is not None:
            return self.initial_slots
        return self.null_context.new_zeros(cfg.memory_slots, cfg.d_model)

    def init_memory(
        self, batch_size: int, *, device: torch.device | str | None = None
    ) -> MemformerMemory:
        """Terminal-state slots, no previous segment (``prev_len`` 0) for every row."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        cfg = self.config
        device = device or self.device
        terminal = self.terminal_state().detach().to(device)  # (k, d)
        slots = terminal[None].expand(batch_size, -1, -1).clone()  # (B, k, d)
        prev_tokens = torch.zeros(batch_size, cfg.segment_len, dtype=torch.long, device=device)
        prev_len = torch.zeros(batch_size, dtype=torch.long, device=device)
        return MemformerMemory(slots, prev_tokens, prev_len)

    def _check_memory(self, memory: MemformerMemory, tokens: Tensor) -> list[int]:
        """Validate ``memory`` against ``tokens``; return ``prev_len`` as Python ints."""
        check_memory_type(memory, MemformerMemory, model="memformer")
        cfg, batch = self.config, tokens.shape[0]
        check_memory_tensor(
            memory.slots, name="slots", shape=(batch, cfg.memory_slots, cfg.d_model), like=tokens
        )
        if not memory.slots.dtype.is_floating_point:
            raise DataError(f"memory field slots must be a float tensor, got {memory.slots.dtype}")
        check_memory_tensor(
            memory.prev_tokens,
            name="prev_tokens",
            shape=(batch, cfg.segment_len),
            like=tokens,
            dtype=torch.long,
        )
        check_memory_tensor(
            memory.prev_len, name="prev_len", shape=(batch,), like=tokens, dtype=torch.long
        )
        lengths = memory.prev_len.tolist()  # one host sync; the batch layout depends on it
        bad = [n for n in lengths if not 0 <= n <= cfg.segment_len]
        if bad:
            raise DataError(
                f"memory field prev_len must be in [0, {cfg.segment_len}], got {bad[0]}"
            )
        return lengths

    # ----------------------------------------------------------------------- parts

    def encode(self, tokens: Tensor, lengths: Tensor, slots: Tensor, *, padded: bool) -> Tensor:
        """The encoder: bidirectional blocks over a segment, each reading the slots.

        Args:
            tokens: [b, P] the previous segments, right-padded.
            lengths: [b] long, their lengths (all >= 1).
            slots: [b, k, d] the memory the reader attends to.
            padded: whether some row is shorter than P (then padding is masked).

        Returns:
            H [b, P, d] (positions past a row's length hold values nobody reads).
        """
        length = tokens.shape[1]
        positions = torch.arange(length, device=tokens.device)
        rotary = self.rotary(positions)
        mask = None
        if padded:
            mask = (positions[None, :] < lengths[:, None])[:, None, None, :]  # (b, 1, 1, P)
        x = self.embed_tokens(tokens)  # (b, P, d)
        context = slots if self.config.use_memory else None
        for block in self.encoder:
            x = block(x, mask=mask, rotary=rotary, context=context)
        return x

    def write(
        self, slots: Tensor, hidden: Tensor, key_mask: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Writer + BMN: the next slots [b, k, d] and the write attention [b, h, k, 1 + P]."""
        assert self.writer is not None
        written, attention = self.writer(slots, hidden, key_mask)
        if self.slot_bias is not None:
            written = F.normalize(written + self.slot_bias, dim=-1)
        return written, attention

    def _critical_path(
        self, memory: MemformerMemory, lengths: list[int]
    ) -> tuple[Tensor | None, Tensor, Tensor | None, list[int]]:
        """Encoder (+ writer) on the rows that have a previous segment.

        Returns:
            H [b, P, d] of those rows (None when no row has one), the next slots
            [B, k, d], the write attention [b, h, k, 1 + P] (None without memory or
            without rows to write), and the indices of those rows in the batch.
        """
        rows = [i for i, n in enumerate(lengths) if n > 0]
        everyone = len(rows) == len(lengths)
        index = None if everyone else torch.tensor(rows, device=memory.slots.device)
        next_slots = memory.slots  # without memory nothing is ever written
        if self.writer is not None and not everyone:
            # A fresh stream's slots are the terminal state (with its parameters' graph).
            terminal = self.terminal_state().to(memory.slots.dtype)  # (k, d)
            next_slots = terminal[None].expand(memory.slots.shape).contiguous()  # (B, k, d)
        if not rows:
            return None, next_slots, None, rows
        longest = max(lengths[i] for i in rows)
        padded = any(lengths[i] != longest for i in rows)
        pick = (lambda t: t) if index is None else (lambda t: t.index_select(0, index))
        prev_tokens = pick(memory.prev_tokens)[:, :longest]  # (b, P)
        prev_len = pick(memory.prev_len)  # (b,)
        slots = pick(memory.slots)  # (b, k, d)
        hidden = self.encode(prev_tokens, prev_len, slots, padded=padded)  # (b, P, d)
        if self.writer is None:
            return hidden, next_slots, None, rows
        key_mask = None
        if padded:
            key_mask = torch.arange(longest, device=hidden.device)[None, :] < prev_len[:, None]
        written, attention = self.write(slots, hidden, key_mask)  # (b, k, d), (b, h, k, 1+P)
        if index is not None:
            written = next_slots.index_copy(0, index, written)  # (B, k, d)
        return hidden, written, attention, rows

    def _next_memory(self, tokens: Tensor, slots: Tensor) -> MemformerMemory:
        batch, length = tokens.shape
        prev_tokens = tokens.new_zeros(batch, self.config.segment_len)  # (B, S)
        prev_tokens[:, :length] = tokens
        prev_len = torch.full((batch,), length, dtype=torch.long, device=tokens.device)
        return MemformerMemory(slots, prev_tokens, prev_len)

    def _decoder_context(
        self, hidden: Tensor | None, rows: list[int], lengths: list[int], prev_len: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """What the decoder cross-attends to: [B, S, d] and its mask [B, 1, 1, S] (or None).

        All rows with a previous segment: H itself (padding masked). All at the start: the
        null vector. Mixed: ``[null ; H]``, each row allowed only its own part.
        """
        batch, d = len(lengths), self.config.d_model
        null = self.null_context[None, None, :]  # (1, 1, d)
        if hidden is None:
            return null.expand(batch, 1, d), None
        longest = hidden.shape[1]
        positions = torch.arange(longest, device=hidden.device)
        valid = positions[None, :] < prev_len[:, None]  # (B, P)
        if len(rows) == batch:
            padded = any(n != longest for n in lengths)
            return hidden, valid[:, None, None, :] if padded else None
        index = torch.tensor(rows, device=hidden.device)
        scattered = hidden.new_zeros(batch, longest, d).index_copy(0, index, hidden)  # (B, P, d)
        context = torch.cat([null.expand(batch, 1, d), scattered], dim=1)  # (B, 1+P, d)
        at_start = (prev_len == 0)[:, None]  # (B, 1)
        mask = torch.cat([at_start, valid], dim=1)[:, None, None, :]  # (B, 1, 1, 1+P)
        return context, mask

    def _write_attention(self, attention: Tensor | None, rows: list[int], batch: int) -> Tensor:
        """The writer's attention for the whole batch, [B, h, k, 1 + segment_len], detached."""
        cfg = self.config
        shape = (batch, cfg.n_heads, cfg.memory_slots, 1 + cfg.segment_len)
        if attention is None:
            full = self.null_context.new_zeros(shape)  # (B, h, k, 1+S)
            full[..., 0] = 1.0  # no row wrote: each slot kept all of itself
            return full
        attention = attention.detach()
        attention = F.pad(attention, (0, shape[-1] - attention.shape[-1]))  # (b, h, k, 1+S)
        if len(rows) == batch:
            return attention
        full = attention.new_zeros(shape)  # (B, h, k, 1+S)
        full[..., 0] = 1.0  # rows at the start did not write
        return full.index_copy(0, torch.tensor(rows, device=full.device), attention)

    # ----------------------------------------------------------------------- contract

    def step(self, tokens: Tensor, memory: MemformerMemory) -> StepOutput:
        """Encode the previous segment (reading and writing the slots), decode ``tokens``.

        Args:
            tokens: [B, L] ids, L <= segment_len.
            memory: from :meth:`init_memory` or a previous ``step``.

        Returns:
            logits [B, L, V] (``logits[:, i]`` predicts ``tokens[:, i + 1]``), the next
            memory (these slots written with the previous segment, ``tokens`` as the new
            previous segment) and ``aux["write_attention"]`` (see the class docstring).
        """
        self.check_tokens(tokens)
        lengths = self._check_memory(memory, tokens)
        batch, length = tokens.shape
        # The critical path runs first, so ``advance`` consumes the RNG (dropout) the same.
        hidden, slots, attention, rows = self._critical_path(memory, lengths)
        context, context_mask = self._decoder_context(hidden, rows, lengths, memory.prev_len)
        rotary = self.rotary(torch.arange(length, device=tokens.device))
        x = self.embed_tokens(tokens)  # (B, L, d)
        for block in self.decoder:
            x = block(x, is_causal=True, rotary=rotary, context=context, context_mask=context_mask)
        aux: dict[str, Tensor] = {}
        if self.writer is not None:
            aux["write_attention"] = self._write_attention(attention, rows, batch)
        return StepOutput(self.logits(x), self._next_memory(tokens, slots), aux)

    def advance(self, tokens: Tensor, memory: MemformerMemory) -> MemformerMemory:
        """Only the next memory: encoder + writer on ``memory.prev_tokens``, no decoder."""
        self.check_tokens(tokens)
        lengths = self._check_memory(memory, tokens)
        if self.writer is None:
            slots = memory.slots  # nothing is written: H is not needed for the memory
        else:
            _, slots, _, _ = self._critical_path(memory, lengths)
        return self._next_memory(tokens, slots)

    # ----------------------------------------------------------------------- generation

    def cached_decoder(self) -> CachedDecoding:
        """Generation with a KV cache: :meth:`begin_decode` / :meth:`decode`."""
        return self

    def begin_decode(self, memory: MemformerMemory) -> DecodeState:
        """Encode the previous segment once; the new segment then decodes against it."""
        probe = memory.prev_tokens[:, :1]  # (B, 1): only batch size and device are read
        lengths = self._check_memory(memory, probe)
        hidden, _, _, rows = self._critical_path(memory, lengths)
        context, context_mask = self._decoder_context(hidden, rows, lengths, memory.prev_len)
        return DecodeState(
            caches=[None] * len(self.decoder), context=context, context_mask=context_mask
        )

    def decode(self, tokens: Tensor, state: DecodeState) -> tuple[Tensor, DecodeState]:
        """Logits [B, n, V] of ``tokens`` [B, n] appended to the segment, with a KV cache."""
        self.check_decode(tokens, state)
        n, device = tokens.shape[1], tokens.device
        rotary = self.rotary(state.length + torch.arange(n, device=device))
        mask = cache_mask(state.length, n, device=device)
        x = self.embed_tokens(tokens)  # (B, n, d)
        x, caches = decode_blocks(
            self.decoder,
            x,
            state.caches,
            mask=mask,
            rotary=rotary,
            context=state.context,
            context_mask=state.context_mask,
        )
        return self.logits(x), DecodeState(
            caches=caches,
            length=state.length + n,
            context=state.context,
            context_mask=state.context_mask,
        )
