"""Soak: a long run at fixed concurrency that looks for memory growth and failed requests.

1. ``--volumes`` phantom series of ``--slices`` x ``--size`` x ``--size`` (int16 HU
   ``[N, H, W]``) are made once; ``--concurrency`` client threads (one
   :class:`covidct.client.submit.PipelineClient` each: shared memory on this host) send them in
   turn for ``--minutes``, recording each request's latency (s) or error class.
2. Every ``--sample-interval-s`` a sampler reads from ``/proc`` the RSS (bytes) of the
   server and of every Python-backend stub (by Triton instance name, so a restarted stub
   continues its series) and the bytes in the ``/dev/shm`` files of the server's
   Python-backend regions and of this client's regions.
3. Growth after the warm-up plateau: for each process, the median RSS of the last quarter
   of the run minus the median of the second quarter, and minus that of the third quarter
   (bytes and percent), plus the least-squares slope over the second half (bytes per hour).

Without ``--url`` the server is started here under :class:`covidct.app.supervisor.SupervisedServer`
(its restarts and events are reported); with ``--url`` the server on this host listening
on that gRPC port is found in ``/proc`` for the memory samples.

    python -m covidct.benchmarks.soak --model-repository demo_output/model_repository --minutes 60 --concurrency 8

Writes ``soak.json``, ``soak.md``, ``soak_memory.png`` and ``soak_config.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covidct.benchmarks.common import (
    add_server_arguments,
    machine_info,
    machine_line,
    markdown_table,
    percentile,
    phantom_volume,
    write_json,
    write_resolved_config,
)
from covidct.benchmarks.memory import rss_bytes
from covidct.client.submit import PipelineClient
from covidct.client.transport import TransportConfig
from covidct.app import health
from covidct.errors import ConfigError
from covidct.app.shm_regions import SHM_DIR
from covidct.app.supervisor import SupervisedServer, SupervisorConfig
from covidct.app.triton_server import ServerConfig

MIB = 1024 * 1024


@dataclass(frozen=True)
class SoakConfig:
    """One soak run (see module docstring). Times in seconds unless named ``minutes``."""

    model_repository: str
    out: str = "bench_output/soak"
    url: str | None = None
    minutes: float = 60.0
    concurrency: int = 8
    slices: int = 100
    size: int = 512
    volumes: int = 4
    seed: int = 0
    sample_interval_s: float = 5.0
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if not self.minutes > 0 or self.concurrency < 1 or self.volumes < 1 or not self.sample_interval_s > 0:
            raise ConfigError(
                f"SoakConfig minutes={self.minutes}, concurrency={self.concurrency}, volumes={self.volumes}, "
                f"sample_interval_s={self.sample_interval_s}; expected all > 0"
            )


class Sampler(threading.Thread):
    """Every ``interval_s``: RSS of the server and each stub, and /dev/shm bytes of its and our regions."""

    def __init__(self, server_pid, interval_s: float, t0: float) -> None:
        super().__init__(daemon=True)
        self.server_pid, self.interval_s, self.t0 = server_pid, interval_s, t0
        self.samples: list[dict[str, Any]] = []
        self.stopping = threading.Event()

    def sample(self) -> dict[str, Any]:
        pid = self.server_pid()
        rss = {"tritonserver": rss_bytes(pid)} if pid else {}
        for stub in health.stub_processes(pid) if pid else []:
            rss[stub.instance] = rss_bytes(stub.pid)
        prefixes = [f"covidct_client_{os.getpid()}_", *shm_prefixes(pid)]
        shm = sum(_allocated(p) for p in SHM_DIR.glob("covidct_*") if p.name.startswith(tuple(prefixes)))
        return {"t_s": round(time.monotonic() - self.t0, 2), "rss_bytes": rss, "shm_bytes": shm}

    def run(self) -> None:
        while not self.stopping.is_set():
            self.samples.append(self.sample())
            self.stopping.wait(self.interval_s)


def shm_prefixes(server_pid: int | None) -> list[str]:
    """The Python backend's region prefix on the server's command line (``[]`` if none)."""
    flag = "python,shm-region-prefix-name="
    args = health.server_arguments(server_pid) if server_pid else []
    return [a.split(flag, 1)[1] for a in args if flag in a]


def _allocated(path: Path) -> int:
    try:
        return path.stat().st_blocks * 512
    except OSError:
        return 0


def growth(samples: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """Memory growth of process ``name`` after the warm-up plateau: the medians (bytes) of
    the second, third and last quarter of the run, the growth Q2 -> Q4 and Q3 -> Q4
    (bytes, percent of the earlier median; Q3 -> Q4 when warm-up steps last into Q2), and
    the least-squares slope over the second half (bytes per hour)."""
    points = [(s["t_s"], s["rss_bytes"][name]) for s in samples if s["rss_bytes"].get(name)]
    if len(points) < 8:
        return {"samples": len(points)}
    end = points[-1][0]
    quarter = [[v for t, v in points if q * end / 4 <= t < (q + 1) * end / 4 or (q == 3 and t == end)]
               for q in range(4)]
    if not all(quarter[1:]):
        return {"samples": len(points)}
    q2, q3, q4 = (statistics.median(q) for q in quarter[1:])
    tail = np.asarray([(t, v) for t, v in points if t >= end / 2], dtype=np.float64)
    slope = float(np.polyfit(tail[:, 0], tail[:, 1], 1)[0]) * 3600 if len(tail) >= 2 else float("nan")
    pct = lambda a, b: 100.0 * (b - a) / a if a else float("nan")  # noqa: E731
    return {"samples": len(points), "median_q2_bytes": q2, "median_q3_bytes": q3, "median_q4_bytes": q4,
            "growth_bytes": q4 - q2, "growth_pct": pct(q2, q4), "growth_q3_q4_bytes": q4 - q3,
            "growth_q3_q4_pct": pct(q3, q4), "slope_bytes_per_h": slope}


def load(url: str, volumes: list, cfg: SoakConfig, deadline: float, t0: float) -> list[dict[str, Any]]:
    """``cfg.concurrency`` threads sending ``volumes`` in turn until ``deadline``."""
    records: list[dict[str, Any]] = []
    lock = threading.Lock()
    transport = TransportConfig(timeout_s=cfg.timeout_s)

    def worker(index: int) -> None:
        with PipelineClient(url, transport=transport) as client:
            i = index
            while time.monotonic() < deadline:
                start = time.monotonic()
                try:
                    client.infer_volume(volumes[i % len(volumes)])
                    error = None
                except Exception as exc:  # noqa: BLE001 - every failure is counted by class
                    error = type(exc).__name__
                record = {"t_s": round(start - t0, 3), "latency_s": time.monotonic() - start, "error": error}
                with lock:
                    records.append(record)
                i += 1

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(cfg.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return records


def summarize(records: list[dict[str, Any]], samples: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    ok = [r["latency_s"] for r in records if r["error"] is None]
    names = sorted({n for s in samples for n in s["rss_bytes"]})
    totals = [{"t_s": s["t_s"], "rss_bytes": {"total": sum(s["rss_bytes"].values())}} for s in samples]
    shm = [{"t_s": s["t_s"], "rss_bytes": {"shm": s["shm_bytes"]}} for s in samples]
    return {
        "requests": len(records),
        "errors": len(records) - len(ok),
        "errors_by_type": dict(Counter(r["error"] for r in records if r["error"])),
        "throughput_per_s": len(ok) / wall_s if wall_s else float("nan"),
        "p50_s": percentile(ok, 50) if ok else None,
        "p99_s": percentile(ok, 99) if ok else None,
        "memory_growth": {**{n: growth(samples, n) for n in names}, "total": growth(totals, "total"),
                          "dev_shm": growth(shm, "shm")},
    }


def to_markdown(report: dict[str, Any]) -> str:
    s, c = report["summary"], report["config"]
    mib = lambda v: f"{v / MIB:.1f}" if isinstance(v, (int, float)) else "n/a"  # noqa: E731
    pct = lambda v: f"{v:.1f}" if isinstance(v, (int, float)) else "n/a"  # noqa: E731
    rows = [[n, g.get("samples"), *(mib(g.get(f"median_q{q}_bytes")) for q in (2, 3, 4)),
             f"{mib(g.get('growth_bytes'))} ({pct(g.get('growth_pct'))} %)",
             f"{mib(g.get('growth_q3_q4_bytes'))} ({pct(g.get('growth_q3_q4_pct'))} %)",
             mib(g.get("slope_bytes_per_h"))] for n, g in s["memory_growth"].items()]
    p50 = f"{s['p50_s']:.2f}" if s["p50_s"] is not None else "n/a"
    p99 = f"{s['p99_s']:.2f}" if s["p99_s"] is not None else "n/a"
    return "\n".join([
        "# Soak", "",
        machine_line(report["machine"]), "",
        f"{report['wall_s'] / 60:.1f} min at concurrency {c['concurrency']}, {c['volumes']} phantom series of "
        f"{c['slices']} x {c['size']} x {c['size']} (int16 HU), one PipelineClient per thread.", "",
        markdown_table(["requests", "errors", "patients/s", "p50 latency (s)", "p99 latency (s)", "restarts"],
                       [[s["requests"], s["errors"], f"{s['throughput_per_s']:.3f}", p50, p99,
                         report.get("restarts", "n/a")]]),
        "", f"Errors by type: {s['errors_by_type'] or 'none'}", "",
        "Memory (RSS, MiB; `dev_shm`: bytes in the /dev/shm files of the server's and this client's regions) "
        "after the warm-up plateau: medians of the second, third and last quarter of the run, growth Q2 -> Q4 "
        "and Q3 -> Q4, and the least-squares slope over the second half.", "",
        markdown_table(["process", "samples", "Q2 median", "Q3 median", "Q4 median", "growth Q2->Q4",
                        "growth Q3->Q4", "slope MiB/h"], rows),
        "",
    ])


def plot_memory(samples: list[dict[str, Any]], path: Path, title: str) -> Path:
    from covidct.benchmarks.plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    minutes = [s["t_s"] / 60 for s in samples]
    for name in sorted({n for s in samples for n in s["rss_bytes"]}):
        ax.plot(minutes, [s["rss_bytes"].get(name, np.nan) / MIB for s in samples], label=name)
    ax.plot(minutes, [sum(s["rss_bytes"].values()) / MIB for s in samples], "k--", label="total")
    ax.plot(minutes, [s["shm_bytes"] / MIB for s in samples], ":", color="grey",
            label="/dev/shm (server + client regions)")
    if minutes:
        for q in (1, 2, 3):
            ax.axvline(minutes[-1] * q / 4, color="lightgrey", lw=0.8)
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, path)


def run(cfg: SoakConfig) -> dict[str, Any]:
    """The whole soak; writes the report files into ``cfg.out`` and returns the report."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_resolved_config(out, cfg, "soak")
    machine = machine_info()  # load average at the start
    volumes = [phantom_volume(cfg.slices, cfg.size, cfg.seed + i) for i in range(cfg.volumes)]
    supervised = None
    if cfg.url:
        url = cfg.url
        port = int(url.rsplit(":", 1)[1])
        server_pid = lambda: health.find_server(port)  # noqa: E731
    else:
        config = ServerConfig(Path(cfg.model_repository), log_path=out / "tritonserver.log", startup_timeout_s=300)
        supervised = SupervisedServer(config, SupervisorConfig()).start()
        url = supervised.grpc_url
        server_pid = lambda: supervised.pid  # noqa: E731
    try:
        t0 = time.monotonic()
        sampler = Sampler(server_pid, cfg.sample_interval_s, t0)
        sampler.start()
        records = load(url, volumes, cfg, t0 + cfg.minutes * 60, t0)
        wall_s = time.monotonic() - t0
        sampler.stopping.set()
        sampler.join()
    finally:
        if supervised is not None:
            supervised.stop()
    report = {
        "machine": machine,
        "config": dataclasses.asdict(cfg),
        "wall_s": wall_s,
        "summary": summarize(records, sampler.samples, wall_s),
        "restarts": supervised.restarts if supervised is not None else None,
        "supervisor_events": [dataclasses.asdict(e) for e in supervised.events] if supervised is not None else [],
        "samples": sampler.samples,
        "requests": records,
    }
    write_json(out / "soak.json", report)
    (out / "soak.md").write_text(to_markdown(report), encoding="utf-8")
    plot_memory(sampler.samples, out / "soak_memory.png",
                f"RSS over {wall_s / 60:.0f} min at concurrency {cfg.concurrency} ({cfg.slices} x {cfg.size}^2)")
    return report


