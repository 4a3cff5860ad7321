"""Memformer's own behaviours (the contract suite covers shapes, MRBP == full, bad input)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from memtx.errors import ConfigError, DataError
from memtx.models.memformer import Memformer, MemformerMemory
from memtx.models.protocol import memory_leaves
from memtx.recurrence import rollout
from tests.models.small import small_model, tokens

VOCAB = 32
SEG = 8
SLOTS = 4
HEADS = 2


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")


def memformer(**overrides: object) -> Memformer:
    model = small_model("memformer", **overrides)
    assert isinstance(model, Memformer)
    return model


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def after_one_segment(model: Memformer, batch: int = 2, *, length: int = SEG) -> MemformerMemory:
    """A memory that holds a previous segment (prev_len > 0) and written slots."""
    with torch.no_grad():
        memory = model.step(tokens(batch, SEG, seed=7), model.init_memory(batch)).memory
        return model.step(tokens(batch, length, seed=8), memory).memory


def rows(memory: MemformerMemory, index: list[int]) -> MemformerMemory:
    return MemformerMemory(*(leaf[index] for leaf in memory))


def cat(*memories: MemformerMemory) -> MemformerMemory:
    return MemformerMemory(*(torch.cat(leaves) for leaves in zip(*memories)))


# --------------------------------------------------------------------------- memory value


def test_init_memory_is_the_terminal_state_of_bmn() -> None:
    model = memformer()
    memory = model.init_memory(3)
    assert memory.slots.shape == (3, SLOTS, 32)
    assert memory.prev_tokens.shape == (3, SEG) and memory.prev_tokens.dtype == torch.long
    assert memory.prev_len.tolist() == [0, 0, 0]
    assert model.slot_bias is not None
    terminal = model.slot_bias / model.slot_bias.norm(dim=-1, keepdim=True)
    for row in memory.slots:
        torch.testing.assert_close(row, terminal.detach())
    # Random biases: every slot has its own terminal state.
    assert torch.cdist(terminal, terminal).add(torch.eye(SLOTS)).min() > 0.5
    assert not memory.slots.requires_grad


def test_no_input_keeps_the_terminal_state() -> None:
    """No input = a row with no previous segment (prev_len 0): nothing is encoded or written.

    Its next slots are exactly the terminal state, whatever segment it decodes, and it
    stays there over any number of such steps.
    """
    model = memformer().eval()
    memory = model.init_memory(2)
    for seed in (1, 2, 3):
        out = model.step(tokens(2, SEG, seed=seed), memory)
        torch.testing.assert_close(out.memory.slots, memory.slots, rtol=0, atol=0)
        attention = out.aux["write_attention"]
        assert (attention[..., 0] == 1).all() and (attention[..., 1:] == 0).all()
        memory = out.memory._replace(prev_len=torch.zeros(2, dtype=torch.long))


def test_bmn_slots_have_unit_norm_and_move_after_writing() -> None:
    model = memformer().eval()
    memory = after_one_segment(model, 3)
    torch.testing.assert_close(memory.slots.norm(dim=-1), torch.ones(3, SLOTS))
    assert not torch.allclose(memory.slots, model.init_memory(3).slots)


def test_unit_slot_bias_keeps_the_terminal_state_and_lets_writes_through() -> None:
    """``slot_bias_init="unit"``: the same terminal state as ``"normal"`` (same seed), |v_i|
    = 1, and what is written moves the slots further from it, so different inputs leave
    slots further apart (with N(0, 1) entries |v_i| ~ sqrt(d) swamps a write)."""
    torch.manual_seed(0)
    normal = memformer(d_model=64, slot_bias_init="normal").eval()
    torch.manual_seed(0)
    unit = memformer(d_model=64, slot_bias_init="unit").eval()
    assert normal.slot_bias is not None and unit.slot_bias is not None
    torch.testing.assert_close(unit.slot_bias.norm(dim=-1), torch.ones(SLOTS))
    torch.testing.assert_close(unit.terminal_state(), normal.terminal_state())
    assert normal.slot_bias.norm(dim=-1).min() > 4  # ~ sqrt(64)

    def spread(model: Memformer) -> tuple[float, float]:
        memory = after_one_segment(model, 4)  # 4 rows, different tokens
        moved = (memory.slots - model.terminal_state()).norm(dim=-1).mean().item()
        return moved, memory.slots.std(0).norm(dim=-1).mean().item()

    (moved_normal, apart_normal), (moved_unit, apart_unit) = spread(normal), spread(unit)
    assert moved_unit > 3 * moved_normal
    assert apart_unit > 3 * apart_normal


def test_next_memory_holds_the_segment_right_padded() -> None:
    model = memformer().eval()
    x = tokens(2, 5)
    memory = model.step(x, model.init_memory(2)).memory
    assert memory.prev_len.tolist() == [5, 5]
    assert torch.equal(memory.prev_tokens[:, :5], x)
    assert (memory.prev_tokens[:, 5:] == 0).all()


def test_memory_with_bad_prev_len_is_rejected() -> None:
    model = memformer()
    memory = model.init_memory(2)._replace(prev_len=torch.tensor([0, SEG + 1]))
    with pytest.raises(DataError, match="prev_len"):
        model.step(tokens(2, SEG), memory)
    with pytest.raises(DataError, match="memory"):
        model.step(tokens(2, SEG), model.init_memory(2)._replace(slots=torch.zeros(2, SLOTS, 8)))


# --------------------------------------------------------------------------- writer


def test_writer_slots_never_read_each_other() -> None:
    """With the encoder output fixed, slot j's content changes only slot j's write."""
    model = memformer().eval()
    assert model.writer is not None
    gen = torch.Generator().manual_seed(3)
    slots = F.normalize(torch.randn(2, SLOTS, 32, generator=gen), dim=-1)
    hidden = torch.randn(2, SEG, 32, generator=gen)
    before, _ = model.write(slots, hidden, None)
    for j in range(SLOTS):
        perturbed = slots.clone()
        perturbed[:, j] = F.normalize(torch.randn(2, 32, generator=gen), dim=-1)
        after, _ = model.write(perturbed, hidden, None)
        others = [i for i in range(SLOTS) if i != j]
        torch.testing.assert_close(after[:, others], before[:, others], rtol=0, atol=0)
        assert not torch.allclose(after[:, j], before[:, j])
    # The same, as a Jacobian: d slot_i / d slot_j == 0 for i != j.
    jacobian = torch.autograd.functional.jacobian(
        lambda s: model.write(s, hidden[:1], None)[0], slots[:1]
    )  # (1, k, d, 1, k, d)
    blocks = jacobian[0, :, :, 0].abs().sum(dim=(1, 3))  # (k, k)
    assert (blocks.diagonal() > 0).all()
    assert (blocks - torch.diag(blocks.diagonal())).abs().max() == 0


def test_writer_keeps_the_raw_slot_as_its_own_value() -> None:
    """Without BMN, and with all attention on itself, a slot is copied unchanged."""
    model = memformer(use_forgetting=False).eval()
    assert model.writer is not None
    with torch.no_grad():  # a huge self score: the retention gate closes on the slot itself
        model.writer.k_proj.weight.copy_(torch.eye(32) * 30)
        model.writer.q_proj.weight.copy_(torch.eye(32) * 30)
    gen = torch.Generator().manual_seed(4)
    slots = torch.randn(2, SLOTS, 32, generator=gen) * 3
    hidden = torch.randn(2, SEG, 32, generator=gen) * 0.01
    written, attention = model.write(slots, hidden, None)
    assert attention[..., 0].min() > 0.999
    torch.testing.assert_close(written, slots, rtol=1e-3, atol=1e-2)


def test_write_attention_shape_and_rows_sum_to_one() -> None:
    model = memformer().eval()
    memory = after_one_segment(model, 2, length=5)  # previous segment of 5 tokens
    out = model.step(tokens(2, SEG), memory)
    attention = out.aux["write_attention"]
    assert attention.shape == (2, HEADS, SLOTS, 1 + SEG)
    assert not attention.requires_grad
    torch.testing.assert_close(attention.sum(-1), torch.ones(2, HEADS, SLOTS))
    assert (attention[..., 1 + 5 :] == 0).all()  # padding of the previous segment
    assert (attention[..., 1 : 1 + 5] > 0).all()


def test_temperature_sharpens_the_write_attention() -> None:
    """log(a_j / a_self) scales exactly with 1 / temperature."""
    sharp = memformer(write_temperature=0.5).eval()
    flat = memformer(write_temperature=1.0).eval()
    flat.load_state_dict(sharp.state_dict())
    memory = after_one_segment(sharp)
    x = tokens(2, SEG, seed=9)
    a_sharp = sharp.step(x, memory).aux["write_attention"][..., : 1 + SEG]
    a_flat = flat.step(x, memory).aux["write_attention"][..., : 1 + SEG]
    log_ratio_sharp = a_sharp.log() - a_sharp[..., :1].log()
    log_ratio_flat = a_flat.log() - a_flat[..., :1].log()
    torch.testing.assert_close(log_ratio_sharp, 2 * log_ratio_flat, rtol=1e-4, atol=1e-5)

    def entropy(a: torch.Tensor) -> torch.Tensor:
        return -(a * a.log()).sum(-1).mean()

    assert entropy(a_sharp) < entropy(a_flat)


# --------------------------------------------------------------------------- ablations


def test_without_memory_there_is_no_reader_writer_or_bias() -> None:
    model = memformer(use_memory=False).eval()
    names = [n for n, _ in model.named_parameters()]
    assert model.writer is None and model.slot_bias is None and model.initial_slots is None
    assert not any(n.startswith("encoder.") and "cross" in n for n in names)
    assert not any("writer" in n for n in names)
    assert not model.memory_carries_grad
    full = memformer()
    assert model.num_parameters() < full.num_parameters()
    memory = model.init_memory(2)
    for seed in (1, 2, 3):
        out = model.step(tokens(2, SEG, seed=seed), memory)
        assert out.memory.slots is memory.slots  # passed through unchanged
        assert "write_attention" not in out.aux
        memory = out.memory
    # The decoder still sees the previous segment (through H), never the slots.
    x = tokens(2, SEG, seed=4)
    other_prev = memory._replace(prev_tokens=tokens(2, SEG, seed=5))
    assert not torch.allclose(model.step(x, memory).logits, model.step(x, other_prev).logits)
    other_slots = memory._replace(slots=torch.randn_like(memory.slots))
    torch.testing.assert_close(model.step(x, memory).logits, model.step(x, other_slots).logits)


def test_without_forgetting_there_is_no_bmn_and_a_learned_initial_memory() -> None:
    model = memformer(use_forgetting=False).eval()
    assert model.slot_bias is None and isinstance(model.initial_slots, torch.nn.Parameter)
    assert model.writer is not None
    memory = model.init_memory(2)
    torch.testing.assert_close(memory.slots[0], model.initial_slots.detach())
    written = after_one_segment(model).slots
    assert not torch.allclose(written.norm(dim=-1), torch.ones(2, SLOTS))  # not normalized
    # The initial memory learns, with the same gradient under full BPTT and MRBP.
    x = tokens(2, 3 * SEG + 1)
    got = {}
    for strategy in ("full", "mrbp"):
        model.zero_grad()
        rollout(
            model, x[:, :-1], x[:, 1:], model.init_memory(2), loss_fn=lm_loss, strategy=strategy
        )
        assert model.initial_slots.grad is not None
        got[strategy] = model.initial_slots.grad.clone()
    assert got["full"].abs().max() > 0
    torch.testing.assert_close(got["full"], got["mrbp"], rtol=1e-4, atol=1e-6)


def test_one_slot_and_temperature_one_are_plain_configs() -> None:
    model = memformer(memory_slots=1, write_temperature=1.0).eval()
    memory = after_one_segment(model)
    assert memory.slots.shape == (2, 1, 32)
    torch.testing.assert_close(memory.slots.norm(dim=-1), torch.ones(2, 1))


# --------------------------------------------------------------------------- decoder


def test_decoder_never_reads_the_memory() -> None:
    model = memformer().eval()
    x = tokens(2, SEG, seed=3)
    # At the start (prev_len 0) the logits do not depend on the slots at all.
    start = model.init_memory(2)
    scrambled = start._replace(slots=torch.randn_like(start.slots))
    torch.testing.assert_close(model.step(x, start).logits, model.step(x, scrambled).logits)
    # With a previous segment the slots reach the logits, but only through H: the decoder
    # cross-attends to the encoder output (segment_len positions, only the L_prev of the
    # previous segment unmasked), never to the k slots.
    memory = after_one_segment(model, length=5)
    contexts: list[tuple[int, list[int]]] = []
    hooks = [
        block.cross_attn.register_forward_hook(
            lambda _m, _a, kwargs, _o: contexts.append(
                (kwargs["context"].shape[1], kwargs["mask"].sum(-1).flatten().tolist())
            ),
            with_kwargs=True,
        )
        for block in model.decoder
    ]
    changed = memory._replace(slots=torch.randn_like(memory.slots))
    logits = model.step(x, memory).logits
    for hook in hooks:
        hook.remove()
    assert model.config.memory_slots != SEG
    assert contexts == [(SEG, [5, 5])] * len(model.decoder)
    assert not torch.allclose(logits, model.step(x, changed).logits)


def test_first_logit_predicts_the_second_token() -> None:
    """Causal decoder over the real tokens: position i sees tokens[:, :i+1] only."""
    model = memformer().eval()
    memory = after_one_segment(model)
    x = tokens(2, SEG, seed=3)
    y = x.clone()
    y[:, 4:] = (y[:, 4:] + 1) % VOCAB
    torch.testing.assert_close(
        model.step(x, memory).logits[:, :4], model.step(y, memory).logits[:, :4]
    )


@pytest.mark.parametrize("second_len", [SEG, 5])
def test_mixed_batch_equals_rows_run_separately(second_len: int) -> None:
    """Row 0 at the start of a stream, row 1 with a previous segment, row 2 a shorter one."""
    model = memformer().eval()
    start = model.init_memory(1)
    full_prev = after_one_segment(model, 1)
    short_prev = rows(after_one_segment(model, 2, length=second_len), [1])
    mixed = cat(start, full_prev, short_prev)
    x = tokens(3, SEG, seed=12)
    together = model.step(x, mixed)
    for i, alone_memory in enumerate((start, full_prev, short_prev)):
        alone = model.step(x[i : i + 1], alone_memory)
        torch.testing.assert_close(together.logits[i : i + 1], alone.logits, rtol=1e-5, atol=1e-5)
        for a, b in zip(memory_leaves(together.memory), memory_leaves(alone.memory)):
            torch.testing.assert_close(a[i : i + 1], b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            together.aux["write_attention"][i : i + 1],
            alone.aux["write_attention"],
            rtol=1e-5,
            atol=1e-6,
        )
    # And without the start row (every row has a previous segment, of two lengths).
    both = cat(full_prev, short_prev)
    pair = model.step(x[1:], both)
    torch.testing.assert_close(pair.logits, together.logits[1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pair.memory.slots, together.memory.slots[1:], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize(
    "overrides", [{}, {"use_forgetting": False}, {"use_memory": False}], ids=str
)
def test_mrbp_rollout_4_with_dropout_equals_full_bptt(overrides: dict[str, object]) -> None:
    model = memformer(dropout=0.1, **overrides).train()
    x = tokens(2, 4 * SEG + 1)
    inputs, targets = x[:, :-1], x[:, 1:]
    results, gradients = {}, {}
    for strategy in ("full", "mrbp"):
        model.zero_grad()
        torch.manual_seed(11)
        results[strategy] = rollout(
            model, inputs, targets, model.init_memory(2), loss_fn=lm_loss, strategy=strategy
        )
        gradients[strategy] = grads(model)
    torch.testing.assert_close(results["mrbp"].loss, results["full"].loss)
    assert gradients["full"].keys() == gradients["mrbp"].keys()
    if model.writer is not None:
        assert any("writer" in name for name in gradients["full"])  # reached through memory
    worst = max(
        (gradients["full"][n] - gradients["mrbp"][n]).abs().max().item() for n in gradients["full"]
    )
    assert worst <= 1e-5, f"MRBP differs from full BPTT by {worst:.2e}"


def test_truncation_cuts_the_gradient_through_the_slots() -> None:
    """Segment t's slots are read by segment t+1's encoder: detaching them changes grads.

    The writer's output is read only by the next segment, so with truncation every
    segment the writer gets no gradient at all.
    """
    model = memformer().train()
    x = tokens(2, 3 * SEG + 1)
    got = {}
    for strategy in ("full", "truncated"):
        model.zero_grad()
        rollout(
            model,
            x[:, :-1],
            x[:, 1:],
            model.init_memory(2),
            loss_fn=lm_loss,
            strategy=strategy,
            truncate=1,
        )
        got[strategy] = grads(model)
    assert any("writer" in name for name in got["full"])
    assert not any("writer" in name or name == "slot_bias" for name in got["truncated"])
    shared = got["full"].keys() & got["truncated"].keys()
    assert any(not torch.allclose(got["full"][n], got["truncated"][n]) for n in shared)


def test_advance_runs_encoder_and_writer_but_not_the_decoder() -> None:
    model = memformer().eval()
    calls = {"decoder": 0, "encoder": 0, "writer": 0}

    def counter(name: str) -> Callable[..., None]:
        def hook(*_: object) -> None:
            calls[name] += 1

        return hook

    for block in model.decoder:
        block.register_forward_hook(counter("decoder"))
    for block in model.encoder:
        block.register_forward_hook(counter("encoder"))
    assert model.writer is not None
    model.writer.register_forward_hook(counter("writer"))
    memory = after_one_segment(model)
    calls.update(decoder=0, encoder=0, writer=0)
    x = tokens(2, SEG, seed=5)
    advanced = model.advance(x, memory)
    assert calls == {"decoder": 0, "encoder": len(model.encoder), "writer": 1}
    stepped = model.step(x, memory).memory
    for a, b in zip(memory_leaves(advanced), memory_leaves(stepped)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_advance_uses_the_rng_like_step() -> None:
    """Under the same seed, advance's memory equals step's even with dropout on."""
    model = memformer(dropout=0.3).train()
    memory = after_one_segment(model)
    x = tokens(2, SEG, seed=5)
    torch.manual_seed(3)
    stepped = model.step(x, memory).memory.slots
    torch.manual_seed(3)
    advanced = model.advance(x, memory).slots
    torch.testing.assert_close(advanced, stepped, rtol=0, atol=0)
    torch.manual_seed(4)
    assert not torch.allclose(model.advance(x, memory).slots, stepped)


def test_context_positions_make_scores_depend_on_the_distance_only() -> None:
    """With ``context_positions`` the cross-attention score of query i and H's key j sees
    the distance prev_len - j + i: rotating the queries to prev_len + i and the keys to j
    (the unaligned positions) gives the same decoder output as the model's tables."""
    model = memformer(context_positions=True).eval()
    memory = after_one_segment(model, batch=3)
    memory = memory._replace(prev_len=torch.tensor([SEG, 5, 1]))
    segment = tokens(3, SEG, seed=3)
    with torch.no_grad():
        logits = model.step(segment, memory).logits
        depths, _, _, keys = model._critical_path(memory)
        context, context_mask = model._decoder_context(depths[-1], keys, memory.prev_len)
        rows = []
        for row, prev in enumerate(memory.prev_len.tolist()):
            q_tables = model.rotary(torch.arange(prev, prev + SEG))
            k_tables = model.rotary(torch.arange(SEG))
            x = model.embed_tokens(segment[row : row + 1])
            for block in model.decoder:
                x = block(
                    x,
                    is_causal=True,
                    rotary=model.rotary(torch.arange(SEG)),
                    context=context[row : row + 1],
                    context_mask=context_mask[row : row + 1],
                    context_rotary=(*q_tables, *k_tables),
                )
            rows.append(model.logits(x))
    torch.testing.assert_close(logits, torch.cat(rows), atol=1e-5, rtol=1e-5)


