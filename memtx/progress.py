"""Progress bars that stay readable in a log file.

On a terminal, :func:`progress_bar` returns a tqdm bar. When stderr is not a terminal
(``memtx demo > log 2>&1``, CI, a job scheduler), a tqdm bar would write hundreds of
carriage-return redraws into the log; there it returns a :class:`LineProgress` instead,
which prints one plain line every few percent (and one at the end) with the count,
rate, elapsed time and postfix. Both have the small interface the package uses, the
:class:`ProgressBar` protocol: ``update``, ``set_postfix``, ``set_postfix_str``,
``write``, ``close``, iteration and ``with``.

    with progress_bar(total=steps, desc="train", unit="step") as bar:
        for step in range(steps):
            ...
            bar.set_postfix(loss=f"{loss:.3f}")
            bar.update()

    for segment in progress_bar(segments, desc="eval", unit="seg"):
        ...

:func:`progress_write` prints a message on its own line without breaking an open bar
(tqdm's ``write``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import IO, Any, Generic, Protocol, TypeVar, cast, overload

from tqdm.auto import tqdm

__all__ = ["LineProgress", "ProgressBar", "progress_bar", "progress_write"]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

#: a plain line every this many percent of ``total``
EVERY_PERCENT = 5
#: without a known total, a plain line at most this often (seconds)
INTERVAL_S = 30.0


class ProgressBar(Protocol[T_co]):
    """What the package uses of a progress bar (tqdm's bars and :class:`LineProgress`).

    Attributes:
        n: the count so far (``initial`` included).
    """

    n: int

    def update(self, n: int = 1) -> Any:
        """Advance the count by ``n``."""

    def set_postfix(self, **values: Any) -> Any:
        """Show ``key=value`` pairs after the count (replacing the previous ones)."""

    def set_postfix_str(self, text: str) -> Any:
        """Show ``text`` after the count (replacing the previous postfix)."""

    def write(self, message: str) -> Any:
        """Print ``message`` on its own line without breaking the bar."""

    def close(self) -> Any:
        """Finish the bar (idempotent)."""

    def __iter__(self) -> Iterator[T_co]:
        """Iterate the wrapped iterable, advancing by 1 per item and closing at the end."""

    def __enter__(self) -> ProgressBar[T_co]: ...

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> Any: ...


def is_terminal(stream: IO[str] | None = None) -> bool:
    """Whether ``stream`` (default: the current ``sys.stderr``) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


@overload
def progress_bar(
    iterable: Iterable[T],
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    initial: int = 0,
    unit_scale: bool = False,
    disable: bool | None = False,
    leave: bool = True,
    file: IO[str] | None = None,
) -> ProgressBar[T]: ...


@overload
def progress_bar(
    iterable: None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    initial: int = 0,
    unit_scale: bool = False,
    disable: bool | None = False,
    leave: bool = True,
    file: IO[str] | None = None,
) -> ProgressBar[Any]: ...


def progress_bar(
    iterable: Iterable[T] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    initial: int = 0,
    unit_scale: bool = False,
    disable: bool | None = False,
    leave: bool = True,
    file: IO[str] | None = None,
) -> ProgressBar[T] | ProgressBar[Any]:
    """A progress bar: tqdm on a terminal, a few plain lines (:class:`LineProgress`) otherwise.

    Args:
        iterable: what to iterate (optional: without it, call ``update`` yourself).
        total: the expected count (default: ``len(iterable)`` where it has one).
        desc: the label in front of the count.
        unit: what is counted (``"step"``, ``"seg"``, ``"B"``).
        initial: the count to start from (a resumed run).
        unit_scale: show counts and rates with SI prefixes (``12.3MB``).
        disable: True shows nothing; None shows a bar on a terminal and nothing
            otherwise (tqdm's meaning of None: for output that is noise in a log).
        leave: keep the bar on the terminal when done (plain lines are never erased).
        file: where the bar goes (default: ``sys.stderr`` at the time of the call).

    Returns:
        A :class:`ProgressBar`; iterating it yields the items of ``iterable``.
    """
    stream = sys.stderr if file is None else file
    terminal = is_terminal(stream)
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(cast(Any, iterable))
    if terminal or disable is True or (disable is None and not terminal):
        return cast(
            "ProgressBar[T]",
            tqdm(
                iterable,
                total=total,
                desc=desc or None,
                unit=unit,
                initial=initial,
                unit_scale=unit_scale,
                disable=bool(disable) or not terminal,
                leave=leave,
                file=stream,
                dynamic_ncols=True,
            ),
        )
    return LineProgress(
        iterable, total=total, desc=desc, unit=unit, initial=initial, unit_scale=unit_scale,
        file=stream,
    )  # fmt: skip


def progress_write(message: str, *, file: IO[str] | None = None) -> None:
    """Print ``message`` on its own line (stdout by default), safe while a bar is open."""
    tqdm.write(message, file=file)


class LineProgress(Generic[T]):
    """A progress bar for logs: one plain line per ``EVERY_PERCENT`` percent, never a ``\\r``.

    A line reads ``train: 250/1000 (25%), 41.7 step/s, elapsed 00:06, loss=2.310``.
    Without a known total, a line at most every ``INTERVAL_S`` seconds. A last line at
    ``close`` unless the last update already printed it. Made by :func:`progress_bar`.
    """

    def __init__(
        self,
        iterable: Iterable[T] | None = None,
        *,
        total: int | None,
        desc: str = "",
        unit: str = "it",
        initial: int = 0,
        unit_scale: bool = False,
        file: IO[str] | None = None,
    ) -> None:
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.unit = unit
        self.unit_scale = unit_scale
        self.n = initial
        self.file = file
        self._initial = initial
        self._began = time.monotonic()
        self._last_line_at = self._began
        self._bucket = self._bucket_of(initial)
        self._postfix = ""
        self._printed_n: int | None = None
        self.closed = False

    # ---------------------------------------------------------------- the tqdm interface

    def update(self, n: int = 1) -> None:
        """Advance the count by ``n``; print a line when it enters a new ``EVERY_PERCENT``."""
        self.n += n
        if self.closed:
            return
        if self.total:
            bucket = self._bucket_of(self.n)
            if bucket > self._bucket:
                self._bucket = bucket
                self._print()
        elif time.monotonic() - self._last_line_at >= INTERVAL_S:
            self._print()

    def set_postfix(self, **values: Any) -> None:
        """Show ``key=value`` pairs after the count (numbers as tqdm formats them)."""
        self._postfix = ", ".join(
            f"{key}={tqdm.format_num(value) if isinstance(value, int | float) else value}"
            for key, value in values.items()
        )

    def set_postfix_str(self, text: str) -> None:
        """Show ``text`` after the count."""
        self._postfix = text

    def write(self, message: str) -> None:
        """Print ``message`` on its own line (as :func:`progress_write`)."""
        progress_write(message)

    def close(self) -> None:
        """Print the last line (unless already printed); later updates print nothing."""
        if self.closed:
            return
        self.closed = True
        if self._printed_n != self.n:
            self._print()

    def __iter__(self) -> Iterator[T]:
        if self.iterable is None:
            raise TypeError("this progress bar wraps no iterable: call update() instead")
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self) -> LineProgress[T]:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # ---------------------------------------------------------------- the line

    def line(self) -> str:
        """The line this bar prints now."""
        elapsed = time.monotonic() - self._began
        count = self._format_count(self.n)
        if self.total:
            # As tqdm: the unit appears in the rate, not after the count.
            head = f"{count}/{self._format_count(self.total)} ({100 * self.n / self.total:.0f}%)"
        else:
            head = f"{count}{'' if self.unit_scale else ' '}{self.unit}"
        parts = [head]
        done = self.n - self._initial
        if done > 0 and elapsed > 0:
            parts.append(self._format_rate(done / elapsed))
        parts.append(f"elapsed {tqdm.format_interval(elapsed)}")
        if self._postfix:
            parts.append(self._postfix)
        text = ", ".join(parts)
        return f"{self.desc}: {text}" if self.desc else text

    def _format_count(self, count: float) -> str:
        return tqdm.format_sizeof(count) if self.unit_scale else f"{count:,}"

    def _format_rate(self, rate: float) -> str:
        if self.unit_scale:
            return f"{tqdm.format_sizeof(rate)}{self.unit}/s"
        if rate >= 1:
            return f"{rate:,.1f} {self.unit}/s"
        return f"{1 / rate:,.1f} s/{self.unit}"

    def _bucket_of(self, count: int) -> int:
        if not self.total:
            return 0
        return int(100 * min(count, self.total) / self.total // EVERY_PERCENT)

    def _print(self) -> None:
        stream = sys.stderr if self.file is None else self.file
        # A newline per line and a flush: the log shows progress as it happens.
        print(self.line(), file=stream, flush=True)
        self._printed_n = self.n
        self._last_line_at = time.monotonic()
