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

Positions restart at 0 every segment. The initial memory is a learned [m, d] embedding,
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

Backbones (``config.backbone``):

- ``"builtin"``: our pre-LN :class:`memtx.modules.Block` stack, rotary positions, the mask
  passed to ``scaled_dot_product_attention`` as a boolean matrix; tied embedding and head.
- ``"hf"``: any Hugging Face causal LM (``pip install memtx[hf]``), built from a config
  with our sizes (``hf_model_type``, default GPT-2, randomly initialised) or loaded from a
  local folder (``hf_path``). Segments go in through ``inputs_embeds`` with explicit
  ``position_ids`` 0..T-1 and the same mask as an additive float 4-D mask ``[1, 1, T, T]``:
  transformers 5.x hands a 4-D ``attention_mask`` to the attention function unchanged
  (``masking_utils._preprocess_mask_arguments``: "If the mask is already 4D, simply return
  as-is"), and both the ``sdpa`` and the ``eager`` implementations add it to the scores, so
  the model is built with ``attn_implementation="sdpa"`` (``"eager"`` where sdpa is not
  supported) and any other implementation is refused. Token embeddings, dropout and logits
  are the HF model's own (its input embedding and LM head); a loaded folder keeps its own
  dropout and feed-forward width, and its vocabulary, width, depth and heads must equal
  the config's (a mismatch is a :class:`ConfigError` naming the field).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from memtx.config import RMTConfig
from memtx.errors import ConfigError, DataError
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

LAYOUTS: tuple[str, ...] = ("read_write", "read_only")
HF_INSTALL_HINT = "pip install memtx[hf]"

__all__ = ["LAYOUTS", "RMT", "RMTMemory", "rmt_attention_mask"]


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


class RMT(TiedLM):
    """Recurrent Memory Transformer over one segment; memory = :class:`RMTMemory`.

    See the module docstring for the layout, the mask and the two backbones.
    """

    memory_carries_grad = True

    def __init__(self, config: RMTConfig) -> None:
        super().__init__(config)
        self.config: RMTConfig = config
        self.hf: Any = None  # the Hugging Face causal LM (backbone "hf")
        m, d = config.memory_tokens, config.d_model
        if config.backbone == "builtin" and (
            config.hf_path is not None or config.hf_model_type != "gpt2"
        ):
            # Never ignore a setting silently (a known defect of public RMT wrappers).
            raise ConfigError(
                "model.hf_path and model.hf_model_type only apply to model.backbone='hf', "
                "got backbone='builtin'"
            )
        if config.backbone == "hf":
            # The HF model brings its own embedding, dropout, final norm and head.
            del self.embed, self.embed_dropout, self.ln_out
            self.hf = _load_hf_model(config)
            self._logits_to_keep = "logits_to_keep" in inspect.signature(self.hf.forward).parameters
            weight = self.hf.get_input_embeddings().weight
            self.initial_memory = nn.Parameter(torch.empty(m, d, dtype=weight.dtype))
            with torch.no_grad():
                nn.init.normal_(self.initial_memory, std=float(weight.std()))
        else:
            self.rotary = RotaryEmbedding(config.head_dim)
            self.blocks = nn.ModuleList(
                Block(d, config.n_heads, config.ffn_dim, dropout=config.dropout)
                for _ in range(config.n_layers)
            )
            self.initial_memory = nn.Parameter(torch.empty(m, d))
            self.init_weights()
            nn.init.normal_(self.initial_memory, std=0.02)

    # ------------------------------------------------------------------ plumbing

    @property
    def device(self) -> torch.device:
        return self.initial_memory.device

    def embed_tokens(self, tokens: Tensor) -> Tensor:
        """[B, L] ids -> [B, L, d] (for HF: its input embedding; it adds its own dropout)."""
        if self.hf is not None:
            return self.hf.get_input_embeddings()(tokens)
        return self.embed(tokens)

    def logits(self, hidden: Tensor) -> Tensor:
        """Builtin: [B, L, d] residual stream -> [B, L, V]; HF: final hidden -> LM head."""
        if self.hf is not None:
            return self.hf.get_output_embeddings()(hidden)
        return super().logits(hidden)

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
        positions = torch.arange(inputs.shape[1], device=inputs.device)  # restart per segment
        if self.hf is None:
            x = self.embed_dropout(inputs)
            rotary = self.rotary(positions)
            for block in self.blocks:
                x = block(x, mask=allowed, rotary=rotary)  # (B, T, d)
            hidden = self.ln_out(x)
            logits = hidden[:, m : m + length] @ self.embed.weight.t()
            return hidden, logits
        additive = torch.zeros(allowed.shape, dtype=inputs.dtype, device=inputs.device)
        additive = additive.masked_fill(~allowed, torch.finfo(inputs.dtype).min)
        kwargs: dict[str, Any] = {}
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = torch.arange(m, m + length, device=inputs.device)
        out = self.hf(
            inputs_embeds=inputs,
            attention_mask=additive[None, None],  # (1, 1, T, T): taken as-is by transformers
            position_ids=positions[None],
            output_hidden_states=True,
            use_cache=False,
            **kwargs,
        )
        logits = out.logits if self._logits_to_keep else out.logits[:, m : m + length]
        return out.hidden_states[-1], logits

    def step(self, tokens: Tensor, memory: RMTMemory) -> StepOutput:
        """One segment: tokens [B, L] (L <= segment_len) and an :class:`RMTMemory`.

        Returns:
            logits [B, L, V] at the token positions and the next :class:`RMTMemory`.
        """
        self.check_tokens(tokens)
        self._check_memory(memory, tokens)
        m, length = self.config.memory_tokens, tokens.shape[1]
        inputs = self.segment_inputs(tokens, self.read_memory(memory))
        hidden, logits = self.forward_inputs(inputs, length=length)
        if self.config.memory_layout == "read_write":
            new_memory = hidden[:, m + length :]  # (B, m, d) the write slots
        else:
            new_memory = hidden[:, :m]  # the read slots: the failing ablation
        slots = new_memory.to(self.initial_memory.dtype)
        return StepOutput(logits, RMTMemory(slots, torch.zeros_like(memory.reset)))

    # ------------------------------------------------------------------ generation

    def cached_decoder(self) -> CachedDecoding | None:
        """The builtin backbone decodes with a KV cache; HF backbones are recomputed."""
        return self if self.hf is None else None

    def begin_decode(self, memory: RMTMemory) -> DecodeState:
        """Run the read memory once as a cached prefix (read slots see only each other).

        Generation never appends write slots to a partial segment: the write block runs
        when the segment is committed with ``advance``.
        """
        if self.hf is not None:
            raise ConfigError("cached decoding is only for the builtin backbone")
        probe = memory.reset[:, None].long()  # (B, 1): batch size and device
        self._check_memory(memory, probe)
        x = self.embed_dropout(self.read_memory(memory))  # (B, m, d)
        rotary = self.rotary(torch.arange(self.config.memory_tokens, device=x.device))
        _, caches = decode_blocks(self.blocks, x, [None] * len(self.blocks), rotary=rotary)
        return DecodeState(caches=caches)

    def decode(self, tokens: Tensor, state: DecodeState) -> tuple[Tensor, DecodeState]:
        """Logits [B, n, V] of ``tokens`` [B, n] appended to the segment, with a KV cache."""
        self.check_decode(tokens, state)
        m, n, device = self.config.memory_tokens, tokens.shape[1], tokens.device
        rotary = self.rotary(m + state.length + torch.arange(n, device=device))
        mask = cache_mask(state.length, n, prefix=m, device=device)
        x = self.embed_dropout(self.embed_tokens(tokens))  # (B, n, d)
        x, caches = decode_blocks(self.blocks, x, state.caches, mask=mask, rotary=rotary)
        return self.logits(x), DecodeState(caches=caches, length=state.length + n)


# --------------------------------------------------------------------------- Hugging Face

# Our sizes under the names HF configs use; the first name a config knows is set.
_HF_SIZE_NAMES: dict[str, tuple[str, ...]] = {
    "d_model": ("n_embd", "hidden_size", "d_model"),
    "n_layers": ("n_layer", "num_hidden_layers", "num_layers"),
    "n_heads": ("n_head", "num_attention_heads", "num_heads"),
    "d_ff": ("n_inner", "intermediate_size", "ffn_dim"),
    "positions": ("n_positions", "max_position_embeddings"),
}
_HF_DROPOUT_NAMES = (
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "attention_dropout",
    "hidden_dropout",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "embed_dropout",
    "dropout",
)
_HF_ATTENTION = ("sdpa", "eager")  # implementations that add our 4-D mask to the scores


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            f"model.backbone='hf' needs the transformers package: {HF_INSTALL_HINT}"
        ) from None
    return transformers


