"""Associative Recurrent Memory Transformer (Rodkin, Kuratov, Bulatov, Burtsev 2024).

RMT's memory tokens, but what they write goes into an associative matrix per layer,
read by every position before that layer. Per segment the backbone reads

    [tokens (L) ; memory tokens (m)]        causally; logits at the token positions only

where the memory tokens are learned embeddings, the same every segment. Every layer l
keeps ``A_l [d_key, d]`` and a normaliser ``z_l [d_key]`` (``d_key = 2 * nu * d_mem``) and,
with the DPFP feature map ``phi`` (:func:`dpfp`):

- read, into the input h of layer l at every position:
  ``h + A_l phi(W_q h) / (z_l . phi(W_q h) + eps)``;
- write, from layer l's outputs h at the m memory positions: ``k = phi(W_k h)``,
  ``v = W_v h``, ``b = sigmoid(W_b h)``, ``v_old = A_l k / (z_l . k + eps)``, then
  ``A_l += sum_i b_i (v_i - v_old_i) k_i^T`` (the delta rule) and ``z_l += sum_i g_i k_i``
  with ``g = clip(1 - (z_l . k + eps) / (|k|^2 + eps), 0, 1)``, detached (the paper's
  correction; ``g = 1`` with ``correction=False``).

``write_rule="bounded"`` (not in the paper) changes only the write. The paper's rule sums
the m tokens' updates, so A's update is ``A (I - sum_i b_i k_i k_i^T / (z . k_i)) + ...``:
with overlapping keys (DPFP features are >= 0, so keys always overlap) that operator has
eigenvalues below -1 and A grows geometrically (measured: x1.6 per segment on a tiny
model with open gates; ~1e18 after 128 segments of real text). The bounded rule:

- updates the normaliser first, ``z' = z + sum_i g_i k_i``, and reads ``v_old`` with it:
  ``v_old = A k / (z' . k + eps)``;
- gives each key the step that makes its own read an exact interpolation,
  ``A' k / (z' . k) = (1 - b) v_old + b v``: ``A += eta sum_i b_i (z' . k_i) / |k_i|^2
  (v_i - v_old_i) k_i^T``;
- with ``eta = min(1, 1 / max_i b_i (k_i . sum_j k_j) / |k_i|^2)`` (detached): a bound on
  the largest eigenvalue of ``sum_i b_i k_i k_i^T / |k_i|^2`` (Gershgorin; features are
  >= 0), so the update's eigenvalues stay in [0, 1]. Orthogonal keys write at full
  strength (eta = 1); m copies of one key write it once (eta = 1 / m).

``read_floor=True`` (not in the paper) changes only the read: its denominator becomes
``max(z . q, |q|^2) + eps``. A row of A can hold mass where z holds little (a key whose
overlap with z already reaches ``|k|^2`` adds to A with ``b`` but to z with ``g = 0``), and
a query there reads ``A q / ~0``: in a trained model that read grew 0.1 -> 2,500 over 256
segments of real text, fed the keys of the next writes and went NaN by segment 512. The
floor is the correction's own fixed point (after a key is written, ``z . k >= |k|^2``), so
a query equal to a written key reads as before.

Both happen inside the backbone through its ``layer_hook`` (see
:mod:`memtx.models.backbones`), so the built-in and the Hugging Face backbones (GPT-2,
Llama, ...) run the same code and no Hugging Face code is copied.

Choices the paper leaves open, as the authors' code (``modeling_amt/language_modeling.py``)
makes them unless said otherwise:

- Positions: tokens ``0 .. L-1`` (restarting every segment), memory tokens
  ``segment_len .. segment_len + m - 1`` whatever L is, so a partial segment writes with
  the same positions as a full one. The authors give the write tokens the last m rows of
  GPT-2's table, extended by m; a Hugging Face model built here gets a table of
  ``segment_len + m`` positions, so those are its last rows too; a loaded one must have
  at least as many (it is not extended). Rotary backbones (builtin, Llama) use the same ids.
- Mask: plain causal over ``[tokens ; memory tokens]``: tokens never see the memory
  tokens of their own segment, memory tokens see every token and the memory tokens
  before them. History reaches the tokens only through the read.
- eps = 1e-5, added to ``z . phi(q)`` and ``z . k`` and to ``|k|^2`` in the correction, as
  the authors do. phi >= 0 and g >= 0 keep z and every ``z . phi(x)`` >= 0, so each
  denominator is at least eps: with empty memory the read is exactly 0.
- The read goes into every position's layer input, memory positions included, from the
  state the previous segments left (layer l reads A_l before this segment writes it).
  The write uses the layer's output at the memory positions, after its residual: for
  the last layer that is before the final norm.
- First segment: the authors skip the read and write with ``v_old = 0, g = 1``. Here a
  row whose ``reset`` flag is set reads A = 0, z = 0 (the read adds exactly 0) and writes
  with g = 1, the same numbers, per row, so streams in one batch may start anywhere.
- Init: ``W_q``, ``W_k`` (d -> d_mem, no bias) and ``W_b`` (d -> 1, with bias) keep
  PyTorch's ``nn.Linear`` init, as the authors' do (``gate_bias`` sets W_b's bias);
  ``W_v`` (d -> d, no bias) starts at zero, so a new model's first writes store nothing
  and it starts as its backbone. The memory tokens are N(0, s) with s the backbone's
  embedding scale (RMT's).
- Layers are indexed 0 .. n_layers - 1 as the backbone's blocks; every layer has its own
  projections and state, and all share ``nu`` and ``d_mem``.
- Precision: A and z are kept in float32 (float64 for a float64 model) whatever the
  backbone runs in; the projections, phi and the read/write products run with autocast
  off in that dtype, and the read is cast back to the stream's dtype.
- Dropout: none inside the associative read and write (noise in a long-lived state
  compounds across segments); the backbone's dropout applies to the memory tokens.

Memory value: :class:`ARMTMemory` ``(A [layers, B, d_key, d], z [layers, B, d_key],
reset [B] bool)``; the batch is dim 1 of A and z. It carries gradient (through A, z and
the keys), so the driver's MRBP equals full BPTT. ``step``'s ``aux`` holds, per layer and
row, the mean write gate b and correction g of the segment (``write_gate``,
``correction``, each [layers, B]) for ``memtx inspect``.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memtx.config import ARMTConfig
from memtx.errors import ConfigError, DataError
from memtx.models.backbones import Backbone, LayerHook, adopt_backbone, build_backbone
from memtx.models.protocol import (
    CachedDecoding,
    DecodeState,
    SegmentLM,
    StepOutput,
    cache_mask,
    check_memory_tensor,
    check_memory_type,
    register_batch_dims,
)

EPS = 1e-5  # the authors' guard on every denominator

__all__ = ["ARMT", "EPS", "ARMTMemory", "AssociativeLayer", "dpfp"]


class ARMTMemory(NamedTuple):
    """ARMT's memory.

    Attributes:
        A: [layers, B, d_key, d] the associative matrix of each layer.
        z: [layers, B, d_key] its normaliser.
        reset: [B] bool; True where a row starts a new stream: it reads A and z as empty
            and writes from empty (``init_memory`` sets it for every row).
    """

    A: Tensor
    z: Tensor
    reset: Tensor


register_batch_dims(ARMTMemory, (1, 1, 0))


class Write(NamedTuple):
    """One layer's write: the new state and what the inspector shows."""

    A: Tensor  # (B, d_key, d)
    z: Tensor  # (B, d_key)
    gate: Tensor  # (B,) mean b over the memory tokens
    correction: Tensor  # (B,) mean g over the memory tokens


