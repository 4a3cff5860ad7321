"""Backbones: the causal LM a memory model runs its segments through, behind one interface.

RMT puts memory vectors around an unchanged causal LM (ARMT, later, reads and writes an
associative memory around each of its layers). That LM is a :class:`Backbone`:

    embed(ids [B, L]) -> [B, L, d]                 token embeddings (no dropout yet)
    run(inputs [B, T, d], mask, positions)         input dropout, the layers, final norm
        -> BackboneOutput(hidden [B, T, d], logits [B, t, V], caches)

``hidden`` is the final-normalized last-layer output (a Hugging Face model's
``hidden_states[-1]``), ``logits`` the LM head's at the positions ``logits_at``. ``mask``
is a bool [T, K] (True = the row may attend to the column; None = every column),
``positions`` [T] the position ids. Decoding passes ``caches`` (one per layer, None =
empty) and gets them back grown, where the backbone ``supports_cache``. A
``layer_hook(index, stream) -> stream`` sees and may replace the residual stream between
layers: the input of layer ``index`` for ``index < n_layers``, the last layer's output
(before the final norm) at ``n_layers`` (ARMT reads into a layer's input and writes from
its output, the next index).

- :class:`BuiltinBackbone`: our pre-LN :class:`memtx.modules.Block` stack, rotary
  positions, the mask handed to ``scaled_dot_product_attention`` as a boolean matrix, a
  token embedding tied to the head.
- :class:`HFBackbone`: any Hugging Face causal LM (``pip install memtx[hf]``), built or
  loaded by :func:`memtx.models.hf.load_hf_model` (from our sizes, or a pretrained
  checkpoint: a folder of safetensors and JSON, a GGUF file, a hub name). Positions are
  the model's own: a learned table (GPT-2, ``absolute_positions``) or rotary (Llama).
  Inputs go in through ``inputs_embeds`` with explicit
  ``position_ids`` and the mask as an additive float 4-D mask ``[1, 1, T, T]``, which the
  ``sdpa`` and ``eager`` attention implementations add to the scores (see that module).
  Embedding, dropout and head are the HF model's own.

A backbone is an ``nn.Module`` whose children are named as in the checkpoints of the model
using it (``embed``, ``ln_out``, ``blocks``; ``hf``): the model registers them on itself
(:func:`adopt_backbone`), so its parameter names are those of run folders saved before
backbones were split out."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, cast

import torch
from torch import Tensor, nn

from memtx.config import ARMTConfig, ModelConfig, RMTConfig
from memtx.errors import ConfigError
from memtx.models.hf import HF_INSTALL_HINT, HF_SIZE_NAMES, hf_size, load_hf_model
from memtx.models.protocol import head_logits, init_weights, output_head
from memtx.modules import Block, KVCache, RotaryEmbedding

#: ``layer_hook(index, stream [B, T, d]) -> stream``: see the module docstring
LayerHook = Callable[[int, Tensor], Tensor]

__all__ = [
    "HF_INSTALL_HINT",
    "Backbone",
    "BackboneOutput",
    "BuiltinBackbone",
    "HFBackbone",
    "KVCache",
    "LayerHook",
    "adopt_backbone",
    "build_backbone",
]


class BackboneOutput(NamedTuple):
    """What :meth:`Backbone.run` returns.

    Attributes:
        hidden: [B, T, d] the final-normalized outputs of the last layer.
        logits: [B, t, V] the LM head's at the positions ``logits_at``.
        caches: the grown per-layer caches when run with ``caches``, else None.
    """

    hidden: Tensor
    logits: Tensor
    caches: list[KVCache | None] | None


class Backbone(Protocol):
    """A causal LM a memory model drives through embeddings (see the module docstring)."""

    #: d, the width of embeddings and hidden states
    width: int
    #: how many layers ``run`` goes through (a ``layer_hook`` sees ``n_layers + 1`` streams)
    n_layers: int
    #: the most positions one ``run`` may use (None: no limit, e.g. rotary positions)
    max_positions: int | None
    #: whether ``run`` accepts per-layer key/value ``caches`` (cached decoding)
    supports_cache: bool
    #: whether positions are a learned table added to the inputs (GPT-2), so a token's
    #: position id changes its vector; False for rotary (Llama, builtin), where only the
    #: differences between the ids of a query and a key matter
    absolute_positions: bool

    @property
    def dtype(self) -> torch.dtype:
        """The parameters' floating dtype."""
        ...

    @property
    def init_std(self) -> float:
        """The standard deviation new vectors in the embedding space start with."""
        ...

    def embed(self, ids: Tensor) -> Tensor:
        """Token embeddings [B, L, d] of ``ids`` [B, L] (``run`` adds the dropout)."""
        ...

    def embedding_rms(self) -> Tensor:
        """The RMS of the token embedding table's entries, 0-d (recomputed when it changes)."""
        ...

    def run(
        self,
        inputs: Tensor,
        *,
        mask: Tensor | None,
        positions: Tensor,
        logits_at: slice = slice(None),
        caches: list[KVCache | None] | None = None,
        layer_hook: LayerHook | None = None,
    ) -> BackboneOutput:
        """The layers over ``inputs`` [B, T, d]; ``mask`` [T, K] bool; ``positions`` [T]."""
        ...

    def named_children(self) -> Any:
        """The parts the model registers on itself (an ``nn.Module``'s children)."""
        ...