def test_context_positions_change_what_the_decoder_reads() -> None:
    """The same weights with and without positions in the cross-attention give different
    logits after a previous segment, and equal ones at the start of a stream (one key)."""
    with_positions = memformer(context_positions=True).eval()
    without = memformer().eval()
    without.load_state_dict(with_positions.state_dict())
    memory = after_one_segment(without)
    segment = tokens(2, SEG, seed=4)
    with torch.no_grad():
        moved = with_positions.step(segment, memory).logits - without.step(segment, memory).logits
        fresh = with_positions.init_memory(2)
        start = with_positions.step(segment, fresh).logits - without.step(segment, fresh).logits
    assert moved.abs().max() > 1e-3
    assert start.abs().max() == 0


def test_joint_read_uses_the_previous_segment_and_nothing_at_a_stream_start() -> None:
    """``context_attention='joint'``: no cross-attention; the segment's logits change with
    the previous segment, and with the previous encoding hidden (``context_masked``) they
    equal a fresh stream's, where the self-attention reads no prefix."""
    model = memformer(context_attention="joint").eval()
    assert model.null_context is None
    assert not any("cross_attn" in name for name, _ in model.decoder.named_parameters())
    memory = after_one_segment(model)
    other = memory._replace(prev_tokens=tokens(2, SEG, seed=11))
    segment = tokens(2, SEG, seed=4)
    with torch.no_grad():
        read = model.step(segment, memory).logits
        changed = model.step(segment, other).logits
        fresh = model.step(segment, model.init_memory(2)).logits
        model.set_diagnostic("context_masked")
        masked = model.step(segment, memory).logits
    assert (read - changed)[:, 0].abs().max() > 1e-3  # the first token reads H
    torch.testing.assert_close(masked, fresh)


