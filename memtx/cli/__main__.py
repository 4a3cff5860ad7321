"""``python -m memtx.cli`` runs the CLI, as ``python -m memtx`` does."""

from memtx.cli import run

run()