def build_backbone(
    config: RMTConfig | ARMTConfig, *, positions: int
) -> BuiltinBackbone | HFBackbone:
    """The backbone ``config.backbone`` names (``positions``: a new HF model's table size).

    Raises:
        ConfigError: a Hugging Face setting with the builtin backbone, or see
            :meth:`HFBackbone.build`.
    """
    if config.backbone == "hf":
        return HFBackbone.build(config, positions=positions)
    if config.hf_path is not None or config.hf_model_type != "gpt2":
        # Never ignore a setting silently (a known defect of public RMT wrappers).
        raise ConfigError(
            "model.hf_path and model.hf_model_type only apply to model.backbone='hf', "
            "got backbone='builtin'"
        )
    return BuiltinBackbone(config)


def table_rms(weight: Tensor, cache: dict[str, Any]) -> Tensor:
    """The RMS of ``weight``'s entries (a 0-d tensor on its device: no host sync), kept in
    ``cache`` until the tensor is changed in place (an optimizer step or a load bumps its
    version counter)."""
    key = (weight.data_ptr(), weight._version, weight.device)
    if cache.get("key") != key:
        rms = weight.detach().float().pow(2).mean().sqrt().to(weight.dtype)
        cache["key"], cache["rms"] = key, rms
    return cast(Tensor, cache["rms"])


def adopt_backbone(model: nn.Module, backbone: Backbone) -> None:
    """Register ``backbone``'s parts on ``model`` under their own names; set ``model.backbone``.

    The parts are the model's submodules (``train``/``to``/``state_dict`` reach them
    there); the backbone object is kept as a plain attribute, a view over those same
    parts, so no parameter is registered twice and no name gains a ``backbone.`` prefix.
    """
    for name, part in backbone.named_children():
        model.add_module(name, part)
    object.__setattr__(model, "backbone", backbone)  # bypass nn.Module's registration


# --------------------------------------------------------------------------- builtin


class BuiltinBackbone(nn.Module):
    """Our pre-LN causal blocks with rotary positions and a token embedding that is also the
    output head (or a head of its own: ``model.tie_embeddings = false``)."""

    supports_cache = True
    absolute_positions = False  # rotary
    max_positions: int | None = None  # rotary positions have no table to run out of

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.width, self.n_layers = config.d_model, config.n_layers
        self.init_std = config.embed_std  # the embedding's, in either init scheme
        # ``embed`` (the protocol's ``embed(ids)``) is the embedding module itself, under the
        # checkpoints' name; the creation order is RMT's parameter (and optimizer) order.
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.embed_dropout = nn.Dropout(config.dropout)
        self.ln_out = nn.LayerNorm(config.d_model)
        self.rotary = RotaryEmbedding(config.head_dim)
        self.blocks = nn.ModuleList(
            Block(config.d_model, config.n_heads, config.ffn_dim, dropout=config.dropout)
            for _ in range(config.n_layers)
        )
        self.head = output_head(config)
        init_weights(self, scheme=config.init, embed_std=config.embed_std)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def embedding_rms(self) -> Tensor:
        return table_rms(self.embed.weight, self.__dict__.setdefault("_rms_cache", {}))

    def run(
        self,
        inputs: Tensor,
        *,
        mask: Tensor | None,
        positions: Tensor,
        logits_at: slice = slice(None),
        caches: list[KVCache | None] | None = None,
        layer_hook: LayerHook | None = None,
    ) -> BackboneOutput:
        """See :meth:`Backbone.run`; with ``caches`` each block attends over its cache too."""
        x = self.embed_dropout(inputs)  # (B, T, d)
        rotary = self.rotary(positions)
        grown: list[KVCache | None] | None = None if caches is None else []
        for index, block in enumerate(cast(list[Block], list(self.blocks))):
            if layer_hook is not None:
                x = layer_hook(index, x)
            if caches is None or grown is None:
                x = block(x, mask=mask, rotary=rotary)
            else:
                x, cache = block.forward_cached(x, caches[index], mask=mask, rotary=rotary)
                grown.append(cache)
        if layer_hook is not None:
            x = layer_hook(self.n_layers, x)
        hidden = self.ln_out(x)  # (B, T, d)
        logits = head_logits(hidden[:, logits_at], self.embed, self.head)
        return BackboneOutput(hidden, logits, grown)


# --------------------------------------------------------------------------- Hugging Face


