"""Pieces shared by the benchmark suite: machine description, output files, the server
(started here or reached by URL), the command-line options every server benchmark takes,
phantom series, statistics and the latency fit.

Nothing here finds files relative to the source tree: git runs in the current working
directory, the Triton installation is ``$COVIDCT_TRITON_DIR`` or ``.triton`` under the
current working directory.

Units: seconds for latencies unless a name says ``_ms``; bytes for memory; slices for
the first axis of an ``[N, H, W]`` HU volume.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covidct.errors import BenchmarkToolError, ConfigError
from covidct.app.triton_install import TRITON_DIR_ENV

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
UNKNOWN = "unknown"


def median_ms(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall and CPU (process) milliseconds of ``repeats`` calls of ``fn``.

    CPU time is the robust figure on a shared machine: it does not count the time the
    process waits for a core that other jobs hold.
    """
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - w0) * 1000.0)
        cpu.append((time.process_time() - c0) * 1000.0)
    return statistics.median(wall), statistics.median(cpu)


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    """stdout of ``git <args>`` in the current working directory; ``None`` when git is
    missing, fails or the directory is not a checkout."""
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


def git_commit() -> str:
    """``git rev-parse HEAD`` of the checkout holding the current working directory
    (``"unknown"`` when it is not a git checkout)."""
    out = _git("rev-parse", "HEAD")
    return (out or "").strip() or UNKNOWN


def git_dirty() -> bool | str:
    """Whether tracked or untracked files differ from ``HEAD`` (``"unknown"`` outside git)."""
    out = _git("status", "--porcelain")
    return UNKNOWN if out is None else bool(out.strip())


def triton_dir() -> Path:
    """The Triton installation: ``$COVIDCT_TRITON_DIR``, else ``.triton`` under the current
    working directory (``make setup`` installs it there). :class:`BenchmarkToolError` when
    that folder does not exist."""
    env = os.environ.get(TRITON_DIR_ENV)
    path = Path(env) if env else Path(".triton")
    if not path.is_dir():
        where = f"${TRITON_DIR_ENV}={env}" if env else f".triton under {Path.cwd()} (${TRITON_DIR_ENV} is not set)"
        raise BenchmarkToolError(
            f"{path}: no Triton installation folder; looked at {where}. Run `make setup` in the "
            f"repository root and start the benchmark there, or set {TRITON_DIR_ENV}"
        )
    return path


def machine_info() -> dict[str, Any]:
    """Machine, date and code version recorded in every report."""
    return {
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "git_commit": git_commit(),
        "git_uncommitted_changes": git_dirty(),
    }


def machine_line(m: dict[str, Any]) -> str:
    """One Markdown line: CPU, CPUs, load, date and commit of a :func:`machine_info` dict."""
    load = m.get("load_average_1_5_15")
    dirty = " + uncommitted changes" if m.get("git_uncommitted_changes") is True else ""
    return (f"Machine: {m['cpu']} ({m['cpus']} CPUs"
            + (f", load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} at start" if load else "")
            + f"), {m['date']}, commit `{m['git_commit']}`{dirty}")


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as indented JSON (creating the folder); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def write_resolved_config(out_dir: Path, config: Any, name: str) -> Path:
    """The resolved (defaults + CLI) frozen config next to the outputs: ``<name>_config.json``."""
    return write_json(out_dir / f"{name}_config.json", dataclasses.asdict(config))


