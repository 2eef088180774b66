"""The benchmark's own Prometheus metrics, next to Triton's on a Grafana board.

Each run creates its own :class:`prometheus_client.CollectorRegistry` (never the global
default registry), optionally serves it on ``--metrics-port`` while the run lasts, and
writes it in the text exposition format to ``<out>/benchmark_metrics.prom`` at the end.

Metrics (all latencies in seconds):

- ``covidct_benchmark_patient_latency_seconds`` (histogram; labels ``benchmark``,
  ``profile``, ``slices``): wall time of one patient series end to end, as the client
  sees it (``profile``: ``triton`` = through the served ensemble, ``naive`` = the
  one-slice-at-a-time baseline).
- ``covidct_benchmark_patients_total`` (counter; same labels): patients measured.
- ``covidct_benchmark_throughput_patients_per_second`` (gauge; labels ``benchmark``,
  ``concurrency``, ``instances``): sustained throughput of a concurrency sweep point.

It also reads Triton's ``/metrics`` text (:func:`read_triton_metric`) for the GPU memory
gauge ``nv_gpu_memory_used_bytes``.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server, write_to_textfile
from prometheus_client.parser import text_string_to_metric_families

from covidct.errors import ServerError

LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0)
"""Histogram buckets (s): from a small series on a GPU to a large one on 2 CPU cores."""

METRICS_FILENAME = "benchmark_metrics.prom"


class BenchmarkMetrics:
    """A fresh registry with the benchmark's metrics; serve and/or write it to a file."""

    def __init__(self, benchmark: str) -> None:
        self.benchmark = benchmark
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "covidct_benchmark_patient_latency_seconds",
            "Wall time of one patient series end to end (seconds)",
            ["benchmark", "profile", "slices"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.patients = Counter(
            "covidct_benchmark_patients",
            "Patient series measured",
            ["benchmark", "profile", "slices"],
            registry=self.registry,
        )
        self.throughput = Gauge(
            "covidct_benchmark_throughput_patients_per_second",
            "Sustained patients per second of a concurrency sweep point",
            ["benchmark", "concurrency", "instances"],
            registry=self.registry,
        )
        self._server = None

    def observe(self, profile: str, slices: int, latency_s: float) -> None:
        """Record one patient's latency (s) under ``profile`` (``triton``/``naive``)."""
        labels = {"benchmark": self.benchmark, "profile": profile, "slices": str(slices)}
        self.latency.labels(**labels).observe(latency_s)
        self.patients.labels(**labels).inc()

    def set_throughput(self, concurrency: int, instances: int, patients_per_s: float) -> None:
        self.throughput.labels(self.benchmark, str(concurrency), str(instances)).set(patients_per_s)

    def serve(self, port: int | None) -> int | None:
        """Serve ``/metrics`` on ``port`` (0 = a free port) while the process runs; returns the port."""
        if port is None:
            return None
        server, _thread = start_http_server(port, registry=self.registry)
        self._server = server
        return int(server.server_port)

    def close(self) -> None:
        """Stop serving (the registry stays readable)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def write(self, out_dir: Path) -> Path:
        """Write the registry to ``out_dir/benchmark_metrics.prom`` (text exposition format)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / METRICS_FILENAME
        write_to_textfile(str(path), self.registry)
        return path


def fetch_metrics_text(metrics_url: str, timeout_s: float = 5.0) -> str:
    """Triton's metrics page (``host:port`` or a full URL; ``/metrics`` is appended)."""
    url = metrics_url if metrics_url.startswith("http") else f"http://{metrics_url}"
    if not url.rstrip("/").endswith("/metrics"):
        url = url.rstrip("/") + "/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - http(s) metrics URL
            return response.read().decode("utf-8")
    except OSError as exc:
        raise ServerError(f"cannot read Triton metrics at {url}: {exc}") from exc


def read_triton_metric(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """``(labels, value)`` of every sample named ``name`` in a metrics page."""
    samples = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                samples.append((dict(sample.labels), float(sample.value)))
    return samples
