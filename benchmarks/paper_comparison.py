"""Paper 002's Table 5 per-patient times against our pipeline, with a naive baseline.

For each slice count of the paper's Table 5 (:data:`PAPER_TABLE5_S`: 35 ... 406 slices,
Keras on a Tesla P100), a phantom series of that many 512x512 slices is sent
through the client (:func:`covidct.client.submit.submit`) ``--repeats`` times after
``--warmup`` requests; the median and p95 of the end-to-end latency, Triton's per-step
breakdown (deltas of ``get_inference_statistics``, mean ms per request) and the
speed-up over the paper are reported, beside the bytes each step moves per request
(:mod:`covidct.benchmarks.bytes_moved`: tensor sizes at the client boundary and into/out of every
step, computed in-process with the served settings and checked against the answer's
shapes). In the same run the naive baseline
(:mod:`covidct.benchmarks.naive_baseline`: one slice at a time, FP32, no server) classifies the
same series, so every report has a measured ratio ours / naive.

    python -m covidct.benchmarks.paper_comparison --model-repository demo_output/model_repository --out bench_out/paper
    python -m covidct.benchmarks.paper_comparison --model-repository REPO \
        --url localhost:8001 --out OUT  # running server
    python -m covidct.benchmarks.paper_comparison --model-repository REPO --quick --out OUT  # 2 small series, 1 repeat

Writes ``paper_comparison.md``, ``paper_comparison.json``, ``paper_comparison.png``,
``benchmark_metrics.prom`` and ``paper_comparison_config.json`` into ``--out``.
The paper's times include its own preprocessing on a different GPU: the ratio is a
scale, not a like-for-like comparison (``benchmarks/results/README.md``).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from covidct.progress import progress as progress_bar
from covidct.benchmarks.bench_serving import ENSEMBLE, STEPS, breakdown, model_stats
from covidct.benchmarks.bytes_moved import bytes_moved, bytes_table, served_request_tensors
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
from covidct.benchmarks.naive_baseline import NaiveBaseline
from covidct.benchmarks.plots import plot_paper_comparison
from covidct.benchmarks.prom_metrics import BenchmarkMetrics
from covidct.client.result import PipelineResult
from covidct.client.submit import submit
from covidct.serving import tensors as T

PAPER_TABLE5_S = {35: 2.30, 52: 3.15, 56: 3.31, 65: 3.56, 130: 9.88, 198: 12.44, 355: 13.24, 406: 23.65}
"""Paper 002, Table 5: end-to-end seconds per patient by slice count (Keras, Tesla P100)."""

QUICK_SLICES = (8, 12)


@dataclass(frozen=True)
class PaperComparisonConfig:
    """Settings of one comparison run.

    slices: slice counts (paper's Table 5 by default). size: slice side (pixels).
    repeats / warmup: measured / discarded requests per slice count through Triton.
    naive_repeats: runs of the naive baseline per slice count (median reported).
    url: gRPC ``host:port`` of a running server (else one is started on ``model_repository``,
    which the naive baseline always reads). profile: label of the served setup in reports
    and metrics. metrics_port: serve the benchmark's metrics there during the run.
    gpu_server: start the server with GPU support (``KIND_GPU`` repositories).
    naive_backend / naive_device: ``onnxruntime`` on ``cpu``, or ``torch`` (FP32) on
    ``cpu``/``cuda:0`` (:class:`covidct.benchmarks.naive_baseline.NaiveBaseline`).
    """

    model_repository: str
    out: str = "bench_output/paper_comparison"
    url: str | None = None
    slices: tuple[int, ...] = tuple(PAPER_TABLE5_S)
    size: int = 512
    repeats: int = 5
    warmup: int = 1
    naive_repeats: int = 3
    seed: int = 0
    profile: str = "portable-cpu"
    timeout_s: float = 600.0
    metrics_port: int | None = None
    gpu_server: bool = False
    naive_backend: str = "onnxruntime"
    naive_device: str = "cpu"


def paper_seconds(num_slices: int) -> tuple[float, bool]:
    """The paper's time (s) for ``num_slices``; interpolated (second value ``True``) when
    the count is not in Table 5 (linear, clamped at the ends)."""
    if num_slices in PAPER_TABLE5_S:
        return PAPER_TABLE5_S[num_slices], False
    xs = sorted(PAPER_TABLE5_S)
    return float(np.interp(num_slices, xs, [PAPER_TABLE5_S[x] for x in xs])), True


def response_shape_mismatches(tensors: dict[str, np.ndarray], result: PipelineResult) -> list[str]:
    """Answer tensors whose in-process shape (:func:`covidct.benchmarks.bytes_moved.served_request_tensors`)
    differs from the served answer's, or ``MODEL_VERSIONS`` when the entries differ; ``[]`` when all agree."""
    served = {T.SLICE_PROBABILITIES: result.slice_probabilities, T.SELECTED_INDICES: result.selected_indices,
              T.LUNG_SLICES: result.lung_slices, T.LUNG_MASK: result.lung_mask,
              T.INFECTION_MASK: result.infection_mask}
    wrong = [f"{name}: {list(tensors[name].shape)} in-process, {list(np.shape(array))} served"
             for name, array in served.items() if tuple(tensors[name].shape) != tuple(np.shape(array))]
    versions = tuple(v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in tensors[T.MODEL_VERSIONS])
    if versions != tuple(result.model_versions):
        wrong.append(f"{T.MODEL_VERSIONS}: {list(versions)} in-process, {list(result.model_versions)} served")
    return wrong


def measure_row(cfg: PaperComparisonConfig, num_slices: int, url: str, client, naive: NaiveBaseline,
                metrics: BenchmarkMetrics) -> dict[str, Any]:
    """Triton and naive latencies of one phantom series of ``num_slices`` slices."""
    volume = phantom_volume(num_slices, cfg.size, cfg.seed + num_slices)
    for _ in range(cfg.warmup):
        submit(volume, url, client=client, timeout_s=cfg.timeout_s)
    before = {m: model_stats(client, m) for m in (ENSEMBLE, *STEPS)}
    latencies, result = [], None
    for _ in range(cfg.repeats):
        result = submit(volume, url, client=client, timeout_s=cfg.timeout_s)
        latencies.append(result.latency_s)
        metrics.observe("triton", num_slices, result.latency_s)
    after = {m: model_stats(client, m) for m in (ENSEMBLE, *STEPS)}
    naive_runs = []
    for _ in range(cfg.naive_repeats):
        naive_runs.append(naive(volume))
        metrics.observe("naive", num_slices, naive_runs[-1].latency_s)
    naive_lat = [r.latency_s for r in naive_runs]
    paper_s, interpolated = paper_seconds(num_slices)
    ours = statistics.median(latencies)
    naive_median = statistics.median(naive_lat)
    last = naive_runs[-1]
    same_slices = np.array_equal(last.selected_indices, result.selected_indices)
    tensors = served_request_tensors(cfg.model_repository, volume.hu, volume.spacing_mm)
    moved = bytes_moved(Path(cfg.model_repository) / ENSEMBLE, tensors)
    return {
        "slices": num_slices,
        "size": cfg.size,
        "selected": int(len(result.selected_indices)),
        "paper_s": paper_s,
        "paper_interpolated": interpolated,
        "ours_median_s": ours,
        "ours_p95_s": percentile(latencies, 95),
        "ours_ms_per_slice": ours / num_slices * 1e3,
        "ours_all_s": latencies,
        "speedup_vs_paper": paper_s / ours,
        "naive_median_s": naive_median,
        "naive_all_s": naive_lat,
        "naive_parts_s": {"selection": last.selection_s, "preprocess": last.preprocess_s,
                          "inference": last.inference_s, "vote": last.vote_s},
        "ours_over_naive": ours / naive_median,
        "speedup_vs_naive": naive_median / ours,
        "agreement": {
            "same_verdict": last.verdict == result.verdict_code,
            "same_selected_slices": bool(same_slices),
            "max_abs_probability_difference": float(
                np.max(np.abs(last.slice_probabilities - result.slice_probabilities))
            ) if same_slices and len(last.slice_probabilities) else None,
        },
        "server_ms_per_request": {m: breakdown(before[m], after[m]) for m in (ENSEMBLE, *STEPS)},
        "bytes_per_request": moved.to_dict(),
        "bytes_shape_mismatches": response_shape_mismatches(tensors, result),
    }


def to_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: the comparison table, then the per-step server breakdown."""
    rows = report["rows"]
    m, cfg = report["machine"], report["config"]
    main = markdown_table(
        ["slices", "selected", "paper P100 (s)", "ours median (s)", "ours p95 (s)", "ours ms/slice",
         "speed-up vs paper", "naive median (s)", "ours / naive", "same verdict"],
        [[r["slices"], r["selected"], f"{r['paper_s']:.2f}" + ("*" if r["paper_interpolated"] else ""),
          f"{r['ours_median_s']:.3f}", f"{r['ours_p95_s']:.3f}", f"{r['ours_ms_per_slice']:.2f}",
          f"{r['speedup_vs_paper']:.1f}x", f"{r['naive_median_s']:.3f}", f"{r['ours_over_naive']:.2f}",
          "yes" if r["agreement"]["same_verdict"] else "NO"] for r in rows],
    )
    steps = markdown_table(
        ["slices", *[f"{s} (ms)" for s in (ENSEMBLE, *STEPS)]],
        [[r["slices"], *[f"{r['server_ms_per_request'][s].get('total_ms', float('nan')):.1f}"
                         for s in (ENSEMBLE, *STEPS)]] for r in rows],
    )
    fit = report["fit"]
    moved = [(r["slices"], r["bytes_per_request"]) for r in rows if "bytes_per_request" in r]
    mismatches = [f"{r['slices']} slices: {'; '.join(r['bytes_shape_mismatches'])}"
                  for r in rows if r.get("bytes_shape_mismatches")]
    lines = [
        "# Paper 002 Table 5 vs this pipeline",
        "",
        machine_line(m) + f", "
        f"profile `{cfg['profile']}`, {cfg['size']}x{cfg['size']} phantom series, "
        f"{cfg['repeats']} measured requests after {cfg['warmup']} warm-up, naive x{cfg['naive_repeats']}.",
        "",
        main,
        "",
        "`*` = the slice count is not in Table 5; paper time linearly interpolated. "
        "Paper: Keras on a Tesla P100 (its own preprocessing included). Naive: the same models "
        "and preprocessing, one slice at a time in FP32 (ONNX Runtime or torch), no server, same machine and run; "
        "ours / naive below 1 means the served pipeline is faster.",
        "",
        "## Server time per request and step (Triton statistics, mean ms)",
        "",
        steps,
        "",
        f"Latency fit (ours): {fit['fixed_s'] * 1e3:.1f} ms + {fit['per_slice_s'] * 1e3:.3f} ms/slice "
        f"(R^2 {fit['r2']:.3f}, {fit['points']} points).",
        "",
        "## Bytes moved per request and step (tensor sizes, MB = 10^6 bytes)",
        "",
        bytes_table(moved),
        "",
        "client in: `HU_VOLUME` + `SPACING_MM` + `SLICE_POSITIONS_MM` (inside the gRPC message, or a "
        "shared-memory region on the same host); client out: every ensemble output. Step in/out: the "
        "tensors copied between Triton's core and the step's Python stub. Numeric tensors count shape x "
        "itemsize, BYTES tensors their UTF-8 length + 4 bytes per element. Full-volume crossings: step "
        "inputs/outputs at least as large as "
        "`HU_VOLUME`. Sizes computed in-process with the served settings; "
        + ("answer shapes differ from the served ones: " + " | ".join(mismatches) if mismatches
           else "every answer shape and the model versions equal the served answer's."),
        "",
    ]
    return "\n".join(lines)


def run(cfg: PaperComparisonConfig, progress: bool = True) -> dict[str, Any]:
    """Measure every slice count; write the report files into ``cfg.out``; return the report."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_resolved_config(out, cfg, "paper_comparison")
    metrics = BenchmarkMetrics("paper_comparison")
    port = metrics.serve(cfg.metrics_port)
    if port is not None:
        print(f"[paper_comparison] benchmark metrics on http://localhost:{port}/metrics", flush=True)
    naive = NaiveBaseline(cfg.model_repository, backend=cfg.naive_backend, device=cfg.naive_device)
    rows = []
    try:
        with triton_endpoint(Path(cfg.model_repository), cfg.url, out, gpu=cfg.gpu_server) as (url, _server):
            client = grpcclient.InferenceServerClient(url)
            try:
                for n in progress_bar(cfg.slices, desc="paper comparison (slice counts)", disable=not progress):
                    rows.append(measure_row(cfg, n, url, client, naive, metrics))
            finally:
                client.close()
    finally:
        metrics.write(out)
        metrics.close()
    if len({r["slices"] for r in rows}) >= 2:
        fit = fit_latency([r["slices"] for r in rows], [r["ours_median_s"] for r in rows]).to_dict()
    else:
        fit = {"fixed_s": float("nan"), "per_slice_s": float("nan"), "r2": float("nan"), "points": len(rows)}
    report = {"machine": machine_info(), "config": dataclasses.asdict(cfg),
              "paper_table5_s": {str(k): v for k, v in PAPER_TABLE5_S.items()}, "rows": rows, "fit": fit}
    write_json(out / "paper_comparison.json", report)
    (out / "paper_comparison.md").write_text(to_markdown(report), encoding="utf-8")
    plot_paper_comparison(rows, out / "paper_comparison.png",
                          f"{report['machine']['cpu']} ({report['machine']['cpus']} CPUs), profile {cfg.profile}")
    return report


def parse_args(argv: list[str] | None = None) -> PaperComparisonConfig:
    """CLI -> config (CLI values override the dataclass defaults; ``--quick`` = 2 small series)."""
    d = PaperComparisonConfig(model_repository="")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_server_arguments(p, d.out, "the served repository (the naive baseline reads its ONNX files)")
    p.add_argument("--slices", type=int, nargs="+", default=None, help=f"slice counts (default {list(d.slices)})")
    p.add_argument("--size", type=int, default=None, help=f"slice side in pixels (default {d.size})")
    p.add_argument("--repeats", type=int, default=None, help=f"measured requests per series (default {d.repeats})")
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--naive-repeats", type=int, default=None, help=f"naive runs per series (default {d.naive_repeats})")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--profile", default=d.profile, help="label of the served setup")
    p.add_argument("--timeout-s", type=float, default=d.timeout_s)
    p.add_argument("--metrics-port", type=int, default=None, help="serve the benchmark's metrics here (0 = free port)")
    p.add_argument("--gpu-server", action="store_true", help="start the server with GPU support")
    p.add_argument("--naive-backend", choices=NaiveBaseline.BACKENDS, default=d.naive_backend)
    p.add_argument("--naive-device", default=d.naive_device, help="torch device of the naive baseline")
    p.add_argument("--quick", action="store_true", help=f"slices {list(QUICK_SLICES)}, 128 px, 1 repeat (tests)")
    a = p.parse_args(argv)
    quick = a.quick
    return PaperComparisonConfig(
        model_repository=a.model_repository, out=a.out, url=a.url,
        slices=tuple(a.slices or (QUICK_SLICES if quick else d.slices)),
        size=a.size or (128 if quick else d.size),
        repeats=a.repeats or (1 if quick else d.repeats),
        warmup=a.warmup,
        naive_repeats=a.naive_repeats or (1 if quick else d.naive_repeats),
        seed=a.seed, profile=a.profile, timeout_s=a.timeout_s, metrics_port=a.metrics_port,
        gpu_server=a.gpu_server, naive_backend=a.naive_backend, naive_device=a.naive_device,
    )


def main(argv: list[str] | None = None) -> int:
    print(to_markdown(run(parse_args(argv))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
