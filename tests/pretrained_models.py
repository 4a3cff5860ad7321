"""Tiny randomly initialised pretrained checkpoints (GPT-2 and Llama) for the tests.

Each is a local folder as ``save_pretrained`` writes it, with a small byte-level BPE
tokenizer of its own (a ``PreTrainedTokenizerFast`` trained on a short text), so
``model.hf_path`` and ``data.tokenizer = "hf"`` run as on a real checkpoint.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

HAS_PEFT = importlib.util.find_spec("peft") is not None and (
    importlib.util.find_spec("transformers") is not None
)
needs_peft = pytest.mark.skipif(not HAS_PEFT, reason="transformers and peft are not installed")

VOCAB, TOKENIZER_VOCAB, WIDTH, POSITIONS = 320, 300, 32, 96
TEXT = (
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
    "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles. "
    "The key of Alice is 123. What is the key of Alice? 0123456789 "
) * 20


def save_tiny(folder: Path, family: str, *, positions: int = POSITIONS) -> Path:
    """A tiny random ``family`` (``gpt2`` or ``llama``) causal LM with a tokenizer in ``folder``."""
    import transformers

    from memtx.data import BPETokenizer

    torch.manual_seed(0)
    if family == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=WIDTH, n_layer=2, n_head=2, n_positions=positions
        )
    else:
        config = transformers.LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=WIDTH,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=positions,
        )
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder, safe_serialization=True)
    BPETokenizer.train([TEXT], vocab_size=TOKENIZER_VOCAB).save(folder / "bpe")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "bpe/tokenizer.json"))
    fast.save_pretrained(folder)
    return folder


def write_gguf(path: Path, *, architecture: str) -> Path:
    """A GGUF file holding only a header that names ``architecture`` (no tensors)."""
    import struct

    def string(text: str) -> bytes:
        data = text.encode()
        return struct.pack("<Q", len(data)) + data

    header = b"GGUF" + struct.pack("<IQQ", 3, 0, 1)
    header += string("general.architecture") + struct.pack("<I", 8) + string(architecture)
    path.write_bytes(header)
    return path
