"""Memory peaks while a benchmark runs: the server's host memory and Triton's GPU memory.

:class:`MemorySampler` is a context manager with one background thread that, every
``interval_s`` seconds, reads

- the resident set size (bytes) of the server process and all its descendants (the
  Python-backend stubs are child processes of ``tritonserver``) from ``/proc/<pid>/status``
  (``VmRSS``) and ``/proc/<pid>/task/*/children`` (Linux only), and
- Triton's ``nv_gpu_memory_used_bytes`` gauge (summed over GPUs) from its metrics page,
  which exists only where Triton saw a GPU.

The peak of each sum over the samples is reported; ``"n/a - no GPU"`` when Triton
exported no GPU memory metric (CPU machines), ``None`` for the RSS when no server pid
is known (a server reached by ``--url``).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from covidct.benchmarks.prom_metrics import fetch_metrics_text, read_triton_metric
from covidct.errors import ServerError

NO_GPU = "n/a - no GPU"
GPU_MEMORY_METRIC = "nv_gpu_memory_used_bytes"


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from ``/proc/<pid>/task/*/children``)."""
    seen, stack = [], [pid]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.append(current)
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                stack.extend(int(c) for c in children.read_text().split())
            except (OSError, ValueError):
                continue
    return seen


def rss_bytes(pid: int) -> int:
    """Resident set size of one process in bytes (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        return 0
    return 0


def tree_rss_bytes(pid: int) -> int:
    """Summed RSS (bytes) of ``pid`` and its descendants."""
    return sum(rss_bytes(p) for p in process_tree(pid))


def gpu_memory_bytes(metrics_url: str) -> int | None:
    """Sum of ``nv_gpu_memory_used_bytes`` over GPUs, ``None`` when the metric is absent."""
    try:
        samples = read_triton_metric(fetch_metrics_text(metrics_url), GPU_MEMORY_METRIC)
    except ServerError:
        return None
    return int(sum(value for _labels, value in samples)) if samples else None


class MemorySampler:
    """Background sampler of the server's RSS and GPU memory (see module docstring)."""

    def __init__(self, server_pid: int | None, metrics_url: str | None, interval_s: float = 0.2) -> None:
        self.server_pid = server_pid
        self.metrics_url = metrics_url
        self.interval_s = interval_s
        self.rss_peak = 0
        self.gpu_peak: int | None = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        """Take one sample now (also called by the thread)."""
        if self.server_pid is not None:
            self.rss_peak = max(self.rss_peak, tree_rss_bytes(self.server_pid))
        if self.metrics_url:
            gpu = gpu_memory_bytes(self.metrics_url)
            if gpu is not None:
                self.gpu_peak = max(self.gpu_peak or 0, gpu)
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> "MemorySampler":
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="memory-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.sample()

    def summary(self) -> dict[str, Any]:
        """Peaks: ``server_rss_peak_bytes`` (``None`` without a pid), ``gpu_memory_peak``
        (bytes, or ``"n/a - no GPU"``), ``samples``."""
        return {
            "server_rss_peak_bytes": self.rss_peak if self.server_pid is not None else None,
            "gpu_memory_peak": self.gpu_peak if self.gpu_peak is not None else NO_GPU,
            "samples": self.samples,
        }
