"""Progress bars: tqdm on a terminal, a few plain lines (never a carriage return) in a log."""

from __future__ import annotations

import io

import pytest
from tqdm.auto import tqdm

from memtx import progress
from memtx.progress import LineProgress, progress_bar, progress_write


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_one_line_per_5_percent_and_no_carriage_return() -> None:
    log = io.StringIO()
    with progress_bar(total=1000, desc="train", unit="step", file=log) as bar:
        assert isinstance(bar, LineProgress)
        for _ in range(1000):
            bar.set_postfix(loss=f"{2.5:.3f}")
            bar.update()
    text = log.getvalue()
    lines = text.splitlines()
    assert "\r" not in text
    assert 1 <= len(lines) <= 21
    assert lines[0].startswith("train: 50/1,000 (5%)")
    assert lines[-1].startswith("train: 1,000/1,000 (100%)")
    assert "step/s" in lines[-1] and lines[-1].endswith("loss=2.500")


def test_iterating_yields_every_item_and_ends_with_a_line() -> None:
    log = io.StringIO()
    items = list(progress_bar(range(7), desc="eval", unit="seg", file=log))
    assert items == list(range(7))
    lines = log.getvalue().splitlines()
    assert len(lines) == 7  # 7 items: each one is a new 5% step
    assert lines[-1].startswith("eval: 7/7 (100%)")


def test_a_bar_closed_early_says_where_it_stopped_once() -> None:
    log = io.StringIO()
    bar = progress_bar(total=1000, desc="train", initial=100, file=log)
    bar.set_postfix_str("stopped")
    bar.update(270)  # one jump over several 5% steps: one line
    bar.update(5)  # still in the 35% step: no line
    bar.close()  # the last count was not printed: one line
    bar.close()
    bar.update(10)  # after close: counted, not printed
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and bar.n == 385
    assert lines[0].startswith("train: 370/1,000 (37%)")
    assert lines[1].startswith("train: 375/1,000 (38%)") and lines[1].endswith("stopped")


def test_without_a_total_a_line_at_most_every_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    log = io.StringIO()
    bar = progress_bar(desc="read", unit="seg", file=log)
    for _ in range(500):
        bar.update()
    assert log.getvalue() == ""
    monkeypatch.setattr(progress, "INTERVAL_S", 0.0)
    bar.update()
    bar.close()
    lines = log.getvalue().splitlines()
    assert lines == [lines[0]] and lines[0].startswith("read: 501 seg")


def test_bytes_with_si_prefixes() -> None:
    log = io.StringIO()
    with progress_bar(total=10**8, desc="enwik8", unit="B", unit_scale=True, file=log) as bar:
        bar.update(3 * 10**7)
    assert log.getvalue().splitlines()[0].startswith("enwik8: 30.0M/100M (30%)")


def test_a_terminal_gets_tqdm() -> None:
    screen = _Terminal()
    bar = progress_bar(total=10, desc="train", unit="step", file=screen)
    assert isinstance(bar, tqdm)
    bar.update(3)
    bar.close()
    assert "\r" in screen.getvalue() and "3/10" in screen.getvalue()


@pytest.mark.parametrize("stream", [io.StringIO(), _Terminal()])
def test_disabled_shows_nothing(stream: io.StringIO) -> None:
    for _ in progress_bar(range(5), total=5, disable=True, file=stream):
        pass
    assert stream.getvalue() == ""


def test_disable_none_shows_a_bar_only_on_a_terminal() -> None:
    log, screen = io.StringIO(), _Terminal()
    for stream in (log, screen):
        with progress_bar(total=4, disable=None, file=stream) as bar:
            bar.update(4)
    assert log.getvalue() == "" and "4/4" in screen.getvalue()


def test_the_default_stream_is_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    with progress_bar(total=2, desc="x") as bar:  # pytest's stderr is no terminal
        bar.update(2)
    captured = capsys.readouterr()
    assert captured.err.startswith("x: 2/2 (100%)") and "\r" not in captured.err


def test_progress_write_prints_a_line(capsys: pytest.CaptureFixture[str]) -> None:
    bar = progress_bar(total=3, desc="x")
    progress_write("step 1: validated")
    bar.write("step 2: saved")
    bar.close()
    assert capsys.readouterr().out == "step 1: validated\nstep 2: saved\n"
