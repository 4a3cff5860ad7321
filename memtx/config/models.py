"""One frozen, typed, validated dataclass per model (the ``[model]`` table)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from memtx.config.checks import Checked, construct
from memtx.config.pretrained import with_pretrained_sizes
from memtx.errors import ConfigError

__all__ = [
    "MODEL_CONFIGS",
    "ARMTConfig",
    "MemformerConfig",
    "ModelConfig",
    "RMTConfig",
    "TransformerConfig",
    "TransformerXLConfig",
    "model_config",
]


@dataclass(frozen=True, kw_only=True)
class ModelConfig(Checked):
    """Fields every model shares.

    Attributes:
        vocab_size: number of token ids (256 for bytes).
        d_model: width of the residual stream.
        n_layers: transformer blocks (for Memformer: encoder + decoder blocks).
        n_heads: attention heads; must divide ``d_model``.
        segment_len: tokens per segment; the unit the memory is carried across.
        dropout: dropout probability on attention outputs, FFN and embeddings.
        d_ff: hidden width of the feed-forward layers (``None``: 4 x ``d_model``).
        init: ``"gpt2"``: every matrix and embedding N(0, 0.02), GPT-2's, whose width is
            768; ``"fan_in"``: matrices N(0, 1 / sqrt(3 fan_in)) (PyTorch's default
            ``nn.Linear`` spread; 0.0208 at 768, 0.072 at 64), embeddings N(0, 0.02).
            At width 64, GPT-2's 0.02 makes attention start near uniform and slows the
            heads that bind one token to another (benchmarks/babilong.md, session 16).
        tie_embeddings: the output head is the token embedding (True), or a matrix of
            its own (False). Not for a Hugging Face backbone, which has its own head.
        embed_std: the spread of the token embedding (and of RMT's and ARMT's memory
            tokens) at init, N(0, embed_std); GPT-2's 0.02 by default. With pre-LN blocks
            a token's own embedding is all that tells the blocks which token it is, and
            at 0.02 the first block's output drowns it; PyTorch's ``nn.Embedding`` uses 1.
            Keep 0.02 with a tied head (the logits' spread grows with it).
    """

    name: ClassVar[str] = ""
    section: ClassVar[str] = "model"

    vocab_size: int = 256
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    segment_len: int = 128
    dropout: float = 0.0
    d_ff: int | None = None
    init: Literal["gpt2", "fan_in"] = "gpt2"
    tie_embeddings: bool = True
    embed_std: float = 0.02

    @property
    def ffn_dim(self) -> int:
        return self.d_ff if self.d_ff is not None else 4 * self.d_model

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def _validate(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "segment_len"):
            self._at_least(name, 1)
        if self.d_ff is not None:
            self._at_least("d_ff", 1)
        self._in_range("dropout", 0.0, 1.0)
        if not self.embed_std > 0:
            raise ConfigError(f"model.embed_std must be > 0, got {self.embed_std}")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"model.d_model ({self.d_model}) must be divisible by model.n_heads "
                f"({self.n_heads})"
            )
        if self.head_dim % 2:
            raise ConfigError(
                f"model.d_model / model.n_heads must be even (rotary positions), "
                f"got {self.head_dim}"
            )
        if getattr(self, "backbone", "builtin") == "hf":
            for name, ours in (("init", "gpt2"), ("tie_embeddings", True), ("embed_std", 0.02)):
                if getattr(self, name) != ours:
                    raise ConfigError(
                        f"model.{name} applies to the builtin backbone only; a Hugging Face "
                        f"backbone keeps its own weights and head (got {getattr(self, name)!r})"
                    )

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self)}


@dataclass(frozen=True, kw_only=True)
class TransformerConfig(ModelConfig):
    """Causal transformer without memory: each segment sees only itself (the floor)."""

    name: ClassVar[str] = "transformer"


@dataclass(frozen=True, kw_only=True)
class TransformerXLConfig(ModelConfig):
    """Transformer-XL (Dai et al. 2019).

    Attributes:
        mem_len: hidden states cached per layer (stop-gradient); 0 disables the cache.
    """

    name: ClassVar[str] = "transformer_xl"

    mem_len: int = 128

    def _validate(self) -> None:
        super()._validate()
        self._at_least("mem_len", 0)


@dataclass(frozen=True, kw_only=True)
class MemformerConfig(ModelConfig):
    """Memformer (Wu et al. 2022): encoder + slot memory + decoder.

    ``n_layers`` is ``encoder_layers + decoder_layers``. Give both depths, or only
    ``n_layers`` (then the encoder gets a third, at least one block: 6 -> 2 + 4), or
    ``n_layers`` and one depth.

    Attributes:
        memory_slots: number of external memory slots k.
        encoder_layers: encoder blocks; each reads the memory by cross-attention.
        decoder_layers: causal decoder blocks; they read only the encoder output.
        write_temperature: the writer's softmax temperature tau (< 1 sharpens; the
            paper's value is unverified: we use 0.5; the ablation uses 1.0).
        use_memory: False is the paper's "w/o memory" ablation (no reader, no writer).
        use_forgetting: False is "w/o forgetting": no Biased Memory Normalization.
        context_positions: rotary positions in the decoder's cross-attention, so its
            scores see how far back in the previous segment a key lies (False: the
            position-less cross-attention of the first version, where H is a bag).
        context_attention: how the decoder reads H_{t-1}: ``"cross"`` (the paper's
            cross-attention in every decoder block) or ``"joint"`` (each decoder block's
            self-attention reads H before the segment with its own projections and
            relative positions, as Transformer-XL reads its cache; no cross-attention).
        context_depth: which encoder depth each decoder block reads (joint read only):
            ``"last"`` (the paper: every block reads the encoder's output H) or
            ``"layered"`` (a documented deviation: decoder block l reads the encoder's
            stream at depth ``round(l * E / (D - 1))``, from the previous segment's
            embeddings for the first block to H for the last, as Transformer-XL's block l
            reads its cache of layer l's inputs; no extra compute, the same state) or
            ``"aligned"`` (block l reads depth ``min(l, E)``: the depths Transformer-XL's
            first E + 1 blocks read, H for the blocks past E).
        slot_bias_init: how BMN's bias v_i starts: ``"normal"`` (entries N(0, 1), so
            ``|v_i| ~ sqrt(d_model)``: 14 at width 192 against the ~1.5 a trained writer adds,
            so the slots stay near the terminal state whatever is written) or ``"unit"`` (the same
            directions scaled to ``|v_i| = 1``, the scale of what the writer adds; the
            terminal state ``v_i / |v_i|`` is the same either way).
    """

    name: ClassVar[str] = "memformer"

    n_layers: int | None = None  # type: ignore[assignment]
    memory_slots: int = 32
    encoder_layers: int | None = None
    decoder_layers: int | None = None
    write_temperature: float = 0.5
    use_memory: bool = True
    use_forgetting: bool = True
    context_positions: bool = False
    context_attention: Literal["cross", "joint"] = "cross"
    context_depth: Literal["last", "layered", "aligned"] = "last"
    slot_bias_init: Literal["normal", "unit"] = "normal"

    def _validate(self) -> None:
        enc, dec, total = self.encoder_layers, self.decoder_layers, self.n_layers
        if enc is None and dec is None:
            total = 6 if total is None else total
            if total < 2:
                raise ConfigError(f"model.n_layers must be >= 2 for memformer, got {total}")
            enc = max(1, total // 3)
            dec = total - enc
        elif enc is None or dec is None:
            if total is None:
                raise ConfigError(
                    "model.encoder_layers and model.decoder_layers must both be given, "
                    "or one of them with model.n_layers"
                )
            enc = total - dec if enc is None else enc  # type: ignore[operator]
            dec = total - enc if dec is None else dec
        elif total is not None and total != enc + dec:
            raise ConfigError(
                f"model.n_layers ({total}) must equal encoder_layers + decoder_layers "
                f"({enc} + {dec})"
            )
        object.__setattr__(self, "encoder_layers", enc)
        object.__setattr__(self, "decoder_layers", dec)
        object.__setattr__(self, "n_layers", enc + dec)
        super()._validate()
        self._at_least("encoder_layers", 1)
        self._at_least("decoder_layers", 1)
        self._at_least("memory_slots", 1)
        if not self.write_temperature > 0:
            raise ConfigError(f"model.write_temperature must be > 0, got {self.write_temperature}")
        if self.context_positions and self.context_attention == "joint":
            raise ConfigError(
                "model.context_positions is for context_attention='cross' "
                "(the joint attention always has positions)"
            )
        if self.context_depth != "last" and self.context_attention != "joint":
            raise ConfigError(
                f"model.context_depth={self.context_depth!r} needs model.context_attention='joint' "
                "(the cross-attention reads the encoder's output only)"
            )


@dataclass(frozen=True, kw_only=True)
class RMTConfig(ModelConfig):
    """Recurrent Memory Transformer (Bulatov et al. 2022), decoder-only layout.

    Attributes:
        memory_tokens: m, the number of memory tokens read and written per segment.
        memory_layout: ``"read_write"`` is the paper's [read ; tokens ; write];
            ``"read_only"`` puts memory only at the start (the failing ablation).
        backbone: ``"builtin"`` (our causal blocks) or ``"hf"`` (a Hugging Face
            causal LM, ``pip install memtx[hf]``).
        hf_path: a pretrained causal LM: a local folder (config and safetensors), a
            ``.gguf`` file or a hub name (:mod:`memtx.config.pretrained`); its vocabulary,
            width, depth, heads and feed-forward width are read from it (a restated value
            that differs is an error).
        hf_model_type: with no ``hf_path``, build this HF architecture from a config
            with our sizes (``"gpt2"``, ``"llama"``), randomly initialised.
        write_gate: a learned per-slot gate g in (0, 1) on the write: the next memory is
            ``read + g * (written - read)``, so a segment with nothing to store can leave
            the memory as it was (False: the paper's full overwrite).
        memory_scale: ``"output"`` (the paper's) passes the last layer's final-normalized
            outputs on as they are; ``"embedding"`` rescales each written slot to the RMS
            of the backbone's token embeddings (the scale of the learned initial memory),
            so every segment reads memory at the scale the first layer was trained on. A
            pretrained SmolLM2 writes slots of norm ~54 against token embeddings of ~3.2.
    """

    name: ClassVar[str] = "rmt"

    memory_tokens: int = 8
    memory_layout: Literal["read_write", "read_only"] = "read_write"
    backbone: Literal["builtin", "hf"] = "builtin"
    hf_path: str | None = None
    hf_model_type: str = "gpt2"
    write_gate: bool = False
    memory_scale: Literal["output", "embedding"] = "output"

    def _validate(self) -> None:
        super()._validate()
        self._at_least("memory_tokens", 1)
        if self.write_gate and self.memory_layout != "read_write":
            raise ConfigError("model.write_gate needs model.memory_layout='read_write'")


@dataclass(frozen=True, kw_only=True)
class ARMTConfig(ModelConfig):
    """Associative Recurrent Memory Transformer (Rodkin et al. 2024).

    Attributes:
        memory_tokens: m, the learned memory tokens appended to every segment; their
            outputs write into each layer's associative memory.
        d_mem: width of the key and query projections before the feature map.
        nu: the DPFP feature map's order; keys are ``2 * nu * d_mem`` wide.
        correction: the normaliser's correction (the paper's gamma); False adds every
            key to the normaliser in full.
        write_rule: ``"paper"``, the authors' delta rule: the m memory tokens' updates
            are summed, so overlapping keys can overshoot (the update of A then has an
            eigenvalue below -1 and A grows geometrically: ~1e18 after 128 segments of
            real text, benchmarks/armt/facts-full.md). ``"bounded"``: the normaliser is
            updated first, each key's step is the exact interpolation
            ``read'(k) = (1 - b) read(k) + b v``, and the summed step is scaled down
            where the keys overlap, so the update never overshoots (not in the paper;
            see :mod:`memtx.models.armt`).
        read_floor: floor the read's denominator at the query's own ``|phi(q)|^2``:
            ``A q / (max(z . q, |q|^2) + eps)`` (not in the paper). A query in directions
            nothing was written to then reads little instead of ``A q / ~0``; a written
            key is unaffected, since the correction leaves ``z . k >= |k|^2``. Without
            it, a trained model's read grew 0.1 -> 2,500 over 256 segments of real text,
            fed its keys and went NaN by segment 512.
        gate_bias: the write gate's initial bias (``b = sigmoid(W_b h + bias)``); None
            keeps ``nn.Linear``'s init, as the authors do (b ~ 0.5). A negative value
            starts with writes nearly closed (-4: b ~ 0.02), so what the memory writes on a
            segment without anything to keep starts near nothing.
        backbone: ``"builtin"`` (our causal blocks) or ``"hf"`` (a Hugging Face
            causal LM, ``pip install memtx[hf]``).
        hf_path: a pretrained causal LM: a local folder (config and safetensors), a
            ``.gguf`` file or a hub name (:mod:`memtx.config.pretrained`); its vocabulary,
            width, depth, heads and feed-forward width are read from it (a restated value
            that differs is an error).
        hf_model_type: with no ``hf_path``, build this HF architecture from a config
            with our sizes (``"gpt2"``, ``"llama"``), randomly initialised.
    """

    name: ClassVar[str] = "armt"

    memory_tokens: int = 16
    d_mem: int = 64
    nu: int = 3
    correction: bool = True
    write_rule: Literal["paper", "bounded"] = "paper"
    read_floor: bool = False
    gate_bias: float | None = None
    backbone: Literal["builtin", "hf"] = "builtin"
    hf_path: str | None = None
    hf_model_type: str = "gpt2"

    @property
    def d_key(self) -> int:
        """Width of the DPFP features of a key or query: ``2 * nu * d_mem``."""
        return 2 * self.nu * self.d_mem

    def _validate(self) -> None:
        super()._validate()
        for name in ("memory_tokens", "d_mem", "nu"):
            self._at_least(name, 1)


MODEL_CONFIGS: dict[str, type[ModelConfig]] = {
    cls.name: cls
    for cls in (TransformerConfig, TransformerXLConfig, MemformerConfig, RMTConfig, ARMTConfig)
}


def model_config(name: str, **fields: Any) -> ModelConfig:
    """The validated config of model ``name`` with ``fields`` set.

    With ``backbone="hf"`` and an ``hf_path``, the sizes come from that checkpoint.

    Raises:
        ConfigError: unknown model name, unknown field, wrong type or value.
    """
    if name not in MODEL_CONFIGS:
        raise ConfigError(f"unknown model {name!r} (known: {', '.join(MODEL_CONFIGS)})")
    if fields.get("backbone") == "hf" and fields.get("hf_path") is not None:
        fields = with_pretrained_sizes(fields)  # the checkpoint decides the sizes
    return construct(MODEL_CONFIGS[name], fields, section="model")
