"""The ``memtx`` command line: thin wrappers over library functions.

Bad input (a config typo, a missing file, an unknown corpus) prints one line on stderr
and exits with code 2; ``--debug`` shows the traceback instead.

- :mod:`memtx.cli.common`: the typer apps, ``--debug``, ``@guarded`` and ``fail``.
- :mod:`memtx.cli.options`: shared option types and the parsers of list/range options.
- :mod:`memtx.cli.runs`: train, eval, demo, pretrain, generate, inspect.
- :mod:`memtx.cli.benchmarks`: the ``bench`` and ``repro`` verbs.
- :mod:`memtx.cli.memory`: read (a text into a snapshot) and serve.

Importing this package imports the verb modules, which registers their commands on
:data:`app`; each verb imports its heavy modules lazily, so ``memtx --help`` stays fast.
"""

from __future__ import annotations

from memtx.cli import benchmarks, memory, runs
from memtx.cli.common import app

__all__ = ["app", "benchmarks", "memory", "run", "runs"]


def run() -> None:
    """Console-script entry point."""
    try:
        app()
    except SystemExit as exc:
        # click reports usage errors with exit code 2 already; keep others as they are.
        raise exc
