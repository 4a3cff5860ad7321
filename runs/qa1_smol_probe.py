"""Bare SmolLM2 on qa1 in its own tokens: full attention vs last segment (a ceiling check)."""
import sys, time, torch
torch.set_num_threads(1)
from memtx.repro.pretrained import BareLM, LastSegment, smollm2_path
from memtx.config import RunConfig
from memtx.data import PretrainedTokenizer, prepare_data
from memtx.evaluate import evaluate_task
from memtx.models.hf import load_hf_model
from memtx.training.sources import TaskSource

path = smollm2_path()
seg = 128
run = RunConfig.from_dict({
    "model": {"name": "rmt", "memory_tokens": 8, "backbone": "hf", "hf_path": path, "segment_len": seg},
    "data": {"corpus": "shakespeare", "tokenizer": "hf"},
    "task": {"name": "babilong", "qa": "qa1", "segments": 4, "eval_samples": 8},
})
tok = PretrainedTokenizer.from_pretrained(path)
data = prepare_data(run.data, tokenizer=tok)
src = TaskSource(run.task, segment_len=seg, rows=1, rank=0, seed=0, noise=data.train, eval_noise=data.valid, tokenizer=tok)
hf = load_hf_model(run.model, positions=0).eval()
vocab = len(tok._hf)
for length in [int(x) for x in sys.argv[1:]] or [1, 4]:
    task = src.task(length, held_out=True)
    s = task.sample(1, generator=torch.Generator().manual_seed(3))
    print("sample tail:", repr(tok.decode(s.inputs[0, -60:].tolist())))
    for name, model, shown in [("full", BareLM(hf, vocab_size=vocab, segment_len=length*seg), task),
                               ("last", BareLM(hf, vocab_size=vocab, segment_len=seg), LastSegment(task, seg))]:
        t = time.perf_counter()
        with torch.no_grad():
            m = evaluate_task(model, shown, samples=24, device="cpu", seed=12345, batch_size=1 if name == "full" else 8)
        print(length, name, f"exact {m['exact_match']:.3f} tok {m['token_accuracy']:.3f} {time.perf_counter()-t:.0f}s", flush=True)
