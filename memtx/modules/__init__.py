"""The only building blocks shared between models: attention, positions, blocks, the KV cache."""

from memtx.modules.attention import MultiHeadAttention, attend
from memtx.modules.blocks import Block, FeedForward, decode_blocks, prefixed_mask
from memtx.modules.kv_cache import KVCache
from memtx.modules.positions import (
    RotaryEmbedding,
    apply_rotary,
    previous_segment_rotary,
    sinusoid,
)
from memtx.modules.slot_writer import SlotWriter

__all__ = [
    "Block",
    "FeedForward",
    "KVCache",
    "MultiHeadAttention",
    "RotaryEmbedding",
    "SlotWriter",
    "apply_rotary",
    "attend",
    "decode_blocks",
    "prefixed_mask",
    "previous_segment_rotary",
    "sinusoid",
]