class HFBackbone(nn.Module):
    """A Hugging Face causal LM driven through ``inputs_embeds`` and a 4-D additive mask."""

    supports_cache = False  # decoding recomputes the segment (same tokens, more compute)

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.hf: Any = model  # a ``transformers`` PreTrainedModel (untyped here)
        self.width = int(hf_size(model.config, HF_SIZE_NAMES["d_model"]))
        self.n_layers = int(hf_size(model.config, HF_SIZE_NAMES["n_layers"]))
        self.max_positions: int | None = hf_size(model.config, HF_SIZE_NAMES["positions"])
        self.absolute_positions = _has_position_table(model, self.max_positions)
        # Older architectures have no ``logits_to_keep``: they compute every position's.
        self._logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters

    @classmethod
    def build(cls, config: RMTConfig | ARMTConfig, *, positions: int) -> HFBackbone:
        """The backbone over the model :func:`memtx.models.hf.load_hf_model` makes.

        Raises:
            ConfigError: see :func:`~memtx.models.hf.load_hf_model`.
        """
        return cls(load_hf_model(config, positions=positions))

    @property
    def dtype(self) -> torch.dtype:
        return cast(torch.dtype, self.hf.get_input_embeddings().weight.dtype)

    @property
    def init_std(self) -> float:
        """The measured scale of the model's own token embeddings."""
        return float(self.hf.get_input_embeddings().weight.detach().std())

    def embedding_rms(self) -> Tensor:
        weight = self.hf.get_input_embeddings().weight
        return table_rms(weight, self.__dict__.setdefault("_rms_cache", {}))

    def embed(self, ids: Tensor) -> Tensor:
        """The HF model's input embedding of ``ids`` [B, L] -> [B, L, d]."""
        return cast(Tensor, self.hf.get_input_embeddings()(ids))

    def run(
        self,
        inputs: Tensor,
        *,
        mask: Tensor | None,
        positions: Tensor,
        logits_at: slice = slice(None),
        caches: list[KVCache | None] | None = None,
        layer_hook: LayerHook | None = None,
    ) -> BackboneOutput:
        """See :meth:`Backbone.run` (no ``caches``: this backbone does not decode cached)."""
        if caches is not None:
            raise ConfigError("cached decoding is only for the builtin backbone")
        length, device = inputs.shape[1], inputs.device
        allowed = mask if mask is not None else torch.ones(length, length, dtype=torch.bool)
        additive = torch.zeros(allowed.shape, dtype=inputs.dtype, device=device)
        additive = additive.masked_fill(~allowed.to(device), torch.finfo(inputs.dtype).min)
        kept = torch.arange(length, device=device)[logits_at]  # (t,)
        kwargs: dict[str, Any] = {"logits_to_keep": kept} if self._logits_to_keep else {}

        def call() -> Any:
            return self.hf(
                inputs_embeds=inputs,
                attention_mask=additive[None, None],  # (1, 1, T, K): taken as-is
                position_ids=positions[None],
                output_hidden_states=True,
                use_cache=False,
                **kwargs,
            )

        out = call() if layer_hook is None else self._hooked(call, layer_hook)
        logits = out.logits if self._logits_to_keep else out.logits[:, kept]
        return BackboneOutput(out.hidden_states[-1], logits, None)

    def _hooked(self, call: Callable[[], Any], layer_hook: LayerHook) -> Any:
        """``call()`` with ``layer_hook`` on the stream around each of the HF model's layers."""
        layers = self._layers()

        def before(index: int) -> Callable[..., Any]:
            def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                if args:  # the hidden states come first, positionally or by name
                    return (layer_hook(index, args[0]), *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": layer_hook(index, kwargs["hidden_states"])}

            return hook

        def after(module: nn.Module, args: Any, kwargs: Any, output: Any) -> Any:
            if isinstance(output, tuple):
                return (layer_hook(len(layers), output[0]), *output[1:])
            return layer_hook(len(layers), output)

        handles = [
            layer.register_forward_pre_hook(before(index), with_kwargs=True)
            for index, layer in enumerate(layers)
        ]
        handles.append(layers[-1].register_forward_hook(after, with_kwargs=True))
        try:
            return call()
        finally:
            for handle in handles:
                handle.remove()

    def _layers(self) -> nn.ModuleList:
        """The decoder layers (GPT-2's ``transformer.h``, Llama's ``model.layers``, ...)."""
        for module in self.hf.base_model.children():
            if isinstance(module, nn.ModuleList) and len(module) == self.n_layers:
                return module
        raise ConfigError(
            f"cannot find the layers of the Hugging Face {type(self.hf).__name__} "
            "(a layer_hook needs them)"
        )


def _has_position_table(model: nn.Module, positions: int | None) -> bool:
    """Whether ``model`` embeds positions with a learned table (GPT-2's ``wpe``), not rotary.

    A table is an ``nn.Embedding`` other than the token embedding with (about) one row
    per position (OPT's has 2 extra rows).
    """
    tokens = model.get_input_embeddings()  # type: ignore[operator]
    return positions is not None and any(
        isinstance(module, nn.Embedding)
        and module is not tokens
        and 0 <= module.num_embeddings - positions <= 2
        for module in model.modules()
    )
