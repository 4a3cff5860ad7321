"""Hugging Face models for :class:`memtx.models.backbones.HFBackbone`: build or load one.

:func:`load_hf_model` makes the causal LM an RMT config names (``pip install memtx[hf]``):

- built from a config with our sizes (``hf_model_type``, default GPT-2, randomly
  initialised): width, depth, heads, feed-forward width, position table, dropout and a
  vocabulary without GPT-2's out-of-range special token ids;
- or a pretrained checkpoint (``hf_path``: a local folder, a ``.gguf`` file, or a hub name,
  see :mod:`memtx.config.pretrained`): from a folder only ``*.safetensors`` weights and
  JSON are read, never a pickle; a GGUF file is dequantised by ``transformers``. The
  checkpoint keeps its dropout and feed-forward width; its vocabulary, width, depth and
  heads must equal the config's (:func:`memtx.config.model_config` fills them in from the
  checkpoint; a mismatch is a :class:`ConfigError` naming both values).

Either way the model must be a decoder-only causal LM, and its attention implementation
``sdpa`` or ``eager``: transformers 5.x hands a 4-D ``attention_mask`` to the attention
function unchanged (``masking_utils._preprocess_mask_arguments``) and both add it to the
scores, which is how the backbone passes RMT's mask; any other implementation is refused.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import shutil
from typing import Any

import safetensors.torch
from torch import nn

from memtx.config import ARMTConfig, RMTConfig
from memtx.config.pretrained import (
    HF_SIZE_NAMES,
    PretrainedSource,
    converted_folder,
    pretrained_sizes,
    resolve_source,
)
from memtx.errors import ConfigError

__all__ = ["HF_INSTALL_HINT", "HF_SIZE_NAMES", "hf_size", "import_transformers", "load_hf_model"]

HF_INSTALL_HINT = "pip install memtx[hf]"

_DROPOUT_NAMES = (
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
_ATTENTION = ("sdpa", "eager")  # implementations that add our 4-D mask to the scores


def import_transformers() -> Any:
    """The ``transformers`` module, or a :class:`ConfigError` saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            f"model.backbone='hf' needs the transformers package: {HF_INSTALL_HINT}"
        ) from None
    return transformers


def hf_size(hf_config: Any, names: tuple[str, ...]) -> Any:
    """The value of the first of ``names`` that ``hf_config`` sets, else None."""
    for name in names:
        value = getattr(hf_config, name, None)
        if value is not None:
            return value
    return None


def load_hf_model(config: RMTConfig | ARMTConfig, *, positions: int) -> nn.Module:
    """From ``config.hf_path`` (a folder, a GGUF file, a hub name) or ``hf_model_type``.

    Args:
        config: the sizes, dropout and the ``hf_*`` settings.
        positions: the position table of a model built from a config.

    Returns:
        A ``transformers`` causal LM with ``sdpa`` attention, else ``eager``. A pretrained
        one is loaded once per process and copied for every later model (tests and
        benchmarks build several around one checkpoint).

    Raises:
        ConfigError: transformers missing, not a causal LM, sizes that differ from the
            checkpoint's, a folder without safetensors weights, a hub name that is not
            available, an attention implementation that ignores our mask.
    """
    transformers = import_transformers()
    if config.hf_path is not None:
        source = resolve_source(config.hf_path)
        _check_pretrained(config, source, transformers)

        def make(attn: str) -> nn.Module:
            return copy.deepcopy(_pretrained(source, attn, _stamp(source)))
    else:
        hf_config = _config_from_ours(config, positions)

        def make(attn: str) -> nn.Module:
            return transformers.AutoModelForCausalLM.from_config(
                hf_config, attn_implementation=attn
            )

    try:
        try:
            model = make("sdpa")
        except ValueError:  # the architecture has no sdpa path
            model = make("eager")
    except (OSError, ValueError, KeyError) as exc:  # unreadable or incomplete weights
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"model.hf_path={config.hf_path!r}: cannot load: {first}") from None
    attn = getattr(model.config, "_attn_implementation", None)
    if attn not in _ATTENTION:
        raise ConfigError(
            f"the Hugging Face model uses attention {attn!r}; RMT's mask needs one of "
            f"{', '.join(_ATTENTION)}"
        )
    return model


