"""Recurrent Memory Transformer (Bulatov, Kuratov, Burtsev 2022), decoder-only layout.

Memory is ``m`` vectors added to the input of an unchanged causal transformer. Per segment
the backbone reads

    [read memory (m) ; tokens (L) ; write memory (m)]        positions 0 .. m+L+m-1

and the last layer's outputs at the write positions become the next segment's memory.
Logits are taken only at the token positions. As in the authors' decoder code, the same
memory vectors fill both blocks: the write block's input is the memory itself, so what a
write slot stores starts from what it held (there are no separate write placeholders).

The attention mask (:func:`rmt_attention_mask`, True = may attend) is the paper's:

- read slots see each other (bidirectionally) and nothing else;
- tokens see every read slot and the tokens up to themselves (causal);
- write slots see everything: the read slots, all tokens and each other
  (bidirectionally among themselves: "write slots see everything");
- nothing but a write slot sees a write slot, so token logits never depend on them.

``memory_layout="read_only"`` is the paper's failing ablation: memory only at the start,
``[read ; tokens]``, and the next memory is the last layer's output at the read positions.
Read slots see only each other, so that memory never absorbs a token: the model is a
memoryless transformer with a learned prefix, at chance on every synthetic task.

Positions restart every segment. With rotary positions (the builtin backbone, Llama) the
ids are ``0 .. T-1`` in input order: only differences count, so the tokens keep the
offsets among themselves that the bare model gives them. With a learned position table
(GPT-2) a token's id changes its input vector, so the tokens keep the bare model's own
ids ``0 .. L-1`` and the memory takes the ids after the longest segment: read slots
``segment_len .. segment_len+m-1``, write slots ``segment_len+m .. segment_len+2m-1``
(the table must hold ``segment_len + 2m``). Either way, with the read slots masked out a
wrapped pretrained model's token logits are the bare model's (tested per family).
The initial memory is a learned [m, d] embedding,
expanded over the batch. Gradients flow through the memory (BPTT across segments; the
driver in :mod:`memtx.recurrence` owns truncation and MRBP).

Memory value: :class:`RMTMemory` ``(slots [B, m, d], reset [B] bool)``. ``slots`` are the
final-normalized last-layer outputs at the write positions (the reference implementation
takes ``hidden_states[-1]`` of a Hugging Face model, which is after the final LayerNorm;
the built-in backbone does the same with its ``ln_out``), in the parameters' dtype.
``reset`` marks rows that start a new stream: for them ``step`` reads the learned initial
memory instead of ``slots``. The learned initial memory is therefore applied *inside*
``step``, so its gradient reaches it under every strategy of the driver (MRBP treats the
memory a rollout starts from as a detached input, which a parameter expanded in
``init_memory`` would silently lose). Setting ``reset[i] = True`` restarts stream i alone.

Write gate (``write_gate``, off by default; not in the paper): a per-slot scalar
``g = sigmoid(w . written + b)`` mixes the next memory ``read + g * (written - read)``.
A full overwrite re-encodes the memory every segment, and a fact has to survive that map
once per segment of noise; the gate lets a segment with nothing to store leave the memory
almost unchanged (``g`` near 0), so what is kept decays as the product of the gates
instead of through a thousand re-encodings. ``w`` starts at zero and ``b`` at 2
(``g`` = 0.88 everywhere): at init the model is close to the paper's RMT.

Memory scale (``memory_scale``, ``"output"`` by default, the paper's): the written slots
are final-normalized outputs, which a pretrained model scales for its head, not for its
input (SmolLM2: norm ~54 per slot against ~3.2 per token embedding). ``"embedding"``
rescales each written slot to the token embeddings' RMS (the learned initial memory has
that scale too; measured again only when the table changes), before the write gate mixes it in;
its direction, which is all the next segment's first normalization sees, is unchanged.

Backbones (``config.backbone``, see :mod:`memtx.models.backbones`): ``"builtin"``, our
pre-LN blocks with rotary positions, a tied embedding and head, and a KV cache for
generation; ``"hf"``, any Hugging Face causal LM (built from a config with our sizes or
loaded from ``hf_path``), driven through ``inputs_embeds`` and the same mask as a 4-D
additive mask, its segments recomputed for each generated token. RMT's own code is the
same for both.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from memtx.config import RMTConfig
from memtx.errors import ConfigError, DataError
from memtx.models.backbones import HF_INSTALL_HINT, Backbone, adopt_backbone, build_backbone
from memtx.models.protocol import (
    CachedDecoding,
    DecodeState,
    SegmentLM,
    StepOutput,
    cache_mask,
    check_memory_tensor,
    check_memory_type,
)

LAYOUTS: tuple[str, ...] = ("read_write", "read_only")

__all__ = ["HF_INSTALL_HINT", "LAYOUTS", "RMT", "RMTMemory", "rmt_attention_mask"]


class RMTMemory(NamedTuple):
    """RMT's memory.

    Attributes:
        slots: [B, m, d], the last layer's (final-normalized) outputs at the write
            positions of the previous segment.
        reset: [B] bool; True where a row starts a new stream and reads the learned
            initial memory instead of ``slots`` (``init_memory`` sets it for every row).
    """

    slots: Tensor
    reset: Tensor


def rmt_attention_mask(
    memory_tokens: int,
    length: int,
    *,
    layout: str = "read_write",
    device: torch.device | str | None = None,
) -> Tensor:
    """The RMT attention mask of one segment (True = the row may attend to the column).

    Args:
        memory_tokens: m, the read (and write) slots.
        length: L, the tokens of the segment.
        layout: ``"read_write"`` ([read ; tokens ; write], T = 2m + L) or ``"read_only"``
            ([read ; tokens], T = m + L).

    Returns:
        A bool tensor [T, T]; every row allows at least one column.

    Raises:
        ConfigError: unknown layout, ``memory_tokens`` or ``length`` < 1.
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown memory_layout {layout!r} (known: {', '.join(LAYOUTS)})")
    if memory_tokens < 1 or length < 1:
        raise ConfigError(
            f"memory_tokens and length must be >= 1, got {memory_tokens} and {length}"
        )
    m, n = memory_tokens, length
    total = 2 * m + n if layout == "read_write" else m + n
    allowed = torch.zeros(total, total, dtype=torch.bool, device=device)
    allowed[:m, :m] = True  # read <-> read
    allowed[m : m + n, :m] = True  # tokens -> read
    allowed[m : m + n, m : m + n] = torch.ones(n, n, dtype=torch.bool, device=device).tril()
    if layout == "read_write":
        allowed[m + n :, :] = True  # write -> everything, each other included
    return allowed