def dpfp(x: Tensor, nu: int) -> Tensor:
    """The DPFP feature map: [..., n] -> [..., 2 * nu * n], every feature >= 0.

    ``x' = [relu(x), relu(-x)]``, then ``x'`` repeated nu times times ``x'`` rolled by
    1 .. nu along the features.
    """
    doubled = F.relu(torch.cat([x, -x], dim=-1))  # (..., 2n)
    # rolled[..., j - 1, i] = doubled[..., i - j]: the nu rolls as ONE gather, then one
    # broadcast product (the same products as repeat * cat(rolls), in fewer kernels).
    rolled = doubled[..., _roll_index(doubled.shape[-1], nu, doubled.device)]  # (..., nu*2n)
    product = doubled.unsqueeze(-2) * rolled.unflatten(-1, (nu, doubled.shape[-1]))
    return product.flatten(-2)  # (..., nu, 2n) -> (..., nu * 2n)


@functools.lru_cache(maxsize=16)
def _roll_index(width: int, nu: int, device: torch.device) -> Tensor:
    """[nu * width] indices: block j - 1 is ``arange(width)`` rolled by j (j = 1 .. nu)."""
    positions = torch.arange(width, device=device)
    return torch.cat([(positions - j) % width for j in range(1, nu + 1)])