def is_png(path: Path) -> bool:
    """``True`` when ``path`` is a file starting with the PNG signature."""
    try:
        with open(path, "rb") as handle:
            return handle.read(8) == PNG_SIGNATURE
    except OSError:
        return False


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100, linear interpolation) of ``values``."""
    if not values:
        raise ConfigError("percentile of an empty sequence")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


@dataclass(frozen=True)
class LinearFit:
    """``latency_s = fixed_s + per_slice_s * slices`` (least squares); ``r2``: coefficient
    of determination (1 = every point on the line; NaN with fewer than 3 points)."""

    fixed_s: float
    per_slice_s: float
    r2: float
    points: int

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def fit_latency(slices: Sequence[int], latencies_s: Sequence[float]) -> LinearFit:
    """Least-squares fit of latency (s) against slice count; needs two distinct slice counts."""
    x = np.asarray(slices, dtype=np.float64)
    y = np.asarray(latencies_s, dtype=np.float64)
    if x.size != y.size or np.unique(x).size < 2:
        raise ConfigError(f"latency fit needs >= 2 distinct slice counts; got {list(slices)}")
    design = np.stack([np.ones_like(x), x], axis=1)
    (fixed, per_slice), *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - (fixed + per_slice * x)
    total = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(residual**2)) / total if x.size > 2 and total > 0 else float("nan")
    return LinearFit(float(fixed), float(per_slice), r2, int(x.size))


def phantom_volume(num_slices: int, size: int, seed: int):
    """A COVID-positive phantom series (int16 HU ``[num_slices, size, size]``)."""
    from covidct.preprocessing.synthetic.phantom import make_phantom

    return make_phantom(num_slices, size=size, covid=True, seed=seed).volume


def add_volume_arguments(parser: argparse.ArgumentParser, repeats: int) -> None:
    """The in-process benchmarks' options: the volume (``--slices/--size/--seed`` phantom or
    ``--series``), ``--repeats`` per stage and the JSON ``--out`` file."""
    parser.add_argument("--slices", type=int, default=406, help="phantom slices N (default 406)")
    parser.add_argument("--size", type=int, default=512, help="phantom slice size in pixels")
    parser.add_argument("--seed", type=int, default=0, help="phantom seed")
    parser.add_argument("--series", type=str, default="", help="benchmark a real series instead")
    parser.add_argument("--repeats", type=int, default=repeats, help="runs per stage (median reported)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")


def series_or_phantom(series: str | None, slices: int, size: int, seed: int) -> tuple[Any, str]:
    """``(CTVolume, label)``: the series at ``series`` when given, else a COVID phantom
    (``slices`` x ``size`` x ``size``, seeded)."""
    if series:
        from covidct.preprocessing.io.series_reader import read_series

        return read_series(series), f"series {Path(series).name}"
    return phantom_volume(slices, size, seed), f"phantom seed {seed}"


@contextlib.contextmanager
def triton_endpoint(
    repository: Path | None, url: str | None, out_dir: Path, *, log_name: str = "tritonserver.log",
    gpu: bool = False,
) -> Iterator[tuple[str, Any]]:
    """Yield ``(grpc_url, server_or_None)``: the running server at ``url``, or a server
    started here on ``repository`` (free ports, log in ``out_dir``; ``gpu``: leave the
    server's GPU support on) and stopped after."""
    if url:
        yield url, None
        return
    if repository is None:
        raise ConfigError("give a model repository (--model-repository) or the gRPC --url of a running server")
    from covidct.app.triton_server import ServerConfig, TritonServer

    config = ServerConfig(Path(repository), log_path=out_dir / log_name, startup_timeout_s=300, gpu=gpu)
    server = TritonServer(config)
    server.start()
    try:
        yield server.grpc_url, server
    finally:
        server.stop()


def add_server_arguments(parser: argparse.ArgumentParser, default_out: str, repository_help: str) -> None:
    """The options of every benchmark that talks to a server: ``--model-repository``
    (required), ``--url`` (a running server; default: start one), ``--out``."""
    parser.add_argument("--model-repository", required=True, help=repository_help)
    parser.add_argument("--url", default=None, help="gRPC host:port of a running server (default: start one)")
    parser.add_argument("--out", default=default_out, help="output folder (default: %(default)s)")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table (one line per row, cells converted with ``str``)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def parse_markdown_table(text: str) -> list[dict[str, str]]:
    """Rows of the first Markdown table in ``text`` as ``header -> cell`` dicts."""
    lines: list[str] = []
    for line in (raw.strip() for raw in text.splitlines()):
        if line.startswith("|"):
            lines.append(line)
        elif lines:
            break  # the first table ended
    if len(lines) < 2:
        return []
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = []
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == len(header):
            rows.append(dict(zip(header, cells)))
    return rows
