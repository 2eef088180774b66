"""Drive Triton's real ``perf_analyzer`` against the ensemble and each step.

Realistic request data: a phantom series (int16 HU ``[N, S, S]``, spacing in mm) is run
through the pipeline in-process (the steps' own functions and the served ONNX files), so
every model gets the tensors it sees in production: the ensemble and ``preprocess`` the
HU volume, the networks their ``[K, C, S, S]`` / ``[L, C, S, S]`` inputs, ``vote`` the
networks' outputs, the lung mask and the assessment. Each model's tensors are written as a
perf_analyzer ``--input-data`` JSON file (``b64`` content with its ``shape``).

For each model, the binary sweeps ``--concurrency-range`` over gRPC, writes its CSV
(``-f``), and the CSV is parsed into our JSON, Markdown and PNG plots (throughput and
p50/p95 latency vs concurrency). perf_analyzer reports latencies in microseconds; our
outputs use milliseconds.

    python -m covidct.benchmarks.perf_analyzer --model-repository demo_output/model_repository --out bench_out/pa
    python -m covidct.benchmarks.perf_analyzer --model-repository REPO --url localhost:8001 --models covid_ct_pipeline

The binary is the one ``make setup`` installs (``perf_analyzer/bin`` in the Triton folder:
``$COVIDCT_TRITON_DIR``, else ``.triton`` under the current directory; override with
``$COVIDCT_PERF_ANALYZER``); its libraries come from ``perf_analyzer/lib`` and
``nvidia_pytriton.libs`` beside it. The command lines are in ``perf_analyzer_commands.txt``.
"""

from __future__ import annotations

import argparse
import base64
import csv
import dataclasses
import json
import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covidct.progress import progress as progress_bar
from covidct.benchmarks.common import (
    add_server_arguments,
    machine_info,
    machine_line,
    markdown_table,
    phantom_volume,
    triton_dir,
    triton_endpoint,
    write_json,
    write_resolved_config,
)
from covidct.benchmarks.naive_baseline import NaiveBaseline
from covidct.benchmarks.plots import plot_concurrency
from covidct.errors import BenchmarkToolError
from covidct.serving.tensors import CLASSIFIER_INPUT

PERF_ANALYZER_ENV = "COVIDCT_PERF_ANALYZER"
ALL_MODELS = ("covid_ct_pipeline", "preprocess", "classifier", "segmenter", "vote")


@dataclass(frozen=True)
class PerfAnalyzerConfig:
    """One perf_analyzer sweep.

    models: models to measure. slices / size: the phantom series (``[slices, size, size]``).
    concurrency: ``(start, end, step)`` of ``--concurrency-range``.
    measurement_mode: ``count_windows`` (``measurement_requests`` requests per window) or
    ``time_windows`` (``measurement_interval_ms`` per window). max_trials: windows before
    perf_analyzer gives up on stability (``stability_pct``: largest spread, in percent,
    of throughput and latency over its last 3 windows; when it is not reached the binary
    exits with status 2 and writes no CSV. 50 suits a shared 2-core box; tests use 1000,
    i.e. "take what you measured"). timeout_s: per model run.
    """

    model_repository: str
    out: str = "bench_output/perf_analyzer"
    url: str | None = None
    models: tuple[str, ...] = ALL_MODELS
    slices: int = 65
    size: int = 512
    seed: int = 0
    concurrency: tuple[int, int, int] = (1, 4, 1)
    measurement_mode: str = "count_windows"
    measurement_requests: int = 10
    measurement_interval_ms: int = 5000
    stability_pct: float = 50.0
    max_trials: int = 10
    timeout_s: float = 600.0
    gpu_server: bool = False


def perf_analyzer_binary() -> Path:
    """The installed binary (``$COVIDCT_PERF_ANALYZER``, else ``<triton dir>/perf_analyzer/bin``,
    :func:`covidct.benchmarks.common.triton_dir`)."""
    env = os.environ.get(PERF_ANALYZER_ENV)
    path = Path(env) if env else triton_dir() / "perf_analyzer" / "bin" / "perf_analyzer"
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise BenchmarkToolError(
            f"{path}: perf_analyzer binary not found; run `make setup` (installs the 2.50 binary) "
            f"or set {PERF_ANALYZER_ENV}"
        )
    return path


def perf_analyzer_env(binary: Path) -> dict[str, str]:
    """The environment with the binary's libraries (libb64, libcudart) on ``LD_LIBRARY_PATH``."""
    root = binary.parent.parent
    libs = [root / "lib", root.parent / "nvidia_pytriton.libs"]
    env = dict(os.environ)
    parts = [str(p) for p in libs if p.is_dir()] + [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p]
    env["LD_LIBRARY_PATH"] = ":".join(parts)
    return env


