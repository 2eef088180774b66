"""A Triton server's log file -> the lines that explain a failed start.

:func:`read_log_tail` gives the end of the log; :func:`log_excerpt` its error lines (the
ones every server without a GPU logs left out) and its last lines without the wide model
and backend status tables (rows of models that failed to load are kept). The launcher
(:mod:`covidct.app.triton_server`) puts the excerpt into its :class:`~covidct.errors.ServerError`.
"""

from __future__ import annotations

import re
from pathlib import Path

LOG_TAIL_LINES = 40
HARMLESS_ERRORS = ("CudaDriverHelper", "NVML", "DCGM", "dcgm")
"""Error lines a server without GPU always logs."""
_ERROR_LINE = re.compile(r"^E\d{4} ")


def read_log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ('' when it cannot be read)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def log_excerpt(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """What explains a failed start: the log's error lines (harmless no-GPU ones left out)
    and its last ``lines`` lines without the wide status tables (failed models' rows kept)."""
    tail = read_log_tail(path, 100_000).splitlines()
    errors = [
        line
        for line in tail
        if (_ERROR_LINE.match(line) or "ERROR" in line[:40])
        and not any(noise in line for noise in HARMLESS_ERRORS)
    ]
    kept = [
        line
        for line in tail
        if line.strip()
        and (not line.startswith(("+", "|")) or "UNAVAILABLE" in line)
        and not any(noise in line for noise in HARMLESS_ERRORS)
    ]
    parts = []
    if errors:
        parts.append("errors:\n" + "\n".join(errors[-15:]))
    parts.append("last lines:\n" + "\n".join(kept[-lines:]))
    return "\n".join(parts)
