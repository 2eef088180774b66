"""Throughput and scaling: patients/s vs concurrency and instance count, memory peaks,
and how latency grows with slice count.

1. For each instance count in ``--instances`` a copy of the repository is written to
   ``<out>/repositories/instances-<n>`` with ``instance_group.count = n`` for the heavy
   steps (``--heavy-models``; the source repository is never edited), and a server is
   started on it (with ``--url`` only the running server is measured, instance count
   ``"as served"``; ``--triton-metrics-url`` then names its metrics endpoint).
2. For each concurrency in ``--concurrency`` that many client threads (one gRPC
   connection each) send the same phantom series; each sends one warm-up request, then
   all start together and send ``--requests-per-client`` requests. Throughput =
   requests / wall time from the common start to the last answer (patients/s); p50/p95
   latency (ms) over all requests.
3. While a server runs, a sampler reads every ``--sample-interval-s``: the RSS of the
   server and its children (the Python-backend stubs) from ``/proc`` (bytes), and
   Triton's ``nv_gpu_memory_used_bytes`` (summed over GPUs) when the server exports it.
   The client's peak RSS is ``ru_maxrss``.
4. With the first instance count: the median latency of ``--fit-slices`` series (one
   client, ``--fit-repeats`` requests each) and a least-squares fit
   ``latency = fixed + per_slice * slices``.

    python -m covidct.benchmarks.throughput --model-repository demo_output/model_repository --out bench_out/throughput
    python -m covidct.benchmarks.throughput --model-repository REPO --quick --out OUT   # tests: tiny series, c=1,2

Writes ``throughput.md``, ``throughput.json``, ``throughput.png``, ``latency_fit.png``,
``benchmark_metrics.prom`` and ``throughput_config.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import shutil
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tritonclient.grpc as grpcclient

from covidct.progress import progress as progress_bar
from covidct.benchmarks.common import (
    add_server_arguments,
    fit_latency,
    machine_info,
    machine_line,
    markdown_table,
    percentile,
    phantom_volume,
    triton_endpoint,
    write_json,
    write_resolved_config,
)
from covidct.benchmarks.memory import MemorySampler
from covidct.benchmarks.plots import plot_concurrency, plot_latency_fit
from covidct.benchmarks.prom_metrics import BenchmarkMetrics
from covidct.client.submit import submit
from covidct.errors import ConfigError
from covidct.export.pbtxt import CONFIG_FILENAME, leading_comments, read_config, set_instance_kind, write_config

HEAVY_MODELS = ("preprocess", "classifier", "segmenter")


@dataclass(frozen=True)
class ThroughputConfig:
    """One throughput/scaling run (see module docstring). Sizes in slices and pixels,
    times in seconds."""

    model_repository: str
    out: str = "bench_output/throughput"
    url: str | None = None
    slices: int = 65
    size: int = 512
    seed: int = 0
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16)
    instances: tuple[int, ...] = (1, 2)
    heavy_models: tuple[str, ...] = HEAVY_MODELS
    requests_per_client: int = 2
    fit_slices: tuple[int, ...] = (35, 65, 130, 406)
    fit_repeats: int = 3
    sample_interval_s: float = 0.2
    timeout_s: float = 900.0
    metrics_port: int | None = None
    gpu_server: bool = False
    triton_metrics_url: str | None = None


def repository_with_instances(source: Path, target: Path, count: int, models: tuple[str, ...]) -> Path:
    """Copy ``source`` to ``target`` with ``count`` instances of each of ``models`` (same kind)."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for model in models:
        model_dir = target / model
        if not (model_dir / CONFIG_FILENAME).is_file():
            raise ConfigError(f"{source / model}: no {CONFIG_FILENAME}; heavy model {model!r} is not in the repository")
        config = read_config(model_dir)
        kind = "KIND_CPU"
        if config.instance_group:
            from tritonclient.grpc import model_config_pb2 as mc

            kind = mc.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind)
            kind = "KIND_CPU" if kind == "KIND_AUTO" else kind
        set_instance_kind(config, kind, count)
        header = leading_comments(model_dir / CONFIG_FILENAME)
        write_config(config, model_dir, f"{header}\nBenchmark copy: instance_group.count = {count}.".strip())
    return target


