"""Any memtx run as a model of EleutherAI's evaluation harness (``pip install memtx[eval]``).

:class:`MemtxLM` is an ``lm_eval`` ``LM``: its requests are answered by streaming the
input through the run's model segment by segment with its memory, so inputs of any
length cost one segment plus the memory:

- ``loglikelihood(context, continuation)``: the sum of the continuation tokens' log
  probabilities after the context, and whether greedy decoding would give them;
- ``loglikelihood_rolling(text)``: the text's log probability (its first token is
  conditioned on the tokenizer's end-of-text token where it has one, else not scored);
- ``generate_until(context, {"until": [...], "max_gen_toks": n})``: greedy text after the
  context, cut at the first stop string (:mod:`memtx.generate`).

So the harness's own tasks (``babilong``, ``ruler``, ...) run on memtx models::

    import lm_eval
    from memtx.harness import MemtxLM
    lm_eval.simple_evaluate(model=MemtxLM(run_dir="runs/rmt-smollm2"), tasks=["babilong"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from memtx.data import PretrainedTokenizer, load_tokenizer
from memtx.errors import ConfigError
from memtx.generate import Generation, Sampler, decode_text
from memtx.reading import read, start_context
from memtx.recurrence import stream
from memtx.train import load_trained

try:
    from lm_eval.api.model import LM
except ImportError as error:  # the optional extra
    raise ConfigError("memtx.harness needs lm-eval: pip install memtx[eval]") from error

__all__ = ["MemtxLM"]


class MemtxLM(LM):  # type: ignore[misc]
    """A trained memtx run answering ``lm_eval`` requests (see the module docstring).

    Args:
        run_dir: a run folder written by ``memtx train``.
        device: where the model runs.
        max_gen_toks: generated tokens when a request does not say.
    """

    def __init__(self, run_dir: str | Path, *, device: str = "cpu", max_gen_toks: int = 64):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.run, self.model = load_trained(self.run_dir, device=device)
        self.tokenizer = load_tokenizer(self.run_dir)
        self.max_gen_toks = max_gen_toks
        eos = self.tokenizer.eos_id if isinstance(self.tokenizer, PretrainedTokenizer) else None
        self.prefix = [eos] if eos is not None else []

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self.tokenizer.encode(text)]

    def _scores(self, ids: list[int], first: int) -> tuple[float, bool]:
        """Sum of log p(ids[i] | ids[:i]) for i >= ``first``, and whether all are greedy."""
        tokens = torch.tensor([ids], device=self.model.device)
        targets = torch.tensor([*ids[1:], -1], device=tokens.device)  # position p -> p + 1
        total, greedy = 0.0, True
        with torch.no_grad():
            for start, out in stream(self.model, tokens, self.model.init_memory(1)):
                positions = torch.arange(start, start + out.logits.shape[1])
                scored = positions[(positions + 1 >= first) & (positions + 1 < len(ids))]
                if not len(scored):
                    continue
                logp = torch.log_softmax(out.logits[0, scored - start].float(), dim=-1)
                wanted = targets[scored]
                total += float(logp.gather(1, wanted[:, None]).sum())
                greedy &= bool((logp.argmax(-1) == wanted).all())
        return total, greedy

    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        results = []
        for request in requests:
            context, continuation = request.args
            ctx = self.prefix + self.encode(context) if context else self.prefix
            cont = self.encode(continuation)
            if not ctx:  # nothing to condition the first token on: it is not scored
                ctx, cont = cont[:1], cont[1:]
            results.append(self._scores(ctx + cont, len(ctx)))
        return results

    def loglikelihood_rolling(self, requests: list[Any]) -> list[float]:
        results = []
        for request in requests:
            ids = self.prefix + self.encode(request.args[0])
            results.append(self._scores(ids, 1)[0])
        return results

    def generate_until(self, requests: list[Any]) -> list[str]:
        results = []
        for request in requests:
            context, settings = request.args
            until = settings.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            steps = int(settings.get("max_gen_toks", self.max_gen_toks))
            ids = self.prefix + self.encode(context)
            reading = read(
                self.model,
                torch.tensor([ids], device=self.model.device),
                start_context(self.model, device=self.model.device),
            )
            generation = Generation(
                self.model, reading, max_new_tokens=steps, sampler=Sampler(temperature=0.0)
            )
            columns = (int(column[0]) for column in generation)
            text = "".join(decode_text(columns, tokenizer=self.tokenizer, stop=until))
            for stop in until:  # the stop string itself is not part of the answer
                text = text.split(stop)[0]
            results.append(text)
        return results