def model_inputs(repository: Path, slices: int, size: int, seed: int) -> dict[str, dict[str, np.ndarray]]:
    """Realistic request tensors of every model for one phantom series (see module docstring)."""
    from covidct.serving import tensors as T  # the serving stack, only here
    from covidct.serving.steps import preprocess_step, slice_positions

    naive = NaiveBaseline(repository)
    volume = phantom_volume(slices, size, seed)
    spacing = np.asarray(volume.spacing_mm, dtype=np.float32)
    prepared = preprocess_step(volume.hu, spacing, naive.config)
    probability = naive.run_network("classifier", prepared[T.CLASSIFIER_INPUT]).astype(np.float32)
    infection = naive.run_network("segmenter", prepared[T.SEGMENTER_INPUT]).astype(np.float32)
    volume_inputs = {T.HU_VOLUME: volume.hu, T.SPACING_MM: spacing,
                     T.SLICE_POSITIONS_MM: slice_positions(volume)}
    return {
        T.ENSEMBLE: volume_inputs,
        "preprocess": volume_inputs,
        "classifier": {T.CLASSIFIER_INPUT: prepared[T.CLASSIFIER_INPUT]},
        "segmenter": {T.SEGMENTER_INPUT: prepared[T.SEGMENTER_INPUT]},
        "vote": {
            T.PROBABILITY: probability,
            T.INFECTION_PROBABILITY: infection,
            T.LUNG_MASK: prepared[T.LUNG_MASK],
            T.MASK_SPACING_MM: prepared[T.MASK_SPACING_MM],
            T.ASSESSMENT: prepared[T.ASSESSMENT],
        },
    }


def write_input_data(tensors: dict[str, np.ndarray], path: Path) -> Path:
    """perf_analyzer ``--input-data`` JSON: one request, each tensor as ``b64`` + ``shape``."""
    request = {
        name: {"content": [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in a.reshape(-1)],
               "shape": list(a.shape)}
        if a.dtype == np.object_
        else {"b64": base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii"), "shape": list(a.shape)}
        for name, a in tensors.items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"data": [request]}), encoding="utf-8")
    return path


def command(cfg: PerfAnalyzerConfig, binary: Path, model: str, url: str, data: Path, csv_path: Path) -> list[str]:
    """The perf_analyzer argv for one model."""
    start, end, step = cfg.concurrency
    argv = [
        str(binary), "-m", model, "-u", url, "-i", "grpc",
        "--input-data", str(data),
        "--concurrency-range", f"{start}:{end}:{step}",
        "--measurement-mode", cfg.measurement_mode,
        "--stability-percentage", str(cfg.stability_pct),
        "--max-trials", str(cfg.max_trials),
        "-f", str(csv_path),
    ]
    if cfg.measurement_mode == "count_windows":
        argv += ["--measurement-request-count", str(cfg.measurement_requests)]
    else:
        argv += ["--measurement-interval", str(cfg.measurement_interval_ms)]
    return argv


def parse_csv(path: Path) -> list[dict[str, Any]]:
    """perf_analyzer's ``-f`` CSV -> points: ``concurrency``, ``throughput_per_s``,
    ``p50_ms``/``p90_ms``/``p95_ms``/``p99_ms``/``avg_ms`` and the server-side columns (ms)."""
    if not path.is_file():
        raise BenchmarkToolError(f"{path}: perf_analyzer wrote no CSV")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "Concurrency" not in rows[0]:
        raise BenchmarkToolError(f"{path}: no 'Concurrency' rows in perf_analyzer's CSV")
    points = []
    for row in rows:
        us = {k: float(v) for k, v in row.items() if k and v not in (None, "") and k != "Concurrency"}
        point = {"concurrency": int(float(row["Concurrency"])), "throughput_per_s": us.pop("Inferences/Second")}
        for q in ("p50", "p90", "p95", "p99"):
            point[f"{q}_ms"] = us.pop(f"{q} latency") / 1e3
        point["avg_ms"] = us.pop("Avg latency", float("nan")) / 1e3
        point.update({f"{k.lower().replace(' ', '_').replace('/', '_').replace('+', '_')}_ms": v / 1e3
                      for k, v in us.items()})
        points.append(point)
    return sorted(points, key=lambda p: p["concurrency"])


