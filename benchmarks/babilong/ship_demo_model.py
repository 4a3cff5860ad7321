"""Copy a finished ``memtx bench babilong`` run into the package as ``memtx demo``'s ARMT.

    python benchmarks/babilong/ship_demo_model.py runs/babilong/armt_bounded-qa1 \
        "memtx bench babilong --models armt_bounded --tasks qa1 ..."

Copies the run's ``config.json``, ``tokenizer.json`` and newest checkpoint (weights and
train state, so the folder loads with :func:`memtx.train.load_trained` and its sha256s
verify) into :data:`memtx.haystack.DEMO_RUN`, and writes ``MADE_BY.md`` with the command.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from memtx.checkpoint import checkpoint_dirs
from memtx.haystack import DEMO_RUN

LIMIT = 5 * 2**20  # bytes: what the issue allows the shipped checkpoint


def ship(run_dir: Path, command: str) -> Path:
    newest = checkpoint_dirs(run_dir)[-1]
    if DEMO_RUN.exists():
        shutil.rmtree(DEMO_RUN)
    (DEMO_RUN / "checkpoints").mkdir(parents=True)
    for name in ("config.json", "tokenizer.json"):
        shutil.copy2(run_dir / name, DEMO_RUN / name)
    shutil.copytree(newest, DEMO_RUN / "checkpoints" / newest.name)
    config = json.loads((run_dir / "config.json").read_text())
    size = sum(path.stat().st_size for path in DEMO_RUN.rglob("*") if path.is_file())
    if size > LIMIT:
        raise SystemExit(f"{DEMO_RUN} holds {size:,} bytes, over the {LIMIT:,} allowed")
    (DEMO_RUN / "MADE_BY.md").write_text(
        "# The ARMT of `memtx demo`'s memory at work\n\n"
        f"Trained by (seed {config['train']['seed']}, one CPU thread):\n\n    {command}\n\n"
        f"Copied from `{run_dir}` ({newest.name}) by `benchmarks/babilong/ship_demo_model.py`;"
        f" {size:,} bytes. Its figures at every length: `benchmarks/babilong.md`.\n"
    )
    return DEMO_RUN


if __name__ == "__main__":
    print(ship(Path(sys.argv[1]), sys.argv[2]))
