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
- Start of a stream (``prev_len == 0``): there is no previous segment, so what the
  encoder computes for that row is discarded (it runs over every row: shapes never depend
  on the data, so no step waits for the device), the decoder cross-attends to one learned
  "null context" vector instead of H, and the row's next slots are the terminal state
  (what ``init_memory`` holds: with no input the memory stays there). They are computed
  from the parameters, not copied from the input memory, so the terminal state / initial
  memory is learned the same way by every gradient strategy (MRBP detaches the input
  memory of a rollout; a copied initial memory would get gradient from ``full`` only).
- Positions: rotary, restarting at 0 in every segment, in the encoder and the decoder;
  attention scores depend only on distances inside a segment, so a segment is processed
  the same wherever it sits in the stream (the paper asks for any relative scheme).
  With ``context_positions`` the decoder's cross-attention is rotary too: query i sits
  at ``segment_len + i`` and H's key j at ``segment_len - prev_len + j`` (the previous
  segment right-aligned), so a score sees the distance ``prev_len - j + i`` back into the
  previous segment, as Transformer-XL's relative attention over its cache does. Without
  it H is a bag of encodings and the decoder cannot tell the previous segment's last
  bytes from its first (benchmarks/memformer-probe/README.md: the trained model then ignores H).
- Decoder context (``context_attention``): ``"cross"`` is the paper's cross-attention
  to H in every decoder block. ``"joint"`` (a documented deviation) drops it: each decoder
  block's self-attention reads ``[H ; segment]`` in one softmax, H through the block's own
  LayerNorm and projections at positions ``j - prev_len`` before the segment's ``0 ..``,
  as Transformer-XL reads its cache (``context_depth="layered"``, a second deviation:
  decoder block l reads the encoder's stream at depth ``round(l * E / (D - 1))``, the
  previous segment's embeddings for the first block up to H for the last, as
  Transformer-XL's block l reads its cache of block l's inputs; ``"aligned"``: block l
  reads depth ``min(l, E)``, the depths Transformer-XL's first E + 1 blocks read, H for
  the rest). Why the joint read:
  trained on real text a cross-attention learned nothing from H (the decoder must learn
  "attend to the last bytes" a second time, with separate weights and a weak signal),
  while the joint read reuses what the segment's own attention learns
  (benchmarks/memformer-probe/README.md). A fresh row reads no prefix.
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
  learned bias v_i per slot; the initial memory is the terminal state ``v_i / ||v_i||``.
  The paper does not give v_i's scale. ``slot_bias_init="normal"`` draws its entries from
  N(0, 1), so ``|v_i| ~ sqrt(d)``: at width 192 that is 14 against the ~1.5 a trained
  writer adds, and the normalised slot is the terminal state plus a few percent of what
  was written (measured: slots 0.005 apart across streams, resetting them changes test bpc
  by 0.0000). ``"unit"`` scales the same directions to ``|v_i| = 1``. Without forgetting
  there is no bias and no normalization (the ablation removes BMN entirely), and the
  initial memory is a learned parameter (initialised as random unit vectors, the scale
  BMN slots have).
