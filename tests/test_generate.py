"""Generation: cached equals recomputation for every model, prompts of any length."""

from __future__ import annotations

import pytest
import torch

from memtx.data.tokenizers import ByteTokenizer
from memtx.errors import DataError
from memtx.generate import Generation, Sampler, TextDecoder, decode_text, generate
from memtx.reading import read, start_context
from tests.models.small import SMALL, small_model

SEG = 8


def naive_greedy(model, prompt: torch.Tensor, new: int) -> torch.Tensor:
    """Recompute the whole stream from scratch for every token: the reference."""
    seq = prompt
    with torch.no_grad():
        for _ in range(new):
            memory = model.init_memory(seq.shape[0])
            for start in range(0, seq.shape[1], SEG):
                out = model.step(seq[:, start : start + SEG], memory)
                memory = out.memory
            seq = torch.cat([seq, out.logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq


@pytest.mark.parametrize("key", list(SMALL))
@pytest.mark.parametrize("prompt_len", [1, SEG, 2 * SEG + 3])
def test_cached_generation_equals_recomputation(key: str, prompt_len: int) -> None:
    model = small_model(key).eval()
    prompt = torch.randint(0, 32, (2, prompt_len), generator=torch.Generator().manual_seed(3))
    new = 2 * SEG + 5  # crosses two segment boundaries
    expected = naive_greedy(model, prompt, new)
    for use_cache in (True, False):
        got = generate(
            model, prompt, max_new_tokens=new, sampler=Sampler(temperature=0), use_cache=use_cache
        )
        assert torch.equal(got, expected), f"use_cache={use_cache}"


def test_sampling_is_seeded_and_respects_top_k() -> None:
    model = small_model("transformer").eval()
    prompt = torch.randint(0, 32, (1, 5))
    sampler = Sampler(temperature=1.0, top_k=1)
    greedy = generate(model, prompt, max_new_tokens=10, sampler=Sampler(temperature=0))
    assert torch.equal(generate(model, prompt, max_new_tokens=10, sampler=sampler, seed=1), greedy)
    hot = Sampler(temperature=2.0, top_p=0.9)
    a = generate(model, prompt, max_new_tokens=20, sampler=hot, seed=7)
    b = generate(model, prompt, max_new_tokens=20, sampler=hot, seed=7)
    assert torch.equal(a, b)


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    sampler = Sampler(temperature=1.0, top_p=0.7)
    seen = {int(sampler(logits, torch.Generator().manual_seed(s))[0]) for s in range(200)}
    assert seen == {0, 1}


def test_stop_callback_ends_generation() -> None:
    model = small_model("transformer").eval()
    got = generate(
        model, torch.zeros(1, 3, dtype=torch.long), max_new_tokens=50, on_tokens=lambda column: True
    )
    assert got.shape == (1, 4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": -1}, "max_new_tokens must be"),
        ({"max_new_tokens": 3, "prompt": torch.zeros(1, 0, dtype=torch.long)}, "at least one"),
    ],
)
def test_bad_generation_input(kwargs: dict, message: str) -> None:
    model = small_model("transformer").eval()
    prompt = kwargs.pop("prompt", torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(DataError, match=message):
        generate(model, prompt, **kwargs)
    with pytest.raises(DataError, match="top_p"):
        Sampler(top_p=0.0)
    with pytest.raises(DataError, match="temperature"):
        Sampler(temperature=-1.0)


@pytest.mark.parametrize("key", list(SMALL))
def test_every_builtin_model_has_the_cached_path(key: str) -> None:
    # Only the Hugging Face backbone falls back to recomputing the segment.
    assert small_model(key).can_decode == (not key.endswith("_hf"))


@pytest.mark.parametrize("key", list(SMALL))
def test_cached_decoder_is_declared_and_mode_is_restored(key: str) -> None:
    model = small_model(key).train()
    decoder = model.cached_decoder()
    assert (decoder is not None) == model.can_decode
    if decoder is not None:  # the declared protocol: begin_decode, then decode
        state = decoder.begin_decode(model.eval().init_memory(1))
        logits, state = decoder.decode(torch.zeros(1, 2, dtype=torch.long), state)
        assert logits.shape == (1, 2, 32) and state.length == 2
        model.train()
    generate(model, torch.zeros(1, 3, dtype=torch.long), max_new_tokens=2)
    assert model.training  # generation runs in eval mode and gives the mode back


# --------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("key", list(SMALL))
def test_streamed_equals_returning_equals_greedy(key: str) -> None:
    model = small_model(key).eval()
    prompt = torch.randint(0, 32, (2, SEG + 3), generator=torch.Generator().manual_seed(5))
    new = 2 * SEG + 1
    expected = naive_greedy(model, prompt, new)
    returned = generate(model, prompt, max_new_tokens=new, sampler=Sampler(temperature=0))
    context = read(model, prompt, start_context(model, batch_size=2))
    streamed = list(Generation(model, context, max_new_tokens=new, sampler=Sampler(temperature=0)))
    assert torch.equal(returned, expected)
    assert torch.equal(torch.cat([prompt, torch.stack(streamed, 1)], 1), expected)


@pytest.mark.parametrize("key", ["transformer_xl", "memformer", "rmt", "armt"])
def test_a_generation_stopped_and_continued_equals_one_generation(key: str) -> None:
    # Generation.context counts the yielded tokens as read: continuing from it (even
    # across a segment boundary) gives the tokens of one longer generation.
    model = small_model(key).eval()
    greedy = Sampler(temperature=0)
    context = read(model, torch.randint(0, 32, (1, 5)), start_context(model))
    whole = list(Generation(model, context, max_new_tokens=2 * SEG, sampler=greedy))
    first = Generation(model, context, max_new_tokens=SEG - 2, sampler=greedy)
    head = list(first)
    tail = list(Generation(model, first.context, max_new_tokens=SEG + 2, sampler=greedy))
    assert torch.equal(torch.stack(head + tail), torch.stack(whole))
    assert first.context.tokens_read == 5 + SEG - 2
    assert first.context.pending.shape[1] <= SEG


def test_generation_holds_no_tokens_it_yielded() -> None:
    model = small_model("transformer").eval()
    context = read(model, torch.zeros(1, 3, dtype=torch.long), start_context(model))
    generation = Generation(model, context, max_new_tokens=10 * SEG)
    for _ in generation:
        assert generation.context.pending.shape[1] <= SEG
    assert generation.produced == 10 * SEG


def test_generation_refuses_an_empty_context() -> None:
    model = small_model("transformer").eval()
    with pytest.raises(DataError, match="at least one token"):
        Generation(model, start_context(model), max_new_tokens=3)
    with pytest.raises(DataError, match="seed"):
        Generation(model, read(model, torch.zeros(1, 2, dtype=torch.long), start_context(model)),
                   max_new_tokens=1, seed=2**70)  # fmt: skip


# --------------------------------------------------------------------------- text


def _pieces(text: str, stop: list[str]) -> list[str]:
    ids = [int(i) for i in ByteTokenizer().encode(text)]
    return list(decode_text(ids, tokenizer=ByteTokenizer(), stop=stop))


@pytest.mark.parametrize(
    ("text", "stop"),
    [
        ("héllo wörld ✓ done", []),
        ("abc\n\ndef", ["\n\n"]),
        ("a stop is aSTOSTOP here", ["STOP"]),
        ("xyz", ["zz", "yz"]),
        ("no stop at all ST", ["STOP"]),
    ],
)
def test_text_decoding_equals_decoding_the_whole(text: str, stop: list[str]) -> None:
    # Multi-byte characters split across byte tokens, stops split across pieces: the
    # pieces join to what decoding the whole text and cutting at the first stop gives.
    hits = [text.find(s) for s in stop if s in text]
    expected = text[: min(hits)] if hits else text
    pieces = _pieces(text, stop)
    assert "".join(pieces) == expected
    assert all(s not in piece for piece in pieces for s in stop)


def test_text_decoding_holds_back_only_a_possible_stop() -> None:
    decoder = TextDecoder(ByteTokenizer(), stop=["END"])
    shown = [decoder.push(b) for b in b"aEx"]
    assert shown == ["a", "", "Ex"]  # "E" waits: it may begin "END"
    assert [decoder.push(b) for b in b"EN"] == ["", ""]
    assert decoder.push(ord("D")) == "" and decoder.stopped


def test_invalid_utf8_becomes_replacement_characters() -> None:
    decoder = TextDecoder(ByteTokenizer())
    text = "".join(decoder.push(b) for b in b"a\xffb\xe2\x9c") + decoder.finish()
    assert text == "a\ufffdb\ufffd"