class RMT(SegmentLM):
    """Recurrent Memory Transformer over one segment; memory = :class:`RMTMemory`.

    See the module docstring for the layout and the mask; the causal LM it wraps is
    ``self.backbone`` (:class:`memtx.models.backbones.Backbone`).
    """

    memory_carries_grad = True
    memory_parameters = ("initial_memory", "write_gate.")
    backbone: Backbone

    def __init__(self, config: RMTConfig) -> None:
        super().__init__(config)
        self.config: RMTConfig = config
        m = config.memory_tokens
        backbone = build_backbone(config, positions=config.segment_len + 2 * m)
        blocks = 2 if config.memory_layout == "read_write" else 1
        needed = config.segment_len + blocks * m
        if backbone.max_positions is not None and backbone.max_positions < needed:
            raise ConfigError(
                f"the Hugging Face model has {backbone.max_positions} positions, but a segment "
                f"needs segment_len + {blocks} * memory_tokens = {needed}"
            )
        adopt_backbone(self, backbone)  # its parts keep their checkpoint names: embed.*, hf.*
        initial = torch.empty(m, config.d_model, dtype=backbone.dtype)
        self.initial_memory = nn.Parameter(initial.normal_(std=backbone.init_std))
        self.write_gate: nn.Linear | None = None
        if config.write_gate:
            self.write_gate = nn.Linear(config.d_model, 1, dtype=backbone.dtype)
            nn.init.zeros_(self.write_gate.weight)
            nn.init.constant_(self.write_gate.bias, 2.0)  # g = 0.88: nearly the paper's RMT

    # ------------------------------------------------------------------ plumbing

    @property
    def device(self) -> torch.device:
        return self.initial_memory.device

    def embed_tokens(self, tokens: Tensor) -> Tensor:
        """[B, L] ids -> [B, L, d], the backbone's embedding (its dropout comes in ``run``)."""
        return self.backbone.embed(tokens)

    def attention_mask(self, length: int) -> Tensor:
        """This model's mask for a segment of ``length`` tokens, [T, T] bool."""
        return rmt_attention_mask(
            self.config.memory_tokens, length, layout=self.config.memory_layout, device=self.device
        )

    # ------------------------------------------------------------------ memory

    def init_memory(
        self, batch_size: int, *, device: torch.device | str | None = None
    ) -> RMTMemory:
        """Every row marked ``reset``: the first ``step`` reads the learned initial memory."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        cfg, device = self.config, device or self.device
        slots = torch.zeros(
            batch_size,
            cfg.memory_tokens,
            cfg.d_model,
            dtype=self.initial_memory.dtype,
            device=device,
        )
        return RMTMemory(slots, torch.ones(batch_size, dtype=torch.bool, device=device))

    def _check_memory(self, memory: Any, tokens: Tensor) -> None:
        check_memory_type(memory, RMTMemory, model="rmt")
        cfg, batch = self.config, tokens.shape[0]
        check_memory_tensor(
            memory.slots,
            name="slots",
            shape=(batch, cfg.memory_tokens, cfg.d_model),
            like=tokens,
            dtype=self.initial_memory.dtype,
        )
        check_memory_tensor(
            memory.reset, name="reset", shape=(batch,), like=tokens, dtype=torch.bool
        )

    def read_memory(self, memory: RMTMemory) -> Tensor:
        """The memory vectors a segment reads, [B, m, d]: the learned ones where ``reset``."""
        initial = self.initial_memory.unsqueeze(0)  # (1, m, d)
        return torch.where(memory.reset[:, None, None], initial, memory.slots)

    # ------------------------------------------------------------------ forward

    def segment_inputs(self, tokens: Tensor, memory: Tensor) -> Tensor:
        """The backbone input [B, T, d]: [memory ; token embeddings ; memory].

        ``memory`` is the [B, m, d] a segment reads (:meth:`read_memory`); the read-only
        layout has no write block.
        """
        parts = [memory, self.embed_tokens(tokens).to(memory.dtype)]
        if self.config.memory_layout == "read_write":
            parts.append(memory)  # the write block starts from the memory itself
        return torch.cat(parts, dim=1)

    def segment_positions(self, length: int, *, device: torch.device | None = None) -> Tensor:
        """The position ids [T] of a segment of ``length`` tokens (see the module docstring).

        Rotary backbones: ``0 .. T-1`` in input order. Backbones with a learned position
        table: the tokens ``0 .. length-1`` (the bare model's own), the read slots
        ``segment_len .. segment_len+m-1``, the write slots the next ``m``.
        """
        m, device = self.config.memory_tokens, device or self.device
        blocks = 2 if self.config.memory_layout == "read_write" else 1
        if not self.backbone.absolute_positions:
            return torch.arange(blocks * m + length, device=device)  # restart per segment
        slots = self.config.segment_len + torch.arange(blocks * m, device=device)
        token_ids = torch.arange(length, device=device)
        return torch.cat([slots[:m], token_ids, slots[m:]])

    def forward_inputs(self, inputs: Tensor, *, length: int) -> tuple[Tensor, Tensor]:
        """Run the backbone over prepared inputs [B, T, d] of a segment of ``length`` tokens.

        The lower-level half of :meth:`step` (tests and probes perturb single slots here).

        Returns:
            (hidden [B, T, d] final-normalized last-layer outputs, logits [B, length, V] at
            the token positions).
        """
        m = self.config.memory_tokens
        allowed = self.attention_mask(length)  # (T, T)
        if inputs.shape[1] != allowed.shape[0]:
            raise DataError(
                f"RMT inputs for {length} tokens must have {allowed.shape[0]} positions, "
                f"got {inputs.shape[1]}"
            )
        positions = self.segment_positions(length, device=inputs.device)
        out = self.backbone.run(
            inputs, mask=allowed, positions=positions, logits_at=slice(m, m + length)
        )
        return out.hidden, out.logits

    def step(self, tokens: Tensor, memory: RMTMemory) -> StepOutput:
        """One segment: tokens [B, L] (L <= segment_len) and an :class:`RMTMemory`.

        Returns:
            logits [B, L, V] at the token positions and the next :class:`RMTMemory`.
        """
        self.check_tokens(tokens)
        self._check_memory(memory, tokens)
        m, length = self.config.memory_tokens, tokens.shape[1]
        read = self.read_memory(memory)  # (B, m, d)
        hidden, logits = self.forward_inputs(self.segment_inputs(tokens, read), length=length)
        if self.config.memory_layout == "read_write":
            new_memory = hidden[:, m + length :]  # (B, m, d) the write slots
        else:
            new_memory = hidden[:, :m]  # the read slots: the failing ablation
        slots = new_memory.to(self.initial_memory.dtype)
        if self.config.memory_scale == "embedding":
            rms = slots.pow(2).mean(dim=-1, keepdim=True).add(1e-12).sqrt()  # (B, m, 1)
            slots = slots * (self.backbone.embedding_rms() / rms)
        aux: dict[str, Tensor] = {}
        if self.write_gate is not None:
            gate = torch.sigmoid(self.write_gate(slots))  # (B, m, 1)
            slots = read + gate * (slots - read)
            aux["write_gate"] = gate.squeeze(-1).detach()  # (B, m)
        return StepOutput(logits, RMTMemory(slots, torch.zeros_like(memory.reset)), aux)

    # ------------------------------------------------------------------ generation

    def cached_decoder(self) -> CachedDecoding | None:
        """The builtin backbone decodes with a KV cache; HF backbones are recomputed."""
        return self if self.backbone.supports_cache else None

    def begin_decode(self, memory: RMTMemory) -> DecodeState:
        """Run the read memory once as a cached prefix (read slots see only each other).

        Generation never appends write slots to a partial segment: the write block runs
        when the segment is committed with ``advance``.
        """
        if not self.backbone.supports_cache:
            raise ConfigError("cached decoding is only for the builtin backbone")
        probe = memory.reset[:, None].long()  # (B, 1): batch size and device
        self._check_memory(memory, probe)
        read = self.read_memory(memory)  # (B, m, d)
        positions = torch.arange(self.config.memory_tokens, device=read.device)
        empty: list[Any] = [None] * self.backbone.n_layers
        # No mask: the read slots see each other; no logits are needed for them.
        out = self.backbone.run(
            read, mask=None, positions=positions, logits_at=slice(0, 0), caches=empty
        )
        assert out.caches is not None  # a run with caches returns them grown
        return DecodeState(caches=out.caches)

    def decode(self, tokens: Tensor, state: DecodeState) -> tuple[Tensor, DecodeState]:
        """Logits [B, n, V] of ``tokens`` [B, n] appended to the segment, with a KV cache."""
        self.check_decode(tokens, state)
        m, n, device = self.config.memory_tokens, tokens.shape[1], tokens.device
        positions = m + state.length + torch.arange(n, device=device)
        mask = cache_mask(state.length, n, prefix=m, device=device)
        out = self.backbone.run(
            self.embed_tokens(tokens), mask=mask, positions=positions, caches=state.caches
        )
        assert out.caches is not None
        return out.logits, DecodeState(caches=out.caches, length=state.length + n)