def run_model(cfg: PerfAnalyzerConfig, binary: Path, model: str, url: str, data: Path, out: Path) -> dict[str, Any]:
    """One model's sweep: run the binary, keep its log, parse the CSV, plot."""
    csv_path = out / f"{model}.csv"
    argv = command(cfg, binary, model, url, data, csv_path)
    try:
        proc = subprocess.run(argv, env=perf_analyzer_env(binary), capture_output=True, text=True,
                              timeout=cfg.timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise BenchmarkToolError(f"perf_analyzer on {model} ran past {cfg.timeout_s} s") from exc
    (out / f"{model}.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
        hint = ""
        if "stable measurement" in tail:
            hint = "\n(raise --stability-percentage or --max-trials on a busy machine)"
        raise BenchmarkToolError(f"perf_analyzer on {model} exited with {proc.returncode}:\n{tail}{hint}")
    points = parse_csv(csv_path)
    plot_concurrency(points, out / f"{model}.png", f"perf_analyzer: {model}")
    return {"model": model, "command": shlex.join(argv), "points": points}


def to_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    rows = [[r["model"], p["concurrency"], f"{p['throughput_per_s']:.2f}", f"{p['p50_ms']:.1f}",
             f"{p['p95_ms']:.1f}", f"{p['p99_ms']:.1f}"] for r in report["results"] for p in r["points"]]
    cfg = report["config"]
    return "\n".join([
        "# perf_analyzer sweeps",
        "",
        machine_line(m) + f"; input: phantom "
        f"{cfg['slices']}x{cfg['size']}x{cfg['size']} ({report['selected']} selected slices), gRPC, "
        f"{cfg['measurement_mode']}.",
        "",
        markdown_table(["model", "concurrency", "inferences/s", "p50 (ms)", "p95 (ms)", "p99 (ms)"], rows),
        "",
    ])


def run(cfg: PerfAnalyzerConfig, progress: bool = True) -> dict[str, Any]:
    """Write input data, sweep every model, write JSON/Markdown/PNGs into ``cfg.out``."""
    binary = perf_analyzer_binary()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_resolved_config(out, cfg, "perf_analyzer")
    tensors = model_inputs(Path(cfg.model_repository), cfg.slices, cfg.size, cfg.seed)
    unknown = sorted(set(cfg.models) - set(tensors))
    if unknown:
        raise BenchmarkToolError(f"unknown models {unknown}; expected some of {list(tensors)}")
    data = {m: write_input_data(tensors[m], out / "input_data" / f"{m}.json") for m in cfg.models}
    results = []
    with triton_endpoint(Path(cfg.model_repository), cfg.url, out, gpu=cfg.gpu_server) as (url, _server):
        for model in progress_bar(cfg.models, desc="perf_analyzer (models)", disable=not progress):
            results.append(run_model(cfg, binary, model, url, data[model], out))
    (out / "perf_analyzer_commands.txt").write_text("\n".join(r["command"] for r in results) + "\n", encoding="utf-8")
    report = {"machine": machine_info(), "config": dataclasses.asdict(cfg),
              "selected": int(tensors["classifier"][CLASSIFIER_INPUT].shape[0]), "results": results}
    write_json(out / "perf_analyzer.json", report)
    (out / "perf_analyzer.md").write_text(to_markdown(report), encoding="utf-8")
    return report


def parse_args(argv: list[str] | None = None) -> PerfAnalyzerConfig:
    d = PerfAnalyzerConfig(model_repository="")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_server_arguments(p, d.out, "served repository (its ONNX files make the step inputs)")
    p.add_argument("--models", nargs="+", default=list(d.models), choices=ALL_MODELS)
    p.add_argument("--slices", type=int, default=d.slices)
    p.add_argument("--size", type=int, default=d.size)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--concurrency-range", default="1:4:1", help="start:end[:step] (default 1:4:1)")
    p.add_argument("--measurement-mode", choices=("count_windows", "time_windows"), default=d.measurement_mode)
    p.add_argument("--measurement-request-count", type=int, default=d.measurement_requests)
    p.add_argument("--measurement-interval", type=int, default=d.measurement_interval_ms, help="ms (time_windows)")
    p.add_argument("--stability-percentage", type=float, default=d.stability_pct)
    p.add_argument("--max-trials", type=int, default=d.max_trials)
    p.add_argument("--timeout-s", type=float, default=d.timeout_s)
    p.add_argument("--gpu-server", action="store_true", help="start the server with GPU support")
    a = p.parse_args(argv)
    parts = [int(x) for x in a.concurrency_range.split(":")]
    concurrency = (parts[0], parts[1] if len(parts) > 1 else parts[0], parts[2] if len(parts) > 2 else 1)
    return PerfAnalyzerConfig(
        model_repository=a.model_repository, out=a.out, url=a.url, models=tuple(a.models), slices=a.slices,
        size=a.size, seed=a.seed, concurrency=concurrency, measurement_mode=a.measurement_mode,
        measurement_requests=a.measurement_request_count, measurement_interval_ms=a.measurement_interval,
        stability_pct=a.stability_percentage, max_trials=a.max_trials, timeout_s=a.timeout_s,
        gpu_server=a.gpu_server,
    )


def main(argv: list[str] | None = None) -> int:
    print(to_markdown(run(parse_args(argv))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