class AssociativeLayer(nn.Module):
    """The projections of one layer's associative memory, and its read and write."""

    def __init__(
        self,
        d_model: int,
        d_mem: int,
        nu: int,
        *,
        correction: bool,
        rule: str = "paper",
        read_floor: bool = False,
        gate_bias: float | None = None,
    ) -> None:
        super().__init__()
        self.nu, self.correction, self.rule, self.read_floor = nu, correction, rule, read_floor
        self.query = nn.Linear(d_model, d_mem, bias=False)  # W_q
        self.key = nn.Linear(d_model, d_mem, bias=False)  # W_k
        self.value = nn.Linear(d_model, d_model, bias=False)  # W_v
        self.gate = nn.Linear(d_model, 1)  # W_b
        nn.init.zeros_(self.value.weight)
        if gate_bias is not None:
            nn.init.constant_(self.gate.bias, gate_bias)

    def _project(self, linear: nn.Linear, h: Tensor, dtype: torch.dtype) -> Tensor:
        """``linear(h)`` in the parameters' dtype, returned in the state's ``dtype``."""
        return linear(h.to(linear.weight.dtype)).to(dtype)

    def read(self, stream: Tensor, A: Tensor, z: Tensor, *, keep: Tensor | None = None) -> Tensor:
        """``stream`` [B, T, d] plus what A [B, d_key, d], z [B, d_key] associate with it.

        ``keep`` [B] bool: False where a stream starts (its A and z count as empty, whatever
        they hold: the read adds exactly 0); None: every row reads its state.
        """
        with torch.autocast(stream.device.type, enabled=False):
            q = dpfp(self._project(self.query, stream, A.dtype), self.nu)  # (B, T, d_key)
            numerator = torch.bmm(q, A)  # (B, T, d)
            denominator = torch.bmm(q, z.unsqueeze(-1))  # (B, T, 1)
            if self.read_floor:  # as if q had been written once (module docstring)
                denominator = torch.maximum(denominator, q.square().sum(-1, keepdim=True))
            denominator = denominator + EPS
            read = numerator / denominator
            if keep is not None:  # a select, not a pass over A: no host sync, no copy of A
                read = torch.where(keep[:, None, None], read, 0.0)
            return stream + read.to(stream.dtype)

    def write(self, outputs: Tensor, A: Tensor, z: Tensor, *, fresh: Tensor) -> Write:
        """The delta-rule write of the memory positions' outputs [B, m, d].

        ``fresh`` [B] bool marks rows that start a stream: their A and z count as empty
        (whatever they hold), so ``v_old`` is 0 and the correction 1, as the authors' first
        segment.
        """
        dtype = A.dtype
        with torch.autocast(outputs.device.type, enabled=False):
            k = dpfp(self._project(self.key, outputs, dtype), self.nu)  # (B, m, d_key)
            v = self._project(self.value, outputs, dtype)  # (B, m, d)
            b = torch.sigmoid(self._project(self.gate, outputs, dtype))  # (B, m, 1)
            overlap = torch.bmm(k, z.unsqueeze(-1)) + EPS  # (B, m, 1) z . k
            norm2 = k.square().sum(-1, keepdim=True) + EPS  # (B, m, 1) |k|^2
            if self.correction:
                g = (1 - overlap / norm2).clamp(0, 1)
                g = torch.where(fresh[:, None, None], 1.0, g).detach()
            else:
                g = torch.ones_like(overlap)
            keep = (~fresh).to(dtype)[:, None, None]  # (B, 1, 1) 0 clears a fresh row
            if self.rule == "bounded":
                A, z = self._bounded(k, v, b, g, norm2, A * keep, z * keep[:, 0])
            else:
                v_old = torch.bmm(k, A) / overlap  # (B, m, d) what A holds for k
                v_old = torch.where(fresh[:, None, None], 0.0, v_old)
                # A * keep + (b k)^T (v - v_old): the clearing and the add in two passes
                A = torch.baddbmm(A * keep, (b * k).transpose(1, 2), v - v_old)
                z = z * keep[:, 0] + (g * k).sum(1)  # (B, d_key)
        return Write(A, z, b.detach().mean((1, 2)), g.mean((1, 2)))

    @staticmethod
    def _bounded(
        k: Tensor, v: Tensor, b: Tensor, g: Tensor, norm2: Tensor, A: Tensor, z: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The bounded write (module docstring) of keys k [B, m, d_key], values v [B, m, d],
        gates b [B, m, 1] into A [B, d_key, d], z [B, d_key] (fresh rows already cleared)."""
        z = z + (g * k).sum(1)  # (B, d_key) the normaliser first
        overlap = torch.bmm(k, z.unsqueeze(-1)) + EPS  # (B, m, 1) z' . k
        v_old = torch.bmm(k, A) / overlap  # (B, m, d)
        spread = torch.bmm(k, k.sum(1).unsqueeze(-1)) / norm2  # (B, m, 1) k_i . sum_j k_j / |k_i|^2
        eta = 1 / (b * spread).amax(1, keepdim=True).clamp_min(1.0)  # (B, 1, 1)
        step = eta.detach() * b * overlap / norm2  # (B, m, 1)
        return torch.baddbmm(A, (step * k).transpose(1, 2), v - v_old), z


class ARMT(SegmentLM):
    """ARMT over one segment; memory = :class:`ARMTMemory` (see the module docstring)."""

    memory_carries_grad = True
    memory_parameters = ("memory_embedding", "associative.")
    backbone: Backbone

    def __init__(self, config: ARMTConfig) -> None:
        super().__init__(config)
        self.config: ARMTConfig = config
        m = config.memory_tokens
        backbone = build_backbone(config, positions=config.segment_len + m)
        if backbone.max_positions is not None and backbone.max_positions < config.segment_len + m:
            raise ConfigError(
                f"the Hugging Face model has {backbone.max_positions} positions, but a segment "
                f"needs segment_len + memory_tokens = {config.segment_len + m}"
            )
        adopt_backbone(self, backbone)  # embed.*, blocks.* or hf.*, as RMT's
        tokens = torch.empty(m, config.d_model, dtype=backbone.dtype)
        self.memory_embedding = nn.Parameter(tokens.normal_(std=backbone.init_std))
        self.associative = nn.ModuleList(
            AssociativeLayer(
                config.d_model,
                config.d_mem,
                config.nu,
                correction=config.correction,
                rule=config.write_rule,
                read_floor=config.read_floor,
                gate_bias=config.gate_bias,
            )
            for _ in range(backbone.n_layers)
        ).to(backbone.dtype)

    @property
    def device(self) -> torch.device:
        return self.memory_embedding.device

    @property
    def state_dtype(self) -> torch.dtype:
        """The dtype of A and z: float32, or float64 for a float64 model."""
        return torch.promote_types(self.memory_embedding.dtype, torch.float32)

    # ------------------------------------------------------------------ memory

    def init_memory(
        self, batch_size: int, *, device: torch.device | str | None = None
    ) -> ARMTMemory:
        """Empty A and z, every row marked ``reset``."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        cfg, device = self.config, device or self.device
        layers, dtype = len(self.associative), self.state_dtype
        A = torch.zeros(layers, batch_size, cfg.d_key, cfg.d_model, dtype=dtype, device=device)
        z = torch.zeros(layers, batch_size, cfg.d_key, dtype=dtype, device=device)
        return ARMTMemory(A, z, torch.ones(batch_size, dtype=torch.bool, device=device))

    def _check_memory(self, memory: Any, tokens: Tensor) -> None:
        check_memory_type(memory, ARMTMemory, model="armt")
        cfg, batch, layers = self.config, tokens.shape[0], len(self.associative)
        dtype = self.state_dtype
        shape = (layers, batch, cfg.d_key)
        check_memory_tensor(
            memory.A, name="A", shape=(*shape, cfg.d_model), like=tokens, dtype=dtype
        )
        check_memory_tensor(memory.z, name="z", shape=shape, like=tokens, dtype=dtype)
        check_memory_tensor(
            memory.reset, name="reset", shape=(batch,), like=tokens, dtype=torch.bool
        )

    def read_state(self, memory: ARMTMemory) -> tuple[Tensor, Tensor]:
        """(A, z) with the rows marked ``reset`` cleared (decoding; ``step`` clears them in
        its reads and writes instead, without a pass over A)."""
        reset = memory.reset[None, :, None]  # (1, B, 1)
        return memory.A.masked_fill(reset[..., None], 0.0), memory.z.masked_fill(reset, 0.0)

    # ------------------------------------------------------------------ forward

    def _hook(
        self, A: Tensor, z: Tensor, fresh: Tensor | None, writes: list[Write] | None
    ) -> LayerHook:
        """The layer hook: write layer ``index - 1``'s memory positions, read into ``index``.

        ``fresh`` [B] bool: rows that start a stream (their A and z count as empty); None:
        A and z are already cleared. ``writes`` collects the writes; None reads only
        (decoding, no memory positions).
        """
        keep = None if fresh is None else ~fresh  # (B,)
        m, layers = self.config.memory_tokens, cast(list[AssociativeLayer], list(self.associative))
        # One unbind, not a select per layer: a select's backward fills a zero tensor of
        # the whole state for every layer; unbind's stacks the layers' gradients once.
        A_layers, z_layers = A.unbind(0), z.unbind(0)

        def hook(index: int, stream: Tensor) -> Tensor:  # stream (B, T, d)
            if writes is not None and fresh is not None and index > 0:
                last = index - 1
                write = layers[last].write(
                    stream[:, -m:], A_layers[last], z_layers[last], fresh=fresh
                )
                writes.append(write)
            if index < len(layers):
                stream = layers[index].read(stream, A_layers[index], z_layers[index], keep=keep)
            return stream

        return hook

    def step(self, tokens: Tensor, memory: ARMTMemory) -> StepOutput:
        """One segment: tokens [B, L] (L <= segment_len) and an :class:`ARMTMemory`.

        Returns:
            logits [B, L, V] at the token positions, the next :class:`ARMTMemory`, and
            ``aux`` ``write_gate`` and ``correction`` [layers, B].
        """
        self.check_tokens(tokens)
        self._check_memory(memory, tokens)
        cfg, (batch, length) = self.config, tokens.shape
        m, device = cfg.memory_tokens, tokens.device
        embedded = self.backbone.embed(tokens)  # (B, L, d)
        slots = self.memory_embedding.to(embedded.dtype).expand(batch, m, -1)  # (B, m, d)
        inputs = torch.cat([embedded, slots], dim=1)  # (B, T, d), T = L + m
        positions = torch.cat(
            [torch.arange(length, device=device), cfg.segment_len + torch.arange(m, device=device)]
        )
        causal = torch.ones(length + m, length + m, dtype=torch.bool, device=device).tril()
        writes: list[Write] = []
        # Rows marked ``reset`` are cleared inside the reads and writes (no host sync).
        hook = self._hook(memory.A, memory.z, memory.reset, writes)
        out = self.backbone.run(
            inputs, mask=causal, positions=positions, logits_at=slice(0, length), layer_hook=hook
        )
        new = ARMTMemory(
            torch.stack([w.A for w in writes]),
            torch.stack([w.z for w in writes]),
            torch.zeros_like(memory.reset),
        )
        aux = {
            "write_gate": torch.stack([w.gate for w in writes]),
            "correction": torch.stack([w.correction for w in writes]),
        }
        return StepOutput(out.logits, new, aux)

    # ------------------------------------------------------------------ generation

    def cached_decoder(self) -> CachedDecoding | None:
        """The builtin backbone decodes with a KV cache; HF backbones are recomputed."""
        return self if self.backbone.supports_cache else None

    def begin_decode(self, memory: ARMTMemory) -> DecodeState:
        """An empty segment reading ``memory``'s A and z (tokens come before memory tokens,
        so their logits never need the memory positions: ``advance`` writes them)."""
        if not self.backbone.supports_cache:
            raise ConfigError("cached decoding is only for the builtin backbone")
        self._check_memory(memory, memory.reset[:, None].long())
        A, z = self.read_state(memory)
        empty: list[Any] = [None] * self.backbone.n_layers
        return DecodeState(caches=empty, extra={"A": A, "z": z})

    def decode(self, tokens: Tensor, state: DecodeState) -> tuple[Tensor, DecodeState]:
        """Logits [B, n, V] of ``tokens`` [B, n] appended to the segment, with a KV cache."""
        self.check_decode(tokens, state)
        n, device = tokens.shape[1], tokens.device
        A, z = state.extra["A"], state.extra["z"]
        positions = state.length + torch.arange(n, device=device)
        out = self.backbone.run(
            self.backbone.embed(tokens),
            mask=cache_mask(state.length, n, device=device),
            positions=positions,
            caches=state.caches,
            layer_hook=self._hook(A, z, None, None),
        )
        assert out.caches is not None  # a run with caches returns them grown
        grown = DecodeState(caches=out.caches, length=state.length + n, extra=state.extra)
        return out.logits, grown