def test_joint_read_prefix_positions_sit_just_before_the_segment() -> None:
    """A previous segment of p tokens is read at positions -p .. -1: the same logits as a
    decoder whose tables put H at 0 .. p-1 and the segment at p .. p+L-1 (relative)."""
    model = memformer(context_attention="joint").eval()
    memory = after_one_segment(model, batch=2)._replace(prev_len=torch.tensor([SEG, 3]))
    segment = tokens(2, SEG, seed=3)
    with torch.no_grad():
        logits = model.step(segment, memory).logits
        hidden = model._critical_path(memory)[0][-1]  # H, the encoder's last depth
        rows = []
        for row, prev in enumerate(memory.prev_len.tolist()):
            x = model.embed_tokens(segment[row : row + 1])
            for block in model.decoder:
                x = block(
                    x,
                    rotary=model.rotary(torch.arange(prev, prev + SEG)),
                    prefix=hidden[row : row + 1],
                    prefix_mask=(torch.arange(SEG) < prev)[None, None, None, :],
                    prefix_rotary=tuple(t[None, None] for t in model.rotary(torch.arange(SEG))),
                )
            rows.append(model.logits(x))
    torch.testing.assert_close(logits, torch.cat(rows), atol=1e-5, rtol=1e-5)


def test_layered_read_gives_each_decoder_block_its_encoder_depth() -> None:
    """``context_depth='layered'``: decoder block l reads the encoder's stream at depth
    round(l * E / (D - 1)): the previous segment's embeddings for the first block, H for
    the last; the logits equal a decoder fed those prefixes by hand."""
    model = memformer(
        context_attention="joint", context_depth="layered", encoder_layers=2, decoder_layers=3
    ).eval()
    assert model.context_depths == (0, 1, 2)
    assert memformer(
        context_attention="joint", encoder_layers=2, decoder_layers=3
    ).context_depths == (2, 2, 2)
    deeper = memformer(
        context_attention="joint", context_depth="layered", encoder_layers=2, decoder_layers=4
    )
    assert deeper.context_depths == (0, 1, 1, 2)
    aligned = memformer(
        context_attention="joint", context_depth="aligned", encoder_layers=2, decoder_layers=4
    )
    assert aligned.context_depths == (0, 1, 2, 2)
    memory = after_one_segment(model, batch=2)
    segment = tokens(2, SEG, seed=3)
    with torch.no_grad():
        logits = model.step(segment, memory).logits
        depths = model._critical_path(memory)[0]
        torch.testing.assert_close(depths[0], model.embed_tokens(memory.prev_tokens))
        x = model.embed_tokens(segment)
        for block, depth in zip(model.decoder, (0, 1, 2), strict=True):
            x = block(
                x,
                is_causal=True,
                rotary=model.rotary(torch.arange(SEG)),
                prefix=depths[depth],
                prefix_mask=torch.ones(2, 1, 1, SEG, dtype=torch.bool),
                prefix_rotary=tuple(t[None, None] for t in model.rotary(torch.arange(-SEG, 0))),
            )
        expected = model.logits(x)
        last = memformer(context_attention="joint", encoder_layers=2, decoder_layers=3).eval()
        last.load_state_dict(model.state_dict())
        other = last.step(segment, memory).logits
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    assert (logits - other).abs().max() > 1e-3  # the same weights read other depths


def test_layered_depth_needs_the_joint_read() -> None:
    with pytest.raises(ConfigError, match="context_depth='layered' needs"):
        memformer(context_depth="layered")


def test_context_positions_are_for_the_cross_attention_only() -> None:
    with pytest.raises(ConfigError, match="context_positions is for context_attention='cross'"):
        memformer(context_attention="joint", context_positions=True)
