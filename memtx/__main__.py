"""``python -m memtx`` (and ``torchrun -m memtx``) runs the CLI."""

from memtx.cli import app

app()