def _hf_size(hf_config: Any, names: tuple[str, ...]) -> Any:
    for name in names:
        value = getattr(hf_config, name, None)
        if value is not None:
            return value
    return None


def _has_field(hf_config: Any, name: str) -> bool:
    return name in vars(hf_config) or name in getattr(hf_config, "attribute_map", {})


def _check_causal_lm(hf_config: Any, *, where: str) -> None:
    """Refuse configs that are not decoder-only causal LMs (BERT-likes, encoder-decoders)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = getattr(hf_config, "model_type", None)
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ConfigError(f"{where} is a {model_type!r} model, not a Hugging Face causal LM")
    if getattr(hf_config, "is_encoder_decoder", False):
        raise ConfigError(f"{where} is an encoder-decoder ({model_type!r}), not a causal LM")
    # Encoder families (BERT, RoBERTa, ...) carry an ``is_decoder`` flag; decoder-only ones don't.
    if getattr(hf_config, "is_decoder", None) is False:
        raise ConfigError(
            f"{where} is an encoder model ({model_type!r} with is_decoder=False), "
            "not a causal LM; RMT's decoder layout needs a decoder-only model"
        )


def _hf_config_from_ours(config: RMTConfig) -> Any:
    transformers = _transformers()
    model_type = config.hf_model_type
    where = f"model.hf_model_type={model_type!r}"
    try:
        default = transformers.AutoConfig.for_model(model_type)
    except ValueError:
        raise ConfigError(f"{where} is not a Hugging Face model type") from None
    _check_causal_lm(default, where=where)
    wanted = {
        "d_model": config.d_model,
        "n_layers": config.n_layers,
        "n_heads": config.n_heads,
        "d_ff": config.ffn_dim,
        "positions": config.segment_len + 2 * config.memory_tokens,
    }
    kwargs: dict[str, Any] = {"vocab_size": config.vocab_size}
    for key, value in wanted.items():
        name = next((n for n in _HF_SIZE_NAMES[key] if _has_field(default, n)), None)
        if name is None and key != "d_ff":
            raise ConfigError(f"{where}: cannot set {key} (none of {_HF_SIZE_NAMES[key]})")
        if name is not None:
            kwargs[name] = value
    if _has_field(default, "num_key_value_heads"):
        kwargs["num_key_value_heads"] = config.n_heads
    for name in _HF_DROPOUT_NAMES:
        if _has_field(default, name) and isinstance(getattr(default, name), float):
            kwargs[name] = config.dropout
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        token_id = getattr(default, name, None)
        if isinstance(token_id, int) and token_id >= config.vocab_size:
            kwargs[name] = None  # GPT-2's 50256 does not exist in a small vocabulary
    return transformers.AutoConfig.for_model(model_type, **kwargs)


def _hf_from_folder(config: RMTConfig) -> tuple[Any, Any]:
    transformers = _transformers()
    path = Path(config.hf_path or "")
    where = f"model.hf_path={str(path)!r}"
    if not path.is_dir():
        raise ConfigError(f"{where} is not a folder")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"{where} has no config.json: not a Hugging Face model folder")
    try:
        json.loads(config_file.read_text(encoding="utf-8"))
        hf_config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (ValueError, OSError, KeyError) as exc:
        raise ConfigError(f"{where}: config.json cannot be read: {exc}") from None
    _check_causal_lm(hf_config, where=where)
    if config.hf_model_type not in ("gpt2", hf_config.model_type):
        raise ConfigError(
            f"model.hf_model_type={config.hf_model_type!r} but {where} holds a "
            f"{hf_config.model_type!r} model (the folder decides; leave hf_model_type unset)"
        )
    for ours, names in (
        ("vocab_size", ("vocab_size",)),
        ("d_model", _HF_SIZE_NAMES["d_model"]),
        ("n_layers", _HF_SIZE_NAMES["n_layers"]),
        ("n_heads", _HF_SIZE_NAMES["n_heads"]),
    ):
        theirs = _hf_size(hf_config, names)
        if theirs is not None and theirs != getattr(config, ours):
            raise ConfigError(
                f"model.{ours} ({getattr(config, ours)}) does not match the model in {where} "
                f"({names[0]}={theirs}); set model.{ours}={theirs}"
            )
    return transformers, hf_config


def _load_hf_model(config: RMTConfig) -> nn.Module:
    """The HF causal LM of ``config`` with an attention implementation that honours our mask."""
    if config.hf_path is not None:
        transformers, hf_config = _hf_from_folder(config)

        def make(attn: str) -> nn.Module:
            return transformers.AutoModelForCausalLM.from_pretrained(
                config.hf_path, local_files_only=True, attn_implementation=attn
            )
    else:
        transformers, hf_config = _transformers(), _hf_config_from_ours(config)

        def make(attn: str) -> nn.Module:
            return transformers.AutoModelForCausalLM.from_config(
                hf_config, attn_implementation=attn
            )

    try:
        model = make("sdpa")
    except ValueError:  # the architecture has no sdpa path
        model = make("eager")
    attn = getattr(model.config, "_attn_implementation", None)
    if attn not in _HF_ATTENTION:
        raise ConfigError(
            f"the Hugging Face model uses attention {attn!r}; RMT's mask needs one of "
            f"{', '.join(_HF_ATTENTION)}"
        )
    limit = _hf_size(model.config, _HF_SIZE_NAMES["positions"])
    blocks = 2 if config.memory_layout == "read_write" else 1
    needed = config.segment_len + blocks * config.memory_tokens
    if limit is not None and limit < needed:
        raise ConfigError(
            f"the Hugging Face model has {limit} positions, but a segment needs segment_len + "
            f"{blocks} * memory_tokens = {needed}"
        )
    return model
