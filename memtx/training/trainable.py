"""What a run around a pretrained model trains, and the tokenizer it reads.

What it trains: every parameter, only the memory, or the memory and LoRA adapters.

``train.trainable`` (see :class:`memtx.config.TrainConfig`):

- ``"all"``: every parameter is trained and checkpointed (the default).
- ``"memory"``: only the model's :attr:`~memtx.models.protocol.SegmentLM.memory_parameters`
  (RMT's initial memory; ARMT's memory tokens and associative projections); the
  pretrained backbone is frozen.
- ``"memory+lora"``: the memory plus LoRA adapters (``peft``, injected in place into the
  Hugging Face model, so parameter names stay ours) on the family's attention
  projections, or on ``train.lora_targets``.

:func:`select_trainable` sets ``requires_grad`` (the optimizer takes only those
parameters) and, unless everything is trained, makes the model's ``state_dict`` hold only
the trained tensors and its ``load_state_dict`` accept such a partial state: the loop's
checkpoints, resume and :func:`memtx.train.load_trained` then write and read trained
parts only, and a frozen backbone's weights never reach the run folder. The frozen base
is recorded by :func:`base_model_identity` (path and sha256) and checked on load
(:func:`check_base_model`). What it reads: :func:`check_tokenizer_choice` and
:func:`fit_vocabulary` (a pretrained model keeps its vocabulary; the tokenizer must fit),
:func:`task_tokenizer` and :func:`task_texts` (a text task in the run's BPE, which learns
the task's words). Where it starts: :func:`warm_start` and :func:`init_tokenizer`
(``train.init_from``: another run's weights and tokenizer).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from memtx.config import ModelConfig, RunConfig, TrainConfig
from memtx.config.pretrained import base_identity
from memtx.data import Tokenizer, load_tokenizer
from memtx.data.tasks import task_vocabulary
from memtx.errors import ConfigError
from memtx.models.backbones import HFBackbone
from memtx.models.protocol import SegmentLM

__all__ = [
    "LORA_TARGETS",
    "base_model_identity",
    "check_base_model",
    "check_tokenizer_choice",
    "init_tokenizer",
    "task_texts",
    "task_tokenizer",
    "fit_vocabulary",
    "select_trainable",
    "warm_start",
]

#: LoRA's default target modules per Hugging Face model type (else the Llama names)
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "gpt2": ("c_attn", "c_proj"),
    "gpt_neox": ("query_key_value", "dense"),
    "opt": ("q_proj", "k_proj", "v_proj", "out_proj"),
}
_LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def select_trainable(model: SegmentLM, cfg: TrainConfig) -> list[str]:
    """Freeze what ``cfg.trainable`` does not train; the names of the trained parameters.

    Raises:
        ConfigError: ``memory`` on a model without memory parameters, a partial choice
            without a pretrained backbone (``model.hf_path``), LoRA on a backbone that is
            not a Hugging Face model, target modules the backbone lacks, peft missing.
    """
    if cfg.trainable == "all":
        return [name for name, _ in model.named_parameters()]
    where = f"train.trainable={cfg.trainable!r}"
    if not model.memory_parameters:
        raise ConfigError(
            f"{where}: model {model.config.name!r} has no memory parameters to train "
            "(rmt and armt have)"
        )
    hf_path = getattr(model.config, "hf_path", None)
    if hf_path is None:
        raise ConfigError(
            f"{where} freezes the backbone, so it must be a pretrained one: set model.hf_path "
            "(a folder, a .gguf file or a hub name)"
        )
    if cfg.trainable == "memory+lora":
        _inject_lora(model, cfg, where=where)
    trained = []
    for name, param in model.named_parameters():
        keep = _is_memory(name, model.memory_parameters) or "lora_" in name
        param.requires_grad_(keep)
        if keep:
            trained.append(name)
    _keep_only_trained_in_state_dict(model, set(trained))
    return trained


def base_model_identity(model_config: ModelConfig, cfg: TrainConfig) -> dict[str, str] | None:
    """The frozen base model's ``{"path", "sha256"}``; None when everything is trained."""
    hf_path = getattr(model_config, "hf_path", None)
    if cfg.trainable == "all" or hf_path is None:
        return None
    return base_identity(hf_path)


