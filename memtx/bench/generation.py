"""Streaming generation: tokens/s and resident memory do not depend on how much is generated.

Generates with :class:`memtx.generate.Generation` (greedy, batch 1) from the model of a
preset (random weights: speed does not depend on them) and reads the rate and the
process's RSS at checkpoints (1K, 10K, 100K new tokens by default), then decodes the
same tokens to text with :class:`memtx.generate.TextDecoder` and a stop string, so the
text path's cost per token is measured too. The previous implementation (kept every
token, decoded all of its output again for every token) can be timed beside it with
``--baseline FILE``, a copy of the old ``memtx/generate.py``.

    python -m memtx.bench.generation --config configs/demo.toml --checkpoints 1000,10000,100000
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from typing import Any

import torch

from memtx.bench.common import peak_rss_mb, reset_peak_rss
from memtx.config import load_run_config
from memtx.data.tokenizers import ByteTokenizer
from memtx.generate import Generation, Sampler, TextDecoder
from memtx.models import from_config
from memtx.reading import read, start_context

__all__ = ["measure_ceiling", "measure_interleaved", "measure_streaming", "rss_mb"]


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size of a process now, in MB (Linux ``/proc``; 0.0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def measure_streaming(
    *, config: str, checkpoints: list[int], seed: int = 0, baseline: str | None = None
) -> dict[str, Any]:
    """Rate (tokens/s) and RSS of one long greedy generation at each checkpoint."""
    torch.manual_seed(seed)
    model = from_config(load_run_config(config, overrides=[]).model).eval()
    prompt = torch.randint(0, model.config.vocab_size, (1, 16))
    context = read(model, prompt, start_context(model))
    generation = Generation(
        model, context, max_new_tokens=max(checkpoints), sampler=Sampler(temperature=0)
    )
    decoder = TextDecoder(ByteTokenizer(), stop=["\x00\x01\x02 never"])
    rows: list[dict[str, float]] = []
    done, began, last_time = 0, time.perf_counter(), time.perf_counter()
    reset_peak_rss()
    for point in sorted(checkpoints):
        for column in generation:
            decoder.push(int(column[0]) % 256)
            done += 1
            if done == point:
                break
        now = time.perf_counter()
        since = done - (rows[-1]["new_tokens"] if rows else 0)
        rows.append(
            {
                "new_tokens": done,
                "tokens_per_s_overall": round(done / (now - began), 1),
                "tokens_per_s_since_last": round(since / (now - last_time), 1),
                "rss_mb": round(rss_mb(), 1),
                "peak_rss_mb": round(peak_rss_mb(), 1),
            }
        )
        last_time = now
    result: dict[str, Any] = {"config": config, "params": model.num_parameters(), "rows": rows}
    if baseline is not None:
        result["side_by_side"] = _side_by_side(model, prompt, baseline)
    return result


def measure_interleaved(
    *, config: str, position: int, window: int = 1000, rounds: int = 5, seed: int = 0
) -> dict[str, Any]:
    """Tokens/s of a generation ``position`` tokens in against a fresh one's first ``window``.

    The long generation (and its text decoding) first runs ``position`` tokens; then
    ``window`` tokens of it and the first ``window`` tokens of a fresh generation are timed
    in alternation, ``rounds`` times, so a load that drifts on a shared machine hits both
    alike. Reported: median rates, their ratio, and the RSS before and after.
    """
    torch.manual_seed(seed)
    model = from_config(load_run_config(config, overrides=[]).model).eval()
    prompt = torch.randint(0, model.config.vocab_size, (1, 16))
    greedy = Sampler(temperature=0)

    def timed(generation: Generation, decoder: TextDecoder, count: int) -> float:
        began = time.perf_counter()
        for _, column in zip(range(count), generation):
            decoder.push(int(column[0]) % 256)
        return count / (time.perf_counter() - began)

    def fresh() -> Generation:
        context = read(model, prompt, start_context(model))
        return Generation(model, context, max_new_tokens=10**9, sampler=greedy)

    long, long_text = fresh(), TextDecoder(ByteTokenizer(), stop=["\x00\x01 never"])
    timed(long, long_text, window)
    rss_first = rss_mb()
    warm = timed(long, long_text, position - window)
    rates: dict[str, list[float]] = {"fresh": [], "long": []}
    for _ in range(rounds):
        rates["fresh"].append(timed(fresh(), TextDecoder(ByteTokenizer()), window))
        rates["long"].append(timed(long, long_text, window))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    return {
        "config": config,
        "position": position,
        "window": window,
        "warm_up_tokens_per_s": round(warm, 1),
        "fresh_tokens_per_s": round(medians["fresh"], 1),
        "long_tokens_per_s": round(medians["long"], 1),
        "long_over_fresh": round(medians["long"] / medians["fresh"], 3),
        "rss_mb": {"after_window": round(rss_first, 1), "after_all": round(rss_mb(), 1)},
        "rates": {name: [round(v, 1) for v in values] for name, values in rates.items()},
    }


def measure_ceiling(
    *, config: str, tokens: int = 1000, rounds: int = 5, seed: int = 0
) -> dict[str, Any]:
    """Generation's tokens/s at batch 1 against the fp32 ceiling of this machine.

    The ceiling is the decoding pass's matrix products alone: every ``nn.Linear`` weight
    of the model and the tied output head, each multiplied by one row once per token, with
    no attention, norms, activations or Python between them. Batch-1 decoding has to read
    every weight once per token, so no fp32 implementation can be faster than that. The two
    are timed in alternation, ``rounds`` times (medians), so a drifting load hits both.
    """
    torch.manual_seed(seed)
    model = from_config(load_run_config(config, overrides=[]).model).eval()
    weights = [m.weight.detach().t() for m in model.modules() if isinstance(m, torch.nn.Linear)]
    head: torch.nn.Embedding = getattr(model, "embed")  # noqa: B009 (SegmentModel has no embed)
    weights.append(head.weight.detach().t())  # the tied head: [d, V]
    rows = {w.shape[0]: torch.randn(1, w.shape[0]) for w in weights}
    prompt = torch.randint(0, model.config.vocab_size, (1, 16))
    greedy = Sampler(temperature=0)

    def generation_rate() -> float:
        context = read(model, prompt, start_context(model))
        began = time.perf_counter()
        for _ in Generation(model, context, max_new_tokens=tokens, sampler=greedy):
            pass
        return tokens / (time.perf_counter() - began)

    def ceiling_rate() -> float:
        began = time.perf_counter()
        for _ in range(tokens):
            for weight in weights:
                rows[weight.shape[0]] @ weight
        return tokens / (time.perf_counter() - began)

    with torch.no_grad():
        generation_rate(), ceiling_rate()  # warm-up
        rates: dict[str, list[float]] = {"generation": [], "ceiling": []}
        for _ in range(rounds):
            rates["generation"].append(generation_rate())
            rates["ceiling"].append(ceiling_rate())
    medians = {name: statistics.median(values) for name, values in rates.items()}
    megabytes = sum(w.numel() for w in weights) * 4 / 1e6
    return {
        "config": config,
        "params": model.num_parameters(),
        "matmul_weights_mb": round(megabytes, 2),
        "generation_tokens_per_s": round(medians["generation"], 1),
        "ceiling_tokens_per_s": round(medians["ceiling"], 1),
        "ceiling_over_generation": round(medians["ceiling"] / medians["generation"], 2),
        "ceiling_gb_per_s": round(megabytes * medians["ceiling"] / 1e3, 1),
        "rates": {name: [round(v, 1) for v in values] for name, values in rates.items()},
    }


def _side_by_side(model: Any, prompt: torch.Tensor, baseline: str) -> dict[str, float]:
    """tokens/s of the old ``generate`` and of :class:`Generation`, 1K tokens, alternated."""
    spec = importlib.util.spec_from_file_location("old_generate", baseline)
    assert spec is not None and spec.loader is not None
    old = importlib.util.module_from_spec(spec)
    sys.modules["old_generate"] = old  # dataclasses look their module up
    spec.loader.exec_module(old)
    greedy = Sampler(temperature=0)
    rates: dict[str, list[float]] = {"old": [], "new": []}
    for _ in range(3):
        began = time.perf_counter()
        old.generate(model, prompt, max_new_tokens=1000, sampler=old.Sampler(temperature=0))
        rates["old"].append(1000 / (time.perf_counter() - began))
        began = time.perf_counter()
        context = read(model, prompt, start_context(model))
        for _ in Generation(model, context, max_new_tokens=1000, sampler=greedy):
            pass
        rates["new"].append(1000 / (time.perf_counter() - began))
    return {name: round(max(values), 1) for name, values in rates.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/demo.toml")
    parser.add_argument("--checkpoints", default="1000,10000,100000")
    parser.add_argument("--baseline", default=None, help="a copy of the old generate.py")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--interleaved", type=int, default=0, help="position: see measure_interleaved"
    )
    parser.add_argument(
        "--ceiling", action="store_true", help="tokens/s against the matmul-only ceiling"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.ceiling:
        print(json.dumps(measure_ceiling(config=args.config)))
        return
    if args.interleaved:
        print(json.dumps(measure_interleaved(config=args.config, position=args.interleaved)))
        return
    points = [int(p) for p in args.checkpoints.split(",")]
    print(
        json.dumps(
            measure_streaming(config=args.config, checkpoints=points, baseline=args.baseline)
        )
    )


if __name__ == "__main__":
    main()
