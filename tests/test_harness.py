"""memtx.harness: a memtx run as an lm-eval model, offline on local task files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from memtx.config import RunConfig
from memtx.train import train
from tests.pretrained_models import TEXT, needs_peft, save_tiny

lm_eval = pytest.importorskip("lm_eval")
pytestmark = needs_peft


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("harness")
    (root / "corpus.txt").write_text(TEXT)
    raw = {
        "model": {
            "name": "rmt",
            "backbone": "hf",
            "hf_path": str(save_tiny(root / "gpt2", "gpt2")),
            "segment_len": 8,
            "memory_tokens": 2,
        },
        "train": {"steps": 1, "batch_size": 1, "trainable": "memory"},
        "data": {"corpus": str(root / "corpus.txt"), "tokenizer": "hf"},
    }
    train(RunConfig.from_dict(raw), out_dir=root / "run", progress=False)
    return root / "run"


def test_loglikelihood_is_the_streamed_sum_over_segments(run_dir) -> None:
    from lm_eval.api.instance import Instance

    from memtx.harness import MemtxLM

    lm = MemtxLM(run_dir)
    context, continuation = "To be, or not to be, that is", " the question: whether"
    request = Instance("loglikelihood", {}, (context, continuation), 0)
    ((score, _),) = lm.loglikelihood([request])
    ids = lm.encode(context) + lm.encode(continuation)
    first = len(lm.encode(context))
    assert len(ids) > 3 * lm.model.config.segment_len  # several segments through the memory
    memory, logits = lm.model.init_memory(1), []
    with torch.no_grad():
        for start in range(0, len(ids), 8):
            out = lm.model.step(torch.tensor([ids[start : start + 8]]), memory)
            logits.append(out.logits[0])
            memory = out.memory
    logp = torch.log_softmax(torch.cat(logits), -1)
    expected = sum(float(logp[i - 1, ids[i]]) for i in range(first, len(ids)))
    assert score == pytest.approx(expected, abs=1e-4)


@pytest.mark.slow
def test_the_harness_runs_local_multiple_choice_and_generation_tasks(
    run_dir, tmp_path, monkeypatch
) -> None:
    from lm_eval.tasks import TaskManager

    from memtx.harness import MemtxLM

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    rows = [
        {
            "question": f"The key of Alice is {n}{n}. Key:",
            "choices": [" 11", " 22"],
            "answer": n - 1,
        }
        for n in (1, 2)
    ]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = (
        f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    )
    (tmp_path / "mc.yaml").write_text(
        "task: memtx_mc\n" + common + "output_type: multiple_choice\ndoc_to_text: question\n"
        "doc_to_choice: choices\ndoc_to_target: answer\nmetric_list:\n  - metric: acc\n"
    )
    (tmp_path / "gen.yaml").write_text(
        "task: memtx_gen\n" + common + "output_type: generate_until\ndoc_to_text: question\n"
        "doc_to_target: '{{choices[answer]}}'\ngeneration_kwargs:\n  until: ['\\n']\n"
        "  max_gen_toks: 3\nmetric_list:\n  - metric: exact_match\n"
    )
    results = lm_eval.simple_evaluate(
        model=MemtxLM(run_dir),
        tasks=["memtx_mc", "memtx_gen"],
        task_manager=TaskManager(include_path=str(tmp_path)),
    )
    assert 0.0 <= results["results"]["memtx_mc"]["acc,none"] <= 1.0
    assert 0.0 <= results["results"]["memtx_gen"]["exact_match,none"] <= 1.0