def check_base_model(saved: dict[str, Any] | None, model_config: ModelConfig) -> None:
    """Refuse to load trained parts onto another base model than theirs.

    Raises:
        ConfigError: the checkpoint's base sha256 differs from ``model.hf_path``'s.
    """
    if not saved:
        return
    hf_path = getattr(model_config, "hf_path", None)
    current = base_identity(hf_path) if hf_path is not None else {"sha256": "none"}
    if current["sha256"] != saved.get("sha256"):
        raise ConfigError(
            f"the checkpoint was trained on the base model {saved.get('path')!r} (sha256 "
            f"{str(saved.get('sha256'))[:12]}...), but model.hf_path={hf_path!r} has sha256 "
            f"{current['sha256'][:12]}...: load it onto the same base model"
        )


#: The tasks that phrase their facts and answers as text, so a tokenizer (the run's BPE or
#: a pretrained model's own) can encode them.
TEXT_TASKS: tuple[str, ...] = ("facts", "babilong")


def check_tokenizer_choice(run: RunConfig) -> None:
    """Refuse tokenizers a run cannot use (before anything is written)."""
    tokenizer = run.data.tokenizer
    if tokenizer == "hf" and getattr(run.model, "hf_path", None) is None:
        raise ConfigError(
            "data.tokenizer='hf' is a pretrained model's own: set model.backbone='hf' and "
            "model.hf_path"
        )
    if run.task is not None and tokenizer != "byte" and run.task.name not in TEXT_TASKS:
        raise ConfigError(
            f"task {run.task.name!r} is byte-level: data.tokenizer must be 'byte' (the "
            f"{' and '.join(TEXT_TASKS)} tasks also take 'bpe', trained on the corpus, and "
            f"'hf', the pretrained model's tokenizer)"
        )


def task_tokenizer(run: RunConfig, tokenizer: Tokenizer) -> Tokenizer | None:
    """The tokenizer a run's task writes its text in: ``None`` for bytes (the tasks' own
    layout), else ``tokenizer`` (the run's BPE or the pretrained model's own)."""
    return None if run.data.tokenizer == "byte" else tokenizer


def task_texts(run: RunConfig) -> tuple[str, ...]:
    """What a BPE tokenizer trained for ``run`` learns besides the corpus: its task's
    sentences (their words become tokens, as a pretrained tokenizer's names and places
    are); nothing for other tokenizers or runs without a text task."""
    if run.task is None or run.data.tokenizer != "bpe":
        return ()
    return task_vocabulary(run.task.name, **run.task.task_params())


def fit_vocabulary(run: RunConfig, tokenizer: Tokenizer) -> RunConfig:
    """``run`` with a vocabulary ``tokenizer``'s ids fit in.

    A model built from our sizes takes the tokenizer's vocabulary; a pretrained one keeps
    its own, which must hold every id the tokenizer makes.

    Raises:
        ConfigError: a tokenizer with more ids than the pretrained model's vocabulary.
    """
    hf_path = getattr(run.model, "hf_path", None)
    if hf_path is None:
        if run.model.vocab_size == tokenizer.vocab_size:
            return run
        return dataclasses.replace(
            run, model=dataclasses.replace(run.model, vocab_size=tokenizer.vocab_size)
        )
    if tokenizer.vocab_size > run.model.vocab_size:
        raise ConfigError(
            f"the {tokenizer.kind} tokenizer has {tokenizer.vocab_size} ids, but the model "
            f"{hf_path!r} has a vocabulary of {run.model.vocab_size}: its ids would not fit"
        )
    return run


def warm_start(model: nn.Module, source: Path) -> tuple[list[str], list[str]]:
    """Copy into ``model`` every tensor of ``source``'s newest checkpoint that it has by
    name (``train.init_from``). Returns the names copied and the names left as they were.

    Raises:
        ConfigError: no run or intact checkpoint in ``source``, a tensor of one name but
            another shape there (other sizes), or no tensor in common (another model).
    """
    from memtx.checkpoint import load_latest

    where = f"train.init_from={str(source)!r}"
    if not (Path(source) / "config.json").is_file():
        raise ConfigError(f"{where} holds no run (no config.json)")
    checkpoint = load_latest(Path(source))
    if checkpoint is None:
        raise ConfigError(f"{where} has no intact checkpoint")
    own = model.state_dict()
    common = sorted(set(own) & set(checkpoint.model))
    for name in common:
        there, here = tuple(checkpoint.model[name].shape), tuple(own[name].shape)
        if there != here:
            raise ConfigError(
                f"{where}: {name} is {list(there)} there and {list(here)} here: the sizes "
                f"(d_model, n_layers, vocabulary...) must match"
            )
    if not common:
        raise ConfigError(
            f"{where}: none of its {len(checkpoint.model)} tensors is in this model "
            f"(another kind of model or backbone)"
        )
    with torch.no_grad():
        for name in common:
            own[name].copy_(checkpoint.model[name])
    return common, sorted(set(own) - set(common))