- No memory (``use_memory=False``, the paper's "w/o memory"): no reader, no writer, no
  bias; the slots (zeros) pass through unchanged, the decoder still sees H_{t-1}, and
  ``memory_carries_grad`` is False (only discrete tokens are carried).

Diagnostics (:meth:`Memformer.set_diagnostic`, for evaluating a trained model; they never
change the weights, so a model trained with memory loads as it is):

- ``"memory_reset"``: the encoder reads the terminal state instead of the carried slots
  every segment, so nothing older than the previous segment reaches the decoder.
- ``"no_reader"``: the encoder skips its reader, the paper's "w/o memory" path with these
  weights (its logits equal those of a ``use_memory=False`` model holding the same
  encoder and decoder weights).
- ``"context_masked"``: the decoder's cross-attention sees the null context instead of
  H_{t-1} every segment, as at the start of a stream: each segment is predicted from
  itself alone.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memtx.config import MemformerConfig
from memtx.errors import ConfigError, DataError
from memtx.models.memformer_decoding import MemformerDecoding
from memtx.models.protocol import (
    StepOutput,
    TiedLM,
    check_memory_tensor,
    check_memory_type,
    check_on_device,
)
from memtx.modules import (
    Block,
    RotaryEmbedding,
    SlotWriter,
    previous_segment_rotary,
)

#: What :meth:`Memformer.set_diagnostic` accepts (see the module docstring).
DIAGNOSTICS = ("none", "memory_reset", "no_reader", "context_masked")


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


#: the attribute :meth:`Memformer.init_memory` sets on a fresh ``prev_len``: its version
_FRESH = "_memtx_fresh_version"


def _starts_every_row(prev_len: Tensor) -> bool:
    """Whether ``prev_len`` is a fresh memory's zeros, unmodified: host metadata only.

    :meth:`Memformer.init_memory` marks the tensor it makes with its version counter,
    which every in-place write bumps, so an edited or rebuilt ``prev_len`` (or any
    other memory) takes the static path, which computes the same values.
    """
    if torch.compiler.is_compiling():
        return False  # one graph for every memory
    return getattr(prev_len, _FRESH, None) == prev_len._version


class Memformer(MemformerDecoding, TiedLM):
    """Memformer language model over segments; memory = :class:`MemformerMemory`.

    ``aux["write_attention"]`` ([B, heads, memory_slots, 1 + segment_len], detached) is the
    writer's attention of this step: column 0 is the weight a slot keeps on itself (the
    retention gate), columns 1.. the weights on the previous segment's tokens (0 on
    padding). Rows at the start of a stream did not write: weight 1 on themselves. Absent
    when ``use_memory`` is False.
    """

    memory_carries_grad = True
    diagnostic = "none"  # an evaluation-time ablation, see set_diagnostic

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
        self.joint = config.context_attention == "joint"
        #: the encoder depth (0: embeddings .. E: H) each decoder block reads
        self.context_depths = _context_depths(config)
        self.decoder = nn.ModuleList(
            Block(d, heads, ffn, dropout=config.dropout, cross_attention=not self.joint)
            for _ in range(config.decoder_layers)
        )
        # The cross-attention's context at the start of a stream (the joint read has none).
        self.null_context = None if self.joint else nn.Parameter(torch.zeros(d))
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
        if self.null_context is not None:
            nn.init.normal_(self.null_context, std=0.02)
        for block in self.decoder if self.null_context is not None else ():
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
                if config.slot_bias_init == "unit":
                    # At the scale of a write, so BMN keeps what is written (model docstring).
                    self.slot_bias.copy_(F.normalize(self.slot_bias, dim=-1))
            if self.initial_slots is not None:
                self.initial_slots.copy_(F.normalize(torch.randn_like(self.initial_slots), dim=-1))

    def set_diagnostic(self, mode: str) -> None:
        """Evaluate with part of the history ablated (module docstring, "Diagnostics").

        ``"none"`` restores the model. The weights are untouched, so this is for measuring
        what reaches the decoder, not for training.
        """
        if mode not in DIAGNOSTICS:
            raise ConfigError(f"diagnostic must be one of {', '.join(DIAGNOSTICS)}, got {mode!r}")
        if mode in ("memory_reset", "no_reader") and not self.config.use_memory:
            raise ConfigError(f"diagnostic {mode!r} needs a model with memory (use_memory=true)")
        self.diagnostic = mode

    def _diagnosed(self, memory: MemformerMemory) -> MemformerMemory:
        """The memory the diagnostic lets through."""
        if self.diagnostic == "memory_reset":
            terminal = self.terminal_state().to(memory.slots.dtype)  # (k, d)
            return memory._replace(slots=terminal[None].expand(memory.slots.shape))
        if self.diagnostic == "context_masked":  # every row as at the start of a stream
            return memory._replace(prev_len=torch.zeros_like(memory.prev_len))
        return memory

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
        return self.embed.weight.new_zeros(cfg.memory_slots, cfg.d_model)

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
        setattr(prev_len, _FRESH, prev_len._version)  # see _starts_every_row
        return MemformerMemory(slots, prev_tokens, prev_len)

    def _check_memory(self, memory: MemformerMemory, tokens: Tensor) -> None:
        """Validate ``memory`` against ``tokens`` (``prev_len``'s range without a host sync)."""
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
        prev_len, limit = memory.prev_len, cfg.segment_len
        check_on_device(
            ((prev_len >= 0) & (prev_len <= limit)).all(),
            lambda: (
                f"memory field prev_len must be in [0, {limit}], got "
                f"{next(n for n in prev_len.tolist() if not 0 <= n <= limit)}"
            ),
        )

    # ----------------------------------------------------------------------- parts

    def encode(self, tokens: Tensor, keys: Tensor, slots: Tensor) -> Tensor:
        """The encoder: bidirectional blocks over a segment, each reading the slots.

        Args:
            tokens: [B, S] the previous segments, right-padded.
            keys: [B, S] bool, the positions attention may read (see :meth:`_critical_path`).
            slots: [B, k, d] the memory the reader attends to.

        Returns:
            H [B, S, d] (positions outside ``keys`` hold values nobody reads).
        """
        return self.encode_depths(tokens, keys, slots)[-1]

    def encode_depths(self, tokens: Tensor, keys: Tensor, slots: Tensor) -> list[Tensor]:
        """The encoder's stream at every depth: [embeddings, block 1, .., block E = H],
        each [B, S, d] (arguments as :meth:`encode`)."""
        rotary = self.rotary(torch.arange(tokens.shape[1], device=tokens.device))
        mask = keys[:, None, None, :]  # (B, 1, 1, S)
        x = self.embed_tokens(tokens)  # (B, S, d)
        reads = self.config.use_memory and self.diagnostic != "no_reader"
        context = slots if reads else None
        depths = [x]
        for block in self.encoder:
            x = block(x, mask=mask, rotary=rotary, context=context)
            depths.append(x)
        return depths

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
        self, memory: MemformerMemory
    ) -> tuple[list[Tensor] | None, Tensor, Tensor | None, Tensor | None]:
        """Encoder (+ writer) over every row, with static shapes (no host sync).

        Every row is encoded over all ``segment_len`` positions, the padding masked. A row
        at the start of a stream (``prev_len`` 0) has no previous segment: it is encoded
        anyway (reading position 0, so each softmax has a key) and what it computes is
        replaced by ``torch.where``: its next slots are the terminal state (with its
        parameters' graph), its decoder context the null vector. No row's shape depends
        on another's, so one compiled graph serves every batch.

        A memory straight from :meth:`init_memory` is known on the host to start every row
        (:func:`_starts_every_row`): then nothing is encoded, and H, the attention and
        ``keys`` are None.

        Returns:
            the encoder's stream at every depth (:meth:`encode_depths`; the last is H
            [B, S, d]), the next slots [B, k, d], the write attention [B, h, k, 1 + S]
            (None without memory) and ``keys`` [B, S] bool, the positions a row's H may be
            read at (its previous segment; position 0 alone for a row at the start).
        """
        if _starts_every_row(memory.prev_len):
            if self.writer is None:
                return None, memory.slots, None, None
            terminal = self.terminal_state().to(memory.slots.dtype)  # (k, d)
            return None, terminal[None].expand(memory.slots.shape).contiguous(), None, None
        positions = torch.arange(self.config.segment_len, device=memory.prev_len.device)
        keys = (positions[None, :] < memory.prev_len[:, None]) | (positions == 0)  # (B, S)
        depths = self.encode_depths(memory.prev_tokens, keys, memory.slots)  # E+1 x (B, S, d)
        if self.writer is None:
            return depths, memory.slots, None, keys  # without memory nothing is ever written
        written, attention = self.write(memory.slots, depths[-1], keys)  # (B,k,d), (B,h,k,1+S)
        started = (memory.prev_len > 0)[:, None, None]  # (B, 1, 1)
        # A fresh stream's slots are the terminal state (with its parameters' graph).
        terminal = self.terminal_state().to(written.dtype)  # (k, d)
        return depths, torch.where(started, written, terminal), attention, keys

    def _next_memory(self, tokens: Tensor, slots: Tensor) -> MemformerMemory:
        batch, length = tokens.shape
        prev_tokens = tokens.new_zeros(batch, self.config.segment_len)  # (B, S)
        prev_tokens[:, :length] = tokens
        prev_len = torch.full((batch,), length, dtype=torch.long, device=tokens.device)
        return MemformerMemory(slots, prev_tokens, prev_len)

    def _decoder_context(
        self, hidden: Tensor | None, keys: Tensor | None, prev_len: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """What the decoder cross-attends to, [B, S, d], and its mask [B, 1, 1, S]: H for
        a row with a previous segment, the learned null vector for a row at the start
        (it reads only position 0: exactly that vector); [B, 1, d] of it, unmasked,
        when no row was encoded."""
        null = self.null_context  # (d,)
        assert null is not None, "the joint read has no cross-attention context"
        if hidden is None or keys is None:
            return null[None, None, :].expand(prev_len.shape[0], 1, -1), None
        context = torch.where((prev_len > 0)[:, None, None], hidden, null.to(hidden.dtype))
        return context, keys[:, None, None, :]

    def _prefixes(
        self, depths: list[Tensor] | None, keys: Tensor | None, prev_len: Tensor
    ) -> list[dict]:
        """The joint read's prefix for each decoder block: the encoder's stream at the
        block's depth [B, S, d] (H with ``context_depth="last"``), its mask [B, 1, 1,
        S] (a row's previous segment; nothing for a fresh row) and its positions
        ``j - prev_len``; empty dicts when no row was encoded."""
        if depths is None or keys is None:
            return [{} for _ in self.decoder]
        span = self.config.segment_len
        mask = (keys & (prev_len > 0)[:, None])[:, None, None, :]  # (B, 1, 1, S)
        rotary = previous_segment_rotary(self.rotary, prev_len, span=span)  # (B, 1, S, hd)
        return [
            {"prefix": depths[depth], "prefix_mask": mask, "prefix_rotary": rotary}
            for depth in self.context_depths
        ]

    def _context_key_rotary(
        self, hidden: Tensor | None, prev_len: Tensor
    ) -> tuple[Tensor, Tensor] | None:
        """Rotary tables [B, 1, S, hd] of H's positions, the previous segment right-aligned
        to end at ``segment_len - 1`` (None without ``context_positions`` or without H)."""
        if not self.config.context_positions or hidden is None:
            return None
        span = self.config.segment_len
        return previous_segment_rotary(self.rotary, prev_len, span=span, offset=span)

    def _context_rotary(
        self, keys: tuple[Tensor, Tensor] | None, start: int, n: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
        """The cross-attention's tables: the queries at ``segment_len + start ..`` [n, hd],
        then H's (:meth:`_context_key_rotary`)."""
        if keys is None:
            return None
        return (*self.rotary.span(self.config.segment_len + start, n), *keys)

    def _write_attention(self, attention: Tensor | None, prev_len: Tensor) -> Tensor:
        """The writer's attention for the batch, [B, h, k, 1 + segment_len], detached; a
        row at the start of a stream did not write: weight 1 on itself."""
        cfg = self.config
        shape = (prev_len.shape[0], cfg.n_heads, cfg.memory_slots, 1 + cfg.segment_len)
        kept = self.embed.weight.new_zeros(shape)  # (B, h, k, 1+S)
        kept[..., 0] = 1.0
        if attention is None:
            return kept
        return torch.where((prev_len > 0)[:, None, None, None], attention.detach(), kept)

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
        self._check_memory(memory, tokens)
        memory = self._diagnosed(memory)
        # The critical path runs first, so ``advance`` consumes the RNG (dropout) the same.
        depths, slots, attention, keys = self._critical_path(memory)
        hidden = None if depths is None else depths[-1]  # H, (B, S, d)
        length = tokens.shape[1]
        rotary = self.rotary(torch.arange(length, device=tokens.device))
        x = self.embed_tokens(tokens)  # (B, L, d)
        if self.joint:  # H (or its depth) read before the segment, per block
            reads = self._prefixes(depths, keys, memory.prev_len)
        else:
            context, context_mask = self._decoder_context(hidden, keys, memory.prev_len)
            context_rotary = self._context_rotary(
                self._context_key_rotary(hidden, memory.prev_len), 0, length
            )
            read = dict(context=context, context_mask=context_mask, context_rotary=context_rotary)
            reads = [read for _ in self.decoder]
        for block, read in zip(self.decoder, reads, strict=True):
            x = block(x, is_causal=True, rotary=rotary, **read)
        aux: dict[str, Tensor] = {}
        if self.writer is not None:
            aux["write_attention"] = self._write_attention(attention, memory.prev_len)
        return StepOutput(self.logits(x), self._next_memory(tokens, slots), aux)

    def advance(self, tokens: Tensor, memory: MemformerMemory) -> MemformerMemory:
        """Only the next memory: encoder + writer on ``memory.prev_tokens``, no decoder."""
        self.check_tokens(tokens)
        self._check_memory(memory, tokens)
        memory = self._diagnosed(memory)
        if self.writer is None:
            slots = memory.slots  # nothing is written: H is not needed for the memory
        else:
            _, slots, _, _ = self._critical_path(memory)
        return self._next_memory(tokens, slots)


def _context_depths(config: MemformerConfig) -> tuple[int, ...]:
    """The encoder depth each decoder block reads: E (H) for every block, or for block l
    ``round(l * E / (D - 1))`` (``"layered"``) or ``min(l, E)`` (``"aligned"``); 0 is the
    embeddings."""
    enc, dec = config.encoder_layers, config.decoder_layers
    assert enc is not None and dec is not None
    if config.context_depth == "aligned":
        return tuple(min(layer, enc) for layer in range(dec))
    if config.context_depth == "last" or dec == 1:
        return (enc,) * dec
    return tuple(round(layer * enc / (dec - 1)) for layer in range(dec))