def _stamp(source: PretrainedSource) -> tuple[tuple[str, int, int], ...]:
    """(name, size, mtime) of the weight files: a changed file is loaded again."""
    return tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in source.weight_files)


@functools.lru_cache(maxsize=2)
def _pretrained(source: PretrainedSource, attn: str, stamp: tuple[Any, ...]) -> nn.Module:
    """The checkpoint loaded once (``stamp`` keys the cache on the files' state); a GGUF
    file through its converted copy (:func:`~memtx.config.pretrained.converted_folder`)."""
    auto = import_transformers().AutoModelForCausalLM
    where, kwargs = source.from_pretrained_args()
    converted = converted_folder(source, "model")
    if converted is not None and not (converted / "config.json").is_file():
        model = auto.from_pretrained(where, attn_implementation=attn, **kwargs)  # dequantise
        staging = converted.with_name(f".model-{os.getpid()}")
        # save_pretrained refuses a model read from GGUF: write the weights and config
        staging.mkdir(parents=True, exist_ok=True)
        safetensors.torch.save_model(model, str(staging / "model.safetensors"))
        model.config.save_pretrained(str(staging))
        with contextlib.suppress(OSError):  # another process may have converted it first
            staging.rename(converted)
        shutil.rmtree(staging, ignore_errors=True)
    if converted is not None:
        where, kwargs = str(converted), {"local_files_only": True}
    return auto.from_pretrained(where, attn_implementation=attn, use_safetensors=True, **kwargs)


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


def _config_from_ours(config: RMTConfig | ARMTConfig, positions: int) -> Any:
    """The HF config of ``config.hf_model_type`` with our sizes and dropout."""
    transformers = import_transformers()
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
        name = next((n for n in HF_SIZE_NAMES[key] if _has_field(default, n)), None)
        if name is None and key != "d_ff":
            raise ConfigError(f"{where}: cannot set {key} (none of {HF_SIZE_NAMES[key]})")
        if name is not None:
            kwargs[name] = value
    if _has_field(default, "num_key_value_heads"):
        kwargs["num_key_value_heads"] = config.n_heads
    for name in _DROPOUT_NAMES:
        if _has_field(default, name) and isinstance(getattr(default, name), float):
            kwargs[name] = config.dropout
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        token_id = getattr(default, name, None)
        if isinstance(token_id, int) and token_id >= config.vocab_size:
            kwargs[name] = None  # GPT-2's 50256 does not exist in a small vocabulary
    return transformers.AutoConfig.for_model(model_type, **kwargs)


def _check_pretrained(
    config: RMTConfig | ARMTConfig, source: PretrainedSource, transformers: Any
) -> None:
    """Refuse a checkpoint that is not a causal LM, or whose sizes differ from ``config``."""
    where = f"model.hf_path={source.given!r}"
    sizes = pretrained_sizes(source.given)  # a GGUF that is no causal LM fails here
    if not source.gguf_file:
        try:
            hf_config = transformers.AutoConfig.from_pretrained(
                str(source.folder), local_files_only=True
            )
        except (ValueError, OSError, KeyError) as exc:
            raise ConfigError(f"{where}: config.json cannot be read: {exc}") from None
        _check_causal_lm(hf_config, where=where)
        if not any(source.folder.glob("*.safetensors")):
            found = ", ".join(sorted(p.name for p in source.folder.iterdir() if p.is_file()))
            raise ConfigError(
                f"{where} has no *.safetensors weights (found: {found}); memtx loads only "
                "safetensors and JSON, never pickled weights such as pytorch_model.bin: save "
                "the model with save_pretrained(..., safe_serialization=True)"
            )
    if config.hf_model_type not in ("gpt2", sizes["model_type"]):
        raise ConfigError(
            f"model.hf_model_type={config.hf_model_type!r} but {where} holds a "
            f"{sizes['model_type']!r} model (the checkpoint decides; leave hf_model_type unset)"
        )
    for ours in ("vocab_size", "d_model", "n_layers", "n_heads"):
        theirs = sizes.get(ours)
        if theirs is not None and theirs != getattr(config, ours):
            raise ConfigError(
                f"model.{ours}={getattr(config, ours)} but the checkpoint in {where} has "
                f"{ours}={theirs}; leave model.{ours} unset (the checkpoint decides)"
            )
