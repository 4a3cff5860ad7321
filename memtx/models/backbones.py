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
- :class:`HFBackbone`: any Hugging Face causal LM (``pip install memtx[hf]``), built from
  a config with our sizes (``hf_model_type``, default GPT-2, randomly initialised) or
  loaded from a local folder (``hf_path``: only ``*.safetensors`` weights and JSON are
  read, never a pickle). Inputs go in through ``inputs_embeds`` with explicit
  ``position_ids`` and the mask as an additive float 4-D mask ``[1, 1, T, T]``:
  transformers 5.x hands a 4-D ``attention_mask`` to the attention function unchanged
  (``masking_utils._preprocess_mask_arguments``), and both the ``sdpa`` and the ``eager``
  implementations add it to the scores; any other implementation is refused. Embedding,
  dropout and head are the HF model's own; a loaded folder keeps its dropout and
  feed-forward width, and its vocabulary, width, depth and heads must equal the config's
  (a mismatch is a :class:`ConfigError` naming the field).

A backbone is an ``nn.Module`` whose children are named as in the checkpoints of the model
using it (``embed``, ``ln_out``, ``blocks``; ``hf``): the model registers them on itself
(:func:`adopt_backbone`), so its parameter names are those of run folders saved before
backbones were split out."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Protocol, cast

import torch
from torch import Tensor, nn

from memtx.config import ModelConfig, RMTConfig
from memtx.errors import ConfigError
from memtx.models.protocol import init_gpt2_weights
from memtx.modules import Block, RotaryEmbedding

HF_INSTALL_HINT = "pip install memtx[hf]"

#: one layer's self-attention keys and values, each [B, H, past, hd]
KVCache = tuple[Tensor, Tensor]
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


def build_backbone(config: RMTConfig, *, positions: int) -> BuiltinBackbone | HFBackbone:
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
    """Our pre-LN causal blocks with rotary positions and a tied embedding and head."""

    supports_cache = True
    max_positions: int | None = None  # rotary positions have no table to run out of
    init_std = 0.02  # :func:`init_gpt2_weights`'s

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.width, self.n_layers = config.d_model, config.n_layers
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
        init_gpt2_weights(self)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

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
        return BackboneOutput(hidden, hidden[:, logits_at] @ self.embed.weight.t(), grown)


# --------------------------------------------------------------------------- Hugging Face


class HFBackbone(nn.Module):
    """A Hugging Face causal LM driven through ``inputs_embeds`` and a 4-D additive mask."""

    supports_cache = False  # decoding recomputes the segment (same tokens, more compute)

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.hf: Any = model  # a ``transformers`` PreTrainedModel (untyped here)
        self.width = int(_hf_size(model.config, _HF_SIZE_NAMES["d_model"]))
        self.n_layers = int(_hf_size(model.config, _HF_SIZE_NAMES["n_layers"]))
        self.max_positions: int | None = _hf_size(model.config, _HF_SIZE_NAMES["positions"])
        # Older architectures have no ``logits_to_keep``: they compute every position's.
        self._logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters

    @classmethod
    def build(cls, config: RMTConfig, *, positions: int) -> HFBackbone:
        """From ``config.hf_path`` (a local folder) or ``hf_model_type`` with our sizes.

        Args:
            config: the sizes, dropout and the ``hf_*`` settings.
            positions: the position table of a model built from a config.

        Raises:
            ConfigError: transformers missing, not a causal LM, sizes that differ from
                the folder's, a folder without safetensors weights, an attention
                implementation that ignores our mask.
        """
        if config.hf_path is not None:
            transformers, _ = _hf_from_folder(config)

            def make(attn: str) -> nn.Module:
                return transformers.AutoModelForCausalLM.from_pretrained(
                    config.hf_path,
                    local_files_only=True,
                    use_safetensors=True,  # never unpickle a .bin
                    attn_implementation=attn,
                )
        else:
            transformers, hf_config = _transformers(), _hf_config_from_ours(config, positions)

            def make(attn: str) -> nn.Module:
                return transformers.AutoModelForCausalLM.from_config(
                    hf_config, attn_implementation=attn
                )

        try:
            try:
                model = make("sdpa")
            except ValueError:  # the architecture has no sdpa path
                model = make("eager")
        except OSError as exc:  # unreadable or incomplete weights in hf_path
            raise ConfigError(f"model.hf_path={config.hf_path!r}: cannot load: {exc}") from None
        attn = getattr(model.config, "_attn_implementation", None)
        if attn not in _HF_ATTENTION:
            raise ConfigError(
                f"the Hugging Face model uses attention {attn!r}; RMT's mask needs one of "
                f"{', '.join(_HF_ATTENTION)}"
            )
        return cls(model)

    @property
    def dtype(self) -> torch.dtype:
        return cast(torch.dtype, self.hf.get_input_embeddings().weight.dtype)

    @property
    def init_std(self) -> float:
        """The measured scale of the model's own token embeddings."""
        return float(self.hf.get_input_embeddings().weight.detach().std())

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


def _hf_config_from_ours(config: RMTConfig, positions: int) -> Any:
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
        "positions": positions,
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
    if not any(path.glob("*.safetensors")):
        found = ", ".join(sorted(p.name for p in path.iterdir() if p.is_file()))
        raise ConfigError(
            f"{where} has no *.safetensors weights (found: {found}); memtx loads only "
            "safetensors and JSON, never pickled weights such as pytorch_model.bin: save the "
            "model with save_pretrained(..., safe_serialization=True)"
        )
    return transformers, hf_config
