"""Progress in a log: one line per stage, no carriage-return redraws (covidct.progress)."""

from __future__ import annotations

import io

import pytest

from covidct.progress import LineProgress, is_terminal, progress


class FakeTerminal(io.StringIO):
    """A text stream that says it is a terminal (what tqdm draws on)."""

    def isatty(self) -> bool:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        return True


def test_a_log_gets_one_line_per_stage_and_no_redraws() -> None:
    log = io.StringIO()
    items = list(progress(range(250), desc="synthetic patients", unit="patient", file=log))
    assert items == list(range(250))
    lines = log.getvalue().splitlines()
    assert len(lines) == 1 and "\r" not in log.getvalue()
    assert lines[0].startswith("synthetic patients: 250 patient in ")


def test_a_cleared_stage_prints_nothing_in_a_log() -> None:
    log = io.StringIO()
    for _ in progress(range(40), desc="epoch 1/3", unit="batch", leave=False, file=log):
        pass
    assert log.getvalue() == ""


def test_manual_updates_and_postfix_word_the_line() -> None:
    log = io.StringIO()
    with progress(total=6, desc="export", unit="step", file=log) as bar:
        for step in ("onnx", "parity", "write"):
            bar.set_postfix_str(step)
            bar.update(1)
    assert isinstance(bar, LineProgress)
    assert log.getvalue().startswith("export: 3/6 step in ") and log.getvalue().rstrip().endswith("(write)")


def test_a_terminal_gets_a_tqdm_bar() -> None:
    tty = FakeTerminal()
    bar = progress(range(3), desc="decoding", file=tty)
    assert not isinstance(bar, LineProgress)
    assert list(bar) == [0, 1, 2]
    assert "\r" in tty.getvalue()  # the bar redraws in place


def test_disabled_progress_prints_nothing_anywhere() -> None:
    for stream in (io.StringIO(), FakeTerminal()):
        assert list(progress(range(3), desc="x", file=stream, disable=True)) == [0, 1, 2]
        assert stream.getvalue() == ""


def test_closed_or_plain_streams_are_not_terminals() -> None:
    closed = FakeTerminal()
    closed.close()
    assert is_terminal(FakeTerminal()) and not is_terminal(io.StringIO()) and not is_terminal(None)
    with pytest.raises(ValueError):
        closed.isatty()
    assert not is_terminal(closed)


def test_iterating_without_an_iterable_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"LineProgress: no iterable to iterate over"):
        list(LineProgress(desc="x"))