def concurrency_point(url: str, volume, concurrency: int, requests_per_client: int, timeout_s: float,
                      metrics: BenchmarkMetrics, instances: str) -> dict[str, Any]:
    """Throughput (patients/s) and latency (ms) of ``concurrency`` clients sending ``volume``."""
    ready = threading.Barrier(concurrency + 1)
    latencies: list[list[float]] = [[] for _ in range(concurrency)]

    def client_loop(i: int) -> float:
        client = grpcclient.InferenceServerClient(url)
        try:
            submit(volume, url, client=client, timeout_s=timeout_s)  # warm-up, not measured
            ready.wait()
            for _ in range(requests_per_client):
                latencies[i].append(submit(volume, url, client=client, timeout_s=timeout_s).latency_s)
            return time.perf_counter()
        finally:
            client.close()

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = [pool.submit(client_loop, i) for i in range(concurrency)]
        ready.wait()
        start = time.perf_counter()
        ends = [f.result() for f in futures]
    elapsed = max(ends) - start
    flat = [x for per in latencies for x in per]
    for x in flat:
        metrics.observe(f"triton-c{concurrency}-i{instances}", int(volume.hu.shape[0]), x)
    throughput = len(flat) / elapsed
    metrics.set_throughput(concurrency, int(instances) if instances.isdigit() else 0, throughput)
    return {
        "concurrency": concurrency,
        "instances": instances,
        "requests": len(flat),
        "elapsed_s": elapsed,
        "throughput_per_s": throughput,
        "p50_ms": percentile(flat, 50) * 1e3,
        "p95_ms": percentile(flat, 95) * 1e3,
    }


def latency_vs_slices(cfg: ThroughputConfig, url: str) -> dict[str, Any]:
    """Median single-client latency per slice count and the least-squares fit."""
    client = grpcclient.InferenceServerClient(url)
    medians = []
    try:
        for n in cfg.fit_slices:
            volume = phantom_volume(n, cfg.size, cfg.seed + n)
            submit(volume, url, client=client, timeout_s=cfg.timeout_s)
            lat = [submit(volume, url, client=client, timeout_s=cfg.timeout_s).latency_s
                   for _ in range(cfg.fit_repeats)]
            medians.append(statistics.median(lat))
    finally:
        client.close()
    fit = fit_latency(cfg.fit_slices, medians)
    return {"slices": list(cfg.fit_slices), "median_s": medians, "fit": fit.to_dict()}


def to_markdown(report: dict[str, Any]) -> str:
    m, cfg = report["machine"], report["config"]
    points = markdown_table(
        ["instances", "concurrency", "requests", "patients/s", "p50 (ms)", "p95 (ms)"],
        [[p["instances"], p["concurrency"], p["requests"], f"{p['throughput_per_s']:.3f}",
          f"{p['p50_ms']:.0f}", f"{p['p95_ms']:.0f}"] for p in report["points"]],
    )
    memory = markdown_table(
        ["instances", "server RSS peak (MiB)", "GPU memory peak"],
        [[k, f"{v['server_rss_peak_bytes'] / 2**20:.0f}" if v["server_rss_peak_bytes"] else "n/a",
          v["gpu_memory_peak"]] for k, v in report["memory"].items()],
    )
    fit = report["latency_vs_slices"]["fit"]
    return "\n".join([
        "# Throughput and scaling",
        "",
        machine_line(m) + f"; series "
        f"{cfg['slices']}x{cfg['size']}x{cfg['size']}; heavy models {', '.join(cfg['heavy_models'])}.",
        "",
        points,
        "",
        "## Memory peaks",
        "",
        memory,
        "",
        f"Client peak RSS (ru_maxrss): {report['client_maxrss_bytes'] / 2**20:.0f} MiB.",
        "",
        "## Latency vs slice count",
        "",
        markdown_table(["slices", "median latency (s)"],
                       [[n, f"{s:.3f}"] for n, s in zip(report["latency_vs_slices"]["slices"],
                                                        report["latency_vs_slices"]["median_s"])]),
        "",
        f"Fit: {fit['fixed_s'] * 1e3:.1f} ms fixed + {fit['per_slice_s'] * 1e3:.3f} ms per slice "
        f"(R^2 {fit['r2']:.3f}).",
        "",
    ])


