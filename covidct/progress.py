"""Progress that a person can read: a bar on a terminal, one line per stage in a log.

tqdm redraws its bar with carriage returns: right on a terminal, hundreds of lines of noise
in a file (``make demo > demo.log``, a CI log, a Kubernetes job). :func:`progress` returns a
tqdm bar when its stream is a terminal and a :class:`LineProgress` otherwise, which prints
one line when the stage ends (``<desc>: <n> <unit> in <s> s``) and nothing while it runs.
A stage that tqdm would clear at the end (``leave=False``, an inner loop whose caller prints
its own line, such as the trainer's per-epoch row) prints nothing at all.

Part of the base layer: imports nothing of the bundle (docs/architecture.md).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO


def is_terminal(stream: TextIO | None) -> bool:
    """True when ``stream`` is an open terminal (False for files, pipes and closed streams)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty is not None and isatty())
    except (ValueError, OSError):  # closed or detached stream
        return False


class LineProgress:
    """The part of tqdm's surface the bundle uses, printing one line at the end instead of a bar.

    Supports iteration, ``update``, ``set_postfix``/``set_postfix_str``, ``close`` and use as a
    context manager. ``total`` and ``unit`` only word the line.
    """

    def __init__(self, iterable: Iterable[Any] | None = None, *, desc: str = "", total: int | None = None,
                 unit: str = "it", leave: bool = True, file: TextIO | None = None, disable: bool = False) -> None:
        self.iterable = iterable
        self.desc = desc
        self.total = total if total is not None else _length(iterable)
        self.unit = unit
        self.leave = leave
        self.file = file
        self.disable = disable
        self.n = 0
        self.postfix = ""
        self._start = time.perf_counter()
        self._closed = False

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("LineProgress: no iterable to iterate over (pass one, or call update())")
        try:
            for item in self.iterable:
                yield item
                self.n += 1
        finally:
            self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def line(self) -> str:
        """The stage's one line: ``<desc>: <n>[/<total>] <unit> in <s> s[ (<postfix>)]``."""
        count = f"{self.n}/{self.total}" if self.total and self.total != self.n else f"{self.n}"
        text = f"{self.desc or 'done'}: {count} {self.unit} in {time.perf_counter() - self._start:.1f} s"
        return f"{text} ({self.postfix})" if self.postfix else text

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.leave and not self.disable:
            print(self.line(), file=self.file if self.file is not None else sys.stderr, flush=True)


def _length(iterable: Iterable[Any] | None) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


def progress(iterable: Iterable[Any] | None = None, *, desc: str = "", total: int | None = None, unit: str = "it",
             leave: bool = True, file: TextIO | None = None, disable: bool = False) -> Any:
    """A tqdm bar on ``file`` (default stderr) when it is a terminal, a :class:`LineProgress` otherwise.

    Same arguments as tqdm's; ``disable=True`` prints nothing either way.
    """
    stream = file if file is not None else sys.stderr
    if not disable and is_terminal(stream):
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, file=stream)
    return LineProgress(iterable, desc=desc, total=total, unit=unit, leave=leave, file=file, disable=disable)
