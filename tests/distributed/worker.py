"""Run by torchrun in the distributed test: train, then dump this rank's weights."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from safetensors.torch import save_file

from memtx.config import load_run_config
from memtx.train import train

if __name__ == "__main__":
    out = Path(sys.argv[1])
    run = load_run_config(None, overrides=sys.argv[2:])
    result = train(run, out_dir=out, progress=False)
    rank = int(os.environ.get("RANK", "0"))
    if not run.train.fsdp:  # FSDP ranks hold shards; their checkpoint holds the full state
        state = {k: v.contiguous().clone() for k, v in result.model.state_dict().items()}
        save_file(state, str(out.parent / f"{out.name}-rank{rank}.safetensors"))
