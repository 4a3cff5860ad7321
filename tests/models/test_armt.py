"""ARMT: the feature map, the delta rule against a hand-written reference, resets, both
backbones (GPT-2 and Llama), MRBP == full BPTT with dropout, checkpoints, numerics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import memtx
from memtx.errors import ConfigError, DataError
from memtx.evaluate import evaluate_tokens
from memtx.models.armt import ARMT, EPS, ARMTMemory, dpfp
from memtx.models.protocol import memory_leaves, select_rows
from memtx.recurrence import rollout
from tests.models.small import HAS_TRANSFORMERS, SMALL, small_model, tokens

VOCAB, SEG, M, D, LAYERS = 32, 8, 4, 32, 2
needs_hf = pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers is not installed")
BACKBONES = ["armt", pytest.param("armt_hf", marks=needs_hf)]
ALL_BACKBONES = [*BACKBONES, pytest.param("armt_llama", marks=needs_hf)]


def model_of(key: str, **overrides: object) -> ARMT:
    if key == "armt_llama":
        key, overrides = "armt_hf", {"hf_model_type": "llama", **overrides}
    model = small_model(key, **overrides)  # W_v made random: every path carries signal
    assert isinstance(model, ARMT)
    return model.eval()


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")


def walk(model: ARMT, x: torch.Tensor, memory: ARMTMemory) -> tuple[list[torch.Tensor], ARMTMemory]:
    logits = []
    for start in range(0, x.shape[1], SEG):
        out = model.step(x[:, start : start + SEG], memory)
        logits.append(out.logits)
        memory = out.memory
    return logits, memory


# --------------------------------------------------------------------------- the mechanism


def test_dpfp_is_the_authors_feature_map() -> None:
    x = torch.randn(3, 5, 4)
    for nu in (1, 3):
        # modeling_amt/language_modeling.py, written out as there
        doubled = torch.cat([F.relu(x), F.relu(-x)], dim=-1)
        rolled = torch.cat([doubled.roll(shifts=j, dims=-1) for j in range(1, nu + 1)], dim=-1)
        expected = torch.cat([doubled] * nu, dim=-1) * rolled
        got = dpfp(x, nu)
        assert got.shape == (3, 5, 2 * nu * 4) and bool((got >= 0).all())
        torch.testing.assert_close(got, expected)


def reference_write(layer, h, A, z, fresh):
    """The write of one layer, memory token by memory token (no batched products)."""
    A_new, z_new = A.clone(), z.clone()
    for row in range(h.shape[0]):
        for i in range(h.shape[1]):
            k = dpfp(layer.key(h[row, i]), layer.nu)  # (d_key,)
            v = layer.value(h[row, i])
            b = torch.sigmoid(layer.gate(h[row, i]))
            v_old = (k @ A[row]) / (z[row] @ k + EPS)  # the state before this segment
            g = (
                1.0
                if fresh[row]
                else float(torch.clip(1 - (z[row] @ k + EPS) / (k @ k + EPS), 0, 1))
            )
            A_new[row] += b * torch.outer(k, v - v_old)
            z_new[row] += g * k
    return A_new, z_new


def test_batched_read_and_write_equal_the_reference_token_by_token() -> None:
    layer = model_of("armt").associative[0]
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(2, M, D, generator=gen)
    k_dim = 2 * 3 * 4
    A, z = torch.randn(2, k_dim, D, generator=gen), torch.rand(2, k_dim, generator=gen)
    fresh = torch.tensor([False, True])
    A[1], z[1] = 0.0, 0.0  # a fresh row holds nothing
    with torch.no_grad():
        write = layer.write(h, A, z, fresh=fresh)
        A_ref, z_ref = reference_write(layer, h, A, z, fresh)
        torch.testing.assert_close(write.A, A_ref)
        torch.testing.assert_close(write.z, z_ref)
        stream = torch.randn(2, 5, D, generator=gen)
        q = dpfp(layer.query(stream), layer.nu)  # (B, T, d_key)
        expected = stream + torch.stack(
            [(q[r] @ A[r]) / (q[r] @ z[r] + EPS)[:, None] for r in range(2)]
        )
        torch.testing.assert_close(layer.read(stream, A, z), expected)
    assert float(write.correction[1]) == 1.0  # the first segment adds its keys in full


@pytest.mark.parametrize("key", ALL_BACKBONES)
def test_first_segment_is_the_backbone_alone(key: str) -> None:
    # Tokens come before the memory tokens and read an empty state: the plain LM's logits.
    model, x = model_of(key), tokens(2, SEG)
    with torch.no_grad():
        got = model.step(x, model.init_memory(2)).logits
        causal = torch.ones(SEG, SEG, dtype=torch.bool).tril()
        plain = model.backbone.run(
            model.backbone.embed(x), mask=causal, positions=torch.arange(SEG)
        )
    torch.testing.assert_close(got, plain.logits)


@pytest.mark.parametrize("key", ALL_BACKBONES)
def test_logits_depend_on_the_previous_segment_through_the_memory(key: str) -> None:
    model, x = model_of(key), tokens(2, SEG, seed=2)
    with torch.no_grad():
        one = model.step(tokens(2, SEG, seed=3), model.init_memory(2)).memory
        other = model.step(tokens(2, SEG, seed=4), model.init_memory(2)).memory
        assert not torch.allclose(model.step(x, one).logits, model.step(x, other).logits)
    assert one.A.shape == (LAYERS, 2, 24, D) and one.z.shape == (LAYERS, 2, 24)
    assert one.A.dtype == torch.float32 and not bool(one.reset.any())


@pytest.mark.parametrize("key", BACKBONES)
def test_mixed_resets_in_one_batch_restart_only_their_rows(key: str) -> None:
    model, first, second = model_of(key), tokens(2, SEG, seed=5), tokens(2, SEG, seed=6)
    with torch.no_grad():
        carried = model.step(first, model.init_memory(2)).memory
        mixed = carried._replace(reset=torch.tensor([True, False]))
        got = model.step(second, mixed)
        fresh = model.step(second[:1], model.init_memory(1))
        kept = model.step(second[1:], select_rows(carried, 1, 2))
    torch.testing.assert_close(got.logits[:1], fresh.logits)
    torch.testing.assert_close(got.logits[1:], kept.logits)
    for a, b, c in zip(
        memory_leaves(got.memory), memory_leaves(fresh.memory), memory_leaves(kept.memory)
    ):
        torch.testing.assert_close(select_rows(a, 0, 1) if a.dim() == 1 else a[:, :1], b)
        torch.testing.assert_close(select_rows(a, 1, 2) if a.dim() == 1 else a[:, 1:], c)


@pytest.mark.parametrize("key", BACKBONES)
def test_partial_segment_logits_are_a_prefix_of_the_full_segment(key: str) -> None:
    model, x = model_of(key), tokens(2, SEG)
    with torch.no_grad():
        memory = model.step(tokens(2, SEG, seed=9), model.init_memory(2)).memory
        full = model.step(x, memory).logits
        torch.testing.assert_close(model.step(x[:, :5], memory).logits, full[:, :5])


# --------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("key", ALL_BACKBONES)
def test_mrbp_equals_full_bptt_with_dropout(key: str) -> None:
    model = model_of(key, dropout=0.2).train()
    x = tokens(2, 5 * SEG + 1)
    grads = {}
    for strategy in ("full", "mrbp"):
        model.zero_grad()
        torch.manual_seed(3)
        rollout(
            model, x[:, :-1], x[:, 1:], model.init_memory(2), loss_fn=lm_loss, strategy=strategy
        )
        grads[strategy] = {
            n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
        }
    assert any(n.startswith("associative.0.value") for n in grads["full"])
    worst = max((grads["full"][n] - grads["mrbp"][n]).abs().max().item() for n in grads["full"])
    print(f"{key}: MRBP vs full max abs difference {worst:.2e}")
    assert worst <= 1e-5


def test_streamed_evaluation_equals_the_driver_over_the_whole_input() -> None:
    model = model_of("armt")
    data = np.random.default_rng(0).integers(0, VOCAB, size=2 * 37).astype(np.uint16)
    result = evaluate_tokens(model, data, rows=2)
    grid = torch.from_numpy(data.astype(np.int64)).view(2, 37)
    with torch.no_grad():
        whole = rollout(
            model,
            grid[:, :-1],
            grid[:, 1:],
            model.init_memory(2),
            loss_fn=lm_loss,
            backward=False,
        )
    assert result.tokens == 72
    assert np.isclose(result.loss, float(whole.loss) / 72, rtol=1e-5)


@pytest.mark.parametrize("key", BACKBONES)
def test_state_dict_round_trip_gives_the_same_stream(key: str) -> None:
    model, x = model_of(key), tokens(2, 3 * SEG)
    names = set(model.state_dict())
    assert {"memory_embedding", "associative.1.value.weight", "associative.0.gate.bias"} <= names
    fresh = memtx.build("armt", **SMALL[key][1]).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        a, memory_a = walk(model, x, model.init_memory(2))
        b, memory_b = walk(fresh, x, fresh.init_memory(2))
    for left, right in zip([*a, *memory_leaves(memory_a)], [*b, *memory_leaves(memory_b)]):
        torch.testing.assert_close(left, right)


@pytest.mark.parametrize("field", ["d_mem", "nu", "memory_tokens"])
def test_sizes_below_one_are_config_errors_naming_the_field(field: str) -> None:
    with pytest.raises(ConfigError, match=rf"model\.{field} must be >= 1, got 0"):
        memtx.build("armt", **{**SMALL["armt"][1], field: 0})


def test_foreign_or_malformed_memory_is_one_line_data_error() -> None:
    model = model_of("armt")
    rmt = memtx.build("rmt", **SMALL["rmt"][1])
    memory = model.init_memory(2)
    for bad, match in [
        (rmt.init_memory(2), "armt expects a memory of type ARMTMemory"),
        (memory._replace(A=memory.A[:, :1]), "memory field A must have shape"),
        (memory._replace(z=memory.z.double()), "memory field z must have dtype"),
    ]:
        with pytest.raises(DataError, match=match) as info:
            model.step(tokens(2, SEG), bad)
        assert "\n" not in str(info.value)


@needs_hf
def test_hf_folder_round_trip_and_a_table_too_short_for_the_memory_tokens(tmp_path) -> None:
    model = model_of("armt_hf")
    model.hf.save_pretrained(tmp_path)
    loaded = model_of("armt_hf", hf_path=str(tmp_path))
    loaded.load_state_dict(model.state_dict())
    x = tokens(2, 2 * SEG)
    with torch.no_grad():
        for left, right in zip(*(walk(m, x, m.init_memory(2))[0] for m in (model, loaded))):
            torch.testing.assert_close(left, right)
    # The table holds SEG + M positions: one more token per segment needs one more.
    with pytest.raises(ConfigError, match=r"has 12 positions, but a segment needs .* = 13"):
        model_of("armt_hf", hf_path=str(tmp_path), segment_len=SEG + 1)


# --------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("correction", [True, False])
def test_a_thousand_segments_of_one_token_stay_finite(correction: bool) -> None:
    model = model_of("armt", correction=correction)
    x = torch.full((2, SEG), 7)
    memory = model.init_memory(2)
    with torch.no_grad():
        for _ in range(1000):
            out = model.step(x, memory)
            memory = out.memory
    assert torch.isfinite(out.logits).all()
    assert all(torch.isfinite(leaf).all() for leaf in memory_leaves(memory)[:2])


def test_all_zero_keys_and_queries_read_nothing_and_stay_finite() -> None:
    model, x = model_of("armt"), tokens(2, SEG)
    with torch.no_grad():
        for layer in model.associative:
            layer.key.weight.zero_()
        memory = model.step(tokens(2, SEG, seed=8), model.init_memory(2)).memory
        assert not memory.z.any() and not memory.A.any()
        plain = model.step(x, model.init_memory(2)).logits
        torch.testing.assert_close(model.step(x, memory).logits, plain)  # 0 / eps = 0
        for layer in model.associative:
            layer.query.weight.zero_()
        assert torch.isfinite(model.step(x, memory).logits).all()


@pytest.mark.parametrize("scale", [1e3, 1e5])
def test_very_large_activations_stay_finite(scale: float) -> None:
    model = model_of("armt")
    with torch.no_grad():
        model.embed.weight.mul_(scale)
        model.memory_embedding.mul_(scale)
        memory = model.init_memory(2)
        for seed in range(20):
            out = model.step(tokens(2, SEG, seed=seed), memory)
            memory = out.memory
    assert torch.isfinite(out.logits).all()
    assert all(torch.isfinite(leaf).all() for leaf in memory_leaves(memory)[:2])


def open_gates(model: ARMT, *, value_scale: float = 10.0) -> ARMT:
    """Every write gate open (b ~ 1) and a large W_v: the hardest case for the delta rule."""
    with torch.no_grad():
        for layer in model.associative:
            layer.gate.bias.fill_(10.0)
            layer.value.weight.mul_(value_scale)
    return model


def largest_A(model: ARMT, segments: int) -> list[float]:
    memory, sizes = model.init_memory(2), []
    with torch.no_grad():
        for seed in range(segments):
            memory = model.step(tokens(2, SEG, seed=seed), memory).memory
            sizes.append(memory.A.abs().amax().item())
    return sizes


@pytest.mark.parametrize("rule", ["paper", "bounded"])
def test_rewriting_one_key_four_times_at_once(rule: str) -> None:
    """Why ``write_rule="bounded"`` exists: four memory tokens with one key, written onto a
    state that already holds that key (z . k = |k|^2), make the paper's summed update
    ``A (I - 4 k k^T / |k|^2)``: A k flips sign and triples every segment. The bounded
    rule takes the step once, so what A holds for k only moves toward the new value."""
    layer = model_of("armt", write_rule=rule).associative[0]
    with torch.no_grad():
        layer.value.weight.zero_()  # v = 0: the write should erase, never amplify
        layer.gate.bias.fill_(20.0)  # b = 1
        h = torch.randn(1, 1, D, generator=torch.Generator().manual_seed(6)).expand(1, 4, D)
        k = dpfp(layer.key(h[:, :1]), layer.nu)  # (1, 1, d_key)
        A = torch.randn(1, k.shape[-1], D, generator=torch.Generator().manual_seed(7))
        z, held = k[:, 0].clone(), []
        for _ in range(5):
            written = layer.write(h, A, z, fresh=torch.zeros(1, dtype=torch.bool))
            A, z = written.A, written.z
            held.append(torch.bmm(k, A).norm().item())
    if rule == "paper":
        assert held[-1] > 50 * held[0]
    else:
        assert held[-1] <= held[0] + 1e-6


@pytest.mark.parametrize("seed", range(5))
def test_the_bounded_write_keeps_A_bounded_with_every_gate_open(seed: int) -> None:
    torch.manual_seed(seed)
    model = open_gates(model_of("armt_bounded"))
    sizes = largest_A(model, 1000)
    assert np.isfinite(sizes).all()
    assert max(sizes[100:]) < 10 * max(sizes[:100])


def bounded_layer(m: int = 1, *, bias: float = 0.3):  # b = sigmoid(0.3) ~ 0.57
    layer = model_of("armt_bounded", memory_tokens=m).associative[0]
    with torch.no_grad():
        layer.gate.bias.fill_(bias)
    return layer


def test_the_bounded_write_of_one_key_interpolates_its_read_exactly() -> None:
    layer, gen = bounded_layer(), torch.Generator().manual_seed(4)
    d_key = 2 * layer.nu * layer.key.out_features
    A, z = torch.randn(2, d_key, D, generator=gen), torch.rand(2, d_key, generator=gen)
    h = 5 * torch.randn(2, 1, D, generator=gen)  # |k|^2 >> eps: exact up to the guard
    with torch.no_grad():
        after = layer.write(h, A, z, fresh=torch.zeros(2, dtype=torch.bool))
        k = dpfp(layer.key(h), layer.nu)  # (2, 1, d_key)
        v, b = layer.value(h), torch.sigmoid(layer.gate(h))
        before = torch.bmm(k, A) / (torch.bmm(k, after.z.unsqueeze(-1)) + EPS)  # under z'
        read = torch.bmm(k, after.A) / (torch.bmm(k, after.z.unsqueeze(-1)) + EPS)
    torch.testing.assert_close(read, (1 - b) * before + b * v, rtol=1e-4, atol=1e-4)


def test_the_bounded_write_of_m_copies_of_one_key_is_one_write() -> None:
    one, four = bounded_layer(1, bias=20.0), bounded_layer(4, bias=20.0)  # b = 1
    four.load_state_dict(one.state_dict())
    h = torch.randn(2, 1, D, generator=torch.Generator().manual_seed(5))
    A, z = torch.zeros(2, 2 * 3 * 4, D), torch.zeros(2, 2 * 3 * 4)  # d_key = 2 nu d_mem
    fresh = torch.ones(2, dtype=torch.bool)
    with torch.no_grad():
        q = dpfp(one.query(h), one.nu)
        reads = []
        for layer, copies in ((one, h), (four, h.expand(2, 4, D))):
            written = layer.write(copies, A, z, fresh=fresh)
            reads.append(torch.bmm(q, written.A) / (torch.bmm(q, written.z.unsqueeze(-1)) + EPS))
    torch.testing.assert_close(reads[1], reads[0], rtol=1e-4, atol=1e-5)


def test_the_read_floor_leaves_written_keys_alone_and_bounds_unwritten_directions() -> None:
    plain = model_of("armt").associative[0]
    floored = model_of("armt", read_floor=True).associative[0]
    with torch.no_grad():
        plain.query.weight.copy_(plain.key.weight)  # a query at a key's input is that key
    floored.load_state_dict(plain.state_dict())
    gen = torch.Generator().manual_seed(8)
    h = 5 * torch.randn(2, M, D, generator=gen)
    d_key = 2 * plain.nu * plain.key.out_features
    empty = torch.zeros(2, d_key, D), torch.zeros(2, d_key)
    with torch.no_grad():
        written = plain.write(h, *empty, fresh=torch.ones(2, dtype=torch.bool))
        key_in = h[:, :1]  # a written key: z . k >= |k|^2, so the floor changes nothing
        same = [layer.read(key_in, written.A, written.z) for layer in (plain, floored)]
        torch.testing.assert_close(same[1], same[0])
        # z empty where A is not: the paper's read divides by eps, the floored one by |q|^2
        A, z = torch.randn(2, d_key, D, generator=gen), torch.zeros(2, d_key)
        q_in = torch.randn(2, 3, D, generator=gen)
        wild, tame = ((layer.read(q_in, A, z) - q_in).abs().amax() for layer in (plain, floored))
        q = dpfp(floored.query(q_in), floored.nu)
        bound = (A.flatten(1).norm(dim=1).amax() / q.norm(dim=-1).amin()).item()
    assert tame <= bound < wild


def test_gate_bias_starts_the_writes_closed() -> None:
    x = tokens(2, SEG)
    with torch.no_grad():
        default = model_of("armt").step(x, model_of("armt").init_memory(2)).aux["write_gate"]
        closed_model = memtx.build(SMALL["armt"][0], **{**SMALL["armt"][1], "gate_bias": -4.0})
        closed = closed_model.step(x, closed_model.init_memory(2)).aux["write_gate"]
    assert closed.max() < 0.05 < default.min()


def test_bf16_autocast_keeps_the_state_in_float32() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model_of("armt").to(device)
    memory, x = model.init_memory(2), tokens(2, SEG).to(device)
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
        for _ in range(3):
            out = model.step(x, memory)
            memory = out.memory
    assert memory.A.dtype == torch.float32 and memory.z.dtype == torch.float32
    assert torch.isfinite(out.logits.float()).all()
    with torch.no_grad():  # the same numbers, near enough, without autocast
        _, exact = walk(model, torch.cat([x] * 3, dim=1), model.init_memory(2))
    torch.testing.assert_close(memory.z, exact.z, rtol=0.05, atol=1e-4)


def test_state_size_per_stream() -> None:
    model = memtx.build("armt", d_model=256, n_layers=6, n_heads=4, memory_tokens=16, d_mem=64)
    memory = model.init_memory(1)
    floats = sum(leaf.numel() for leaf in memory_leaves(memory)[:2])
    assert floats == 6 * 384 * 256 + 6 * 384  # A + z: 2313 KiB in float32
