"""What every verb module of the CLI shares: the typer apps, ``--debug``, ``@guarded``, ``fail``.

Bad input (a config typo, a missing file, an unknown corpus) prints one line on stderr
and exits with code 2; ``--debug`` shows the traceback instead. This module stays light
(no torch): the verbs import their heavy modules inside their bodies.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, NoReturn, ParamSpec

import typer

from memtx.errors import MemtxError

__all__ = ["app", "bench_app", "fail", "guarded", "repro_app"]

app = typer.Typer(
    name="memtx",
    help="Memory-augmented transformers: train, evaluate, generate, benchmark.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
repro_app = typer.Typer(
    help="Reproductions of the papers' claims, committed under benchmarks/.", no_args_is_help=True
)
bench_app = typer.Typer(
    help="Benchmarks whose results are committed under benchmarks/.", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")
app.add_typer(repro_app, name="repro")

P = ParamSpec("P")

# Set once per invocation by the top-level callback, read by @guarded.
_state = {"debug": False}


def fail(message: str) -> NoReturn:
    """Print ``error: message`` on stderr and exit with code 2 (bad input)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def guarded(command: Callable[P, None]) -> Callable[P, None]:
    """Decorate a verb (under ``@app.command()``) so that errors end it cleanly.

    A :class:`MemtxError` (bad input) becomes one line on stderr and exit code 2, or its
    traceback with ``--debug``; an interrupted run (``TrainingInterrupted``) or Ctrl-C
    exits with code 130. ``functools.wraps`` keeps the verb's signature, which typer
    reads for the options.
    """

    @functools.wraps(command)
    def verb(*args: P.args, **kwargs: P.kwargs) -> None:
        from memtx.train import TrainingInterrupted

        try:
            command(*args, **kwargs)
        except TrainingInterrupted as exc:
            typer.echo(f"interrupted: {exc}", err=True)
            raise typer.Exit(130) from None
        except MemtxError as exc:
            if _state["debug"]:
                raise
            fail(str(exc))
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return verb


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    """memtx: long-context models that carry a small memory between segments."""
    _state["debug"] = debug