def init_tokenizer(run: RunConfig) -> Tokenizer | None:
    """The tokenizer of ``train.init_from``'s run, which a warm-started run must reuse
    (its embeddings are of those ids); None without ``init_from`` or for ``hf`` (the
    pretrained model's own, loaded from ``model.hf_path``).

    Raises:
        ConfigError: the run there used another kind of tokenizer.
    """
    source = run.train.init_from
    if not source or run.data.tokenizer == "hf":
        return None
    path = Path(source) / "tokenizer.json"
    if not path.is_file():
        raise ConfigError(f"train.init_from={source!r} holds no run (no tokenizer.json)")
    tokenizer = load_tokenizer(Path(source))
    if tokenizer.kind != run.data.tokenizer:
        raise ConfigError(
            f"train.init_from={source!r} was trained with data.tokenizer={tokenizer.kind!r}, "
            f"this run has {run.data.tokenizer!r}: a warm start needs the same tokens"
        )
    return tokenizer


def _is_memory(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or (p.endswith(".") and name.startswith(p)) for p in prefixes)


def _inject_lora(model: SegmentLM, cfg: TrainConfig, *, where: str) -> None:
    """LoRA adapters injected in place into the model's Hugging Face backbone."""
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, HFBackbone):
        raise ConfigError(f"{where}: LoRA needs model.backbone='hf'")
    try:
        import peft
    except ImportError:
        raise ConfigError(f"{where} needs the peft package: pip install memtx[hf]") from None
    model_type = str(getattr(backbone.hf.config, "model_type", ""))
    targets = cfg.lora_targets or LORA_TARGETS.get(model_type, _LLAMA_TARGETS)
    names = {name.rsplit(".", 1)[-1] for name, _ in backbone.hf.named_modules()}
    missing = sorted(set(targets) - names)
    if missing:
        raise ConfigError(
            f"train.lora_targets: the {model_type!r} backbone has no module named "
            f"{', '.join(repr(m) for m in missing)} (e.g. {', '.join(_linear_names(backbone.hf))})"
        )
    lora = peft.LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,  # type: ignore[arg-type]  # typed int; peft only divides it by r
        lora_dropout=cfg.lora_dropout,
        target_modules=list(targets),
        fan_in_fan_out=model_type == "gpt2",  # GPT-2's Conv1D stores weights transposed
    )
    try:
        peft.inject_adapter_in_model(lora, backbone.hf)
    except ValueError as exc:  # e.g. a target that is not a layer LoRA supports
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"train.lora_targets {list(targets)}: {first}") from None


def _linear_names(hf: nn.Module) -> list[str]:
    """A few names of the backbone's linear-like modules (for the error message)."""
    names = sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in hf.named_modules()
            if isinstance(weight := getattr(module, "weight", None), nn.Parameter)
            and weight.dim() == 2
        }
    )
    return [n for n in names if not n.isdigit()][:8]


def _keep_only_trained_in_state_dict(model: nn.Module, trained: set[str]) -> None:
    """``state_dict`` -> the trained tensors only; ``load_state_dict`` accepts just those."""

    def drop_frozen(module: nn.Module, state: dict[str, Any], prefix: str, meta: Any) -> None:
        for key in [k for k in state if k[len(prefix) :] not in trained]:
            del state[key]

    def forgive_frozen(module: nn.Module, incompatible: Any) -> None:
        frozen = [k for k in incompatible.missing_keys if k not in trained]
        for key in frozen:
            incompatible.missing_keys.remove(key)

    model.register_state_dict_post_hook(drop_frozen)
    model.register_load_state_dict_post_hook(forgive_frozen)
