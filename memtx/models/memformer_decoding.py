"""Memformer's generation with a KV cache (a mixin of :class:`memtx.models.memformer.Memformer`).

:meth:`begin_decode` encodes the previous segment once (the critical path of ``step``);
each :meth:`decode` appends tokens to the new segment and runs only the decoder over them,
reading H as ``step`` does: through the cross-attention (with its positions, if any), or,
for the joint read, as per-block keys and values computed once per segment and read
before the self-attention's cache. The contract suite checks the logits equal ``step``'s.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from memtx.models.protocol import CachedDecoding, DecodeState, cache_mask
from memtx.modules import Block, decode_blocks, prefixed_mask


class MemformerDecoding:
    """:class:`~memtx.models.protocol.CachedDecoding` for Memformer (uses its parts)."""

    def cached_decoder(self) -> CachedDecoding:
        """Generation with a KV cache: :meth:`begin_decode` / :meth:`decode`."""
        return self

    def begin_decode(self, memory: Any) -> DecodeState:
        """Encode the previous segment once (``memory``: a ``MemformerMemory``); the new
        segment then decodes against it."""
        model: Any = self  # a Memformer: the parts used here are its (no import: a cycle)
        probe = memory.prev_tokens[:, :1]  # (B, 1): only batch size and device are read
        model._check_memory(memory, probe)
        memory = model._diagnosed(memory)
        depths, _, _, keys = model._critical_path(memory)
        hidden = None if depths is None else depths[-1]  # H, (B, S, d)
        if model.joint:  # each block's keys and values of its prefix, once per segment
            extra = {}
            for index, (block, read) in enumerate(
                zip(model.decoder, model._prefixes(depths, keys, memory.prev_len), strict=True)
            ):
                if not read:
                    break  # no row was encoded: nothing to read
                assert isinstance(block, Block)
                normed = block.ln_self(read["prefix"])
                kv = block.self_attn.prefix_kv(normed, read["prefix_rotary"])
                extra[f"k{index}"], extra[f"v{index}"] = kv
                extra["mask"] = read["prefix_mask"]
            return DecodeState(caches=[None] * len(model.decoder), extra=extra)
        context, context_mask = model._decoder_context(hidden, keys, memory.prev_len)
        keys_rotary = model._context_key_rotary(hidden, memory.prev_len)
        extra = {} if keys_rotary is None else dict(zip(("cos", "sin"), keys_rotary, strict=True))
        return DecodeState(
            caches=[None] * len(model.decoder),
            context=context,
            context_mask=context_mask,
            extra=extra,
        )

    def decode(self, tokens: Tensor, state: DecodeState) -> tuple[Tensor, DecodeState]:
        """Logits [B, n, V] of ``tokens`` [B, n] appended to the segment, with a KV cache."""
        model: Any = self  # a Memformer: the parts used here are its (no import: a cycle)
        model.check_decode(tokens, state)
        n = tokens.shape[1]
        rotary = model.rotary.span(state.length, n)  # (n, hd) each
        mask = cache_mask(state.length, n, device=tokens.device)
        keys_rotary = (state.extra["cos"], state.extra["sin"]) if "cos" in state.extra else None
        prefixes = None
        if "mask" in state.extra:  # the joint read: H's keys and values before the cache
            prefixes = [
                (state.extra[f"k{i}"], state.extra[f"v{i}"]) for i in range(len(model.decoder))
            ]
            if mask is None:  # one new token sees every key of the segment
                mask = torch.ones(n, state.length + n, dtype=torch.bool, device=tokens.device)
            mask = prefixed_mask(state.extra["mask"], n, mask)
        x = model.embed_tokens(tokens)  # (B, n, d)
        x, caches = decode_blocks(
            model.decoder,
            x,
            state.caches,
            mask=mask,
            rotary=rotary,
            context=state.context,
            context_mask=state.context_mask,
            context_rotary=model._context_rotary(keys_rotary, state.length, n),
            capacity=model.config.segment_len,
            prefixes=prefixes,
        )
        return model.logits(x), DecodeState(
            caches=caches,
            length=state.length + n,
            context=state.context,
            context_mask=state.context_mask,
            extra=state.extra,
        )