def parse_args(argv: list[str] | None = None) -> SoakConfig:
    d = SoakConfig(model_repository="")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_server_arguments(p, d.out, "the repository to serve (started under the supervisor)")
    p.add_argument("--minutes", type=float, default=d.minutes, help="run length (default %(default)s)")
    p.add_argument("--concurrency", type=int, default=d.concurrency, help="client threads (default %(default)s)")
    p.add_argument("--slices", type=int, default=d.slices, help="slices per series (default %(default)s)")
    p.add_argument("--size", type=int, default=d.size, help="slice side in pixels (default %(default)s)")
    p.add_argument("--volumes", type=int, default=d.volumes, help="distinct phantom series (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--sample-interval-s", type=float, default=d.sample_interval_s)
    p.add_argument("--timeout-s", type=float, default=d.timeout_s, help="deadline of each request (s)")
    a = p.parse_args(argv)
    return SoakConfig(
        model_repository=a.model_repository, out=a.out, url=a.url, minutes=a.minutes, concurrency=a.concurrency,
        slices=a.slices, size=a.size, volumes=a.volumes, seed=a.seed, sample_interval_s=a.sample_interval_s,
        timeout_s=a.timeout_s,
    )


def main(argv: list[str] | None = None) -> int:
    print(to_markdown(run(parse_args(argv))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
