"""The zero-shot reference of memtx repro pretrained: samples in words, asked, scored."""

from __future__ import annotations

import re

import pytest
import torch

from memtx.data.tasks.babilong import LABELS, BabilongTask
from memtx.data.tokenizers import PretrainedTokenizer
from memtx.repro import prompted
from tests.pretrained_models import TEXT, needs_peft, save_tiny

pytestmark = needs_peft

SEGMENT = 72  # the tiny tokenizer's qa1 story needs up to 129 tokens


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = save_tiny(tmp_path_factory.mktemp("llama"), "llama")
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    return model, PretrainedTokenizer.from_pretrained(str(folder))


def _task(tokenizer, *, background: bool, segments: int = 2) -> BabilongTask:
    noise = tokenizer.encode(TEXT * 4) if background else None
    return BabilongTask(
        total_len=segments * SEGMENT,
        segments=segments,
        segment_len=SEGMENT,
        seed=0,
        qa="qa1",
        noise=noise,
        background=background,
        tokenizer=tokenizer,
    )


@pytest.mark.parametrize("background", [False, True])
def test_questions_are_the_samples_in_words_and_answerable_from_their_facts(
    tiny, background
) -> None:
    _, tokenizer = tiny
    task = _task(tokenizer, background=background, segments=3 if background else 2)
    asked = prompted.questions(task, tokenizer, samples=6, seed=1)
    assert asked == prompted.questions(task, tokenizer, samples=6, seed=1)  # deterministic
    for q in asked:
        person = re.fullmatch(r"Where is (\w+)\?", q.question)
        assert person is not None, q.question
        assert q.target in LABELS["qa1"]
        # qa1's answer: the place of the last fact about the person, in the context
        moves = re.findall(rf"{person[1]} \w+ (?:back )?to the (\w+)\.", q.context)
        assert moves and moves[-1] == q.target, (q.context, q.target)
    if background:
        assert any("question" in q.context for q in asked)  # the background text is kept


def test_the_accuracy_is_babilongs_rule_over_the_answers(tiny, monkeypatch) -> None:
    model, tokenizer = tiny
    task = _task(tokenizer, background=False)
    asked = prompted.questions(task, tokenizer, samples=4, seed=3)
    other = next(label for label in LABELS["qa1"] if label != asked[1].target)
    replies = iter(
        [
            f"The most recent location is the {asked[0].target}.",  # right
            f"{asked[1].target} or the {other}",  # two candidates: wrong
            "I do not know.",  # none: wrong
            f"{asked[3].target.upper()}. Then the kitchen.",  # the first sentence counts
        ]
    )
    monkeypatch.setattr(prompted, "ask", lambda hf, tok, text: next(replies))
    result = prompted.prompted_accuracy(model, tokenizer, task, qa="qa1", samples=4, seed=3)
    assert result["exact_match"] == 0.5 and result["token_accuracy"] is None
    assert [e["target"] for e in result["examples"]] == [q.target for q in asked[:3]]


def _greedy(model, tokenizer, text: str, steps: int) -> str:
    """Greedy decoding by recomputation: the argmax of the whole prefix, token by token."""
    ids = torch.as_tensor(tokenizer.encode(text).astype("int64"))[None]
    for _ in range(steps):
        with torch.no_grad():
            next_id = model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_id], dim=1)
    return tokenizer.hf.decode(ids[0, -steps:].tolist(), skip_special_tokens=True)


def test_ask_is_greedy_decoding_in_the_chat_template_or_after_answer(tiny) -> None:
    model, tokenizer = tiny
    question = prompted.Question("Mary went to the garden.", "Where is Mary?", "garden")
    text = prompted.prompt(question, qa="qa1")
    assert text.startswith(prompted.INSTRUCTIONS["qa1"]) and text.endswith("Where is Mary?")
    assert "Mary went to the garden." in text
    plain = prompted.ask(model, tokenizer, text, max_new_tokens=4)
    assert plain == _greedy(model, tokenizer, f"{text}\nAnswer:", 4)
    tokenizer.hf.chat_template = "{% for m in messages %}<user>{{ m['content'] }}{% endfor %}<bot>"
    try:
        chatted = prompted.ask(model, tokenizer, text, max_new_tokens=4)
    finally:
        tokenizer.hf.chat_template = None
    assert chatted == _greedy(model, tokenizer, f"<user>{text}<bot>", 4)
