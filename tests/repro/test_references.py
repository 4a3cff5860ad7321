"""The bare-model references of repro pretrained: what they read is what they are said to."""

from __future__ import annotations

import torch

from memtx.data.tasks import TaskSample
from memtx.recurrence import stream
from memtx.repro.references import BareLM, LastSegment
from tests.pretrained_models import needs_peft

pytestmark = needs_peft


def _tiny_hf():
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(config).eval()


def test_the_bare_model_reads_each_segment_alone_or_the_whole_input_at_once() -> None:
    hf = _tiny_hf()
    tokens = torch.randint(0, 50, (2, 24), generator=torch.Generator().manual_seed(1))
    whole = BareLM(hf, vocab_size=50, segment_len=24)
    alone = BareLM(hf, vocab_size=50, segment_len=8)
    with torch.no_grad():
        full = torch.cat([o.logits for _, o in stream(whole, tokens, whole.init_memory(2))], 1)
        parts = [o.logits for _, o in stream(alone, tokens, alone.init_memory(2))]
        assert torch.allclose(full, hf(input_ids=tokens).logits, atol=1e-5)
        # each segment of 8 is read with nothing before it
        assert torch.allclose(parts[2], hf(input_ids=tokens[:, 16:]).logits, atol=1e-5)
        assert not torch.allclose(parts[2], full[:, 16:], atol=1e-3)


class _Fixed:
    def sample(self, batch_size: int, *, generator: torch.Generator) -> TaskSample:
        inputs = torch.arange(10).repeat(batch_size, 1)
        targets = torch.full_like(inputs, -100)
        targets[:, -1] = 7
        return TaskSample(inputs, targets, targets != -100)


def test_the_last_segment_keeps_the_answer_and_drops_the_rest() -> None:
    cut = LastSegment(_Fixed(), 4).sample(3, generator=torch.Generator())
    assert cut.inputs.shape == (3, 4) and cut.inputs[0].tolist() == [6, 7, 8, 9]
    assert cut.targets[:, -1].tolist() == [7, 7, 7] and int(cut.answer_mask.sum()) == 3