def run(cfg: ThroughputConfig, progress: bool = True) -> dict[str, Any]:
    """The whole sweep; writes the report files into ``cfg.out`` and returns the report."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_resolved_config(out, cfg, "throughput")
    metrics = BenchmarkMetrics("throughput")
    metrics.serve(cfg.metrics_port)
    volume = phantom_volume(cfg.slices, cfg.size, cfg.seed)
    setups = [("as served", None)] if cfg.url else [
        (str(n), repository_with_instances(Path(cfg.model_repository), out / "repositories" / f"instances-{n}", n,
                                           cfg.heavy_models)) for n in cfg.instances]
    points, memory, fit = [], {}, None
    try:
        for label, repository in setups:
            with triton_endpoint(repository, cfg.url, out, log_name=f"tritonserver-{label.replace(' ', '_')}.log",
                                 gpu=cfg.gpu_server) as (url, server):
                metrics_url = server.metrics_url if server is not None else cfg.triton_metrics_url
                pid = server.pid if server is not None else None
                with MemorySampler(pid, metrics_url, cfg.sample_interval_s) as sampler:
                    desc = f"concurrency (instances {label})"
                    for c in progress_bar(cfg.concurrency, desc=desc, disable=not progress):
                        points.append(concurrency_point(url, volume, c, cfg.requests_per_client, cfg.timeout_s,
                                                        metrics, label))
                    if fit is None:
                        fit = latency_vs_slices(cfg, url)
                memory[label] = sampler.summary()
    finally:
        metrics.write(out)
        metrics.close()
    report = {
        "machine": machine_info(),
        "config": dataclasses.asdict(cfg),
        "points": points,
        "memory": memory,
        "client_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "latency_vs_slices": fit,
    }
    write_json(out / "throughput.json", report)
    (out / "throughput.md").write_text(to_markdown(report), encoding="utf-8")
    plot_concurrency(points, out / "throughput.png", f"patients/s vs concurrency ({cfg.slices} slices)",
                     series_key="instances")
    plot_latency_fit(fit["slices"], fit["median_s"], fit["fit"]["fixed_s"], fit["fit"]["per_slice_s"],
                     out / "latency_fit.png", "latency vs slice count (1 client)")
    return report


def parse_args(argv: list[str] | None = None) -> ThroughputConfig:
    d = ThroughputConfig(model_repository="")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_server_arguments(p, d.out, "the repository to serve (copied once per --instances count)")
    p.add_argument("--slices", type=int, default=None, help=f"slices of the series (default {d.slices})")
    p.add_argument("--size", type=int, default=None, help=f"slice side in pixels (default {d.size})")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--concurrency", type=int, nargs="+", default=None, help=f"default {list(d.concurrency)}")
    p.add_argument("--instances", type=int, nargs="+", default=None, help=f"default {list(d.instances)}")
    p.add_argument("--heavy-models", nargs="+", default=list(d.heavy_models))
    p.add_argument("--requests-per-client", type=int, default=None, help=f"default {d.requests_per_client}")
    p.add_argument("--fit-slices", type=int, nargs="+", default=None, help=f"default {list(d.fit_slices)}")
    p.add_argument("--fit-repeats", type=int, default=None, help=f"default {d.fit_repeats}")
    p.add_argument("--sample-interval-s", type=float, default=d.sample_interval_s)
    p.add_argument("--timeout-s", type=float, default=d.timeout_s)
    p.add_argument("--metrics-port", type=int, default=None, help="serve the benchmark's metrics here (0 = free port)")
    p.add_argument("--gpu-server", action="store_true", help="start the servers with GPU support")
    p.add_argument("--triton-metrics-url", default=None, help="with --url: host:8002 of that server (GPU memory)")
    p.add_argument("--quick", action="store_true", help="tests: 8x128 series, concurrency 1 2, 1 instance count")
    a = p.parse_args(argv)
    q = a.quick
    return ThroughputConfig(
        model_repository=a.model_repository, out=a.out, url=a.url,
        slices=a.slices or (8 if q else d.slices), size=a.size or (128 if q else d.size), seed=a.seed,
        concurrency=tuple(a.concurrency or ((1, 2) if q else d.concurrency)),
        instances=tuple(a.instances or ((1,) if q else d.instances)),
        heavy_models=tuple(a.heavy_models),
        requests_per_client=a.requests_per_client or (1 if q else d.requests_per_client),
        fit_slices=tuple(a.fit_slices or ((6, 10) if q else d.fit_slices)),
        fit_repeats=a.fit_repeats or (1 if q else d.fit_repeats),
        sample_interval_s=a.sample_interval_s, timeout_s=a.timeout_s, metrics_port=a.metrics_port,
        gpu_server=a.gpu_server, triton_metrics_url=a.triton_metrics_url,
    )


def main(argv: list[str] | None = None) -> int:
    print(to_markdown(run(parse_args(argv))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
