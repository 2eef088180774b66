"""Unit tests of the benchmark suite's pieces (no server): statistics, tables, the
perf_analyzer CSV and input-data formats, instance-count copies, Prometheus metrics,
memory sampling, plots, where the suite looks for git and the Triton installation, and
the committed result files. No test asserts a time."""

from __future__ import annotations

import base64
import json
import os
import re
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from covidct.benchmarks.common import (
    UNKNOWN,
    fit_latency,
    git_commit,
    git_dirty,
    is_png,
    machine_info,
    machine_line,
    markdown_table,
    parse_markdown_table,
    triton_dir,
)
from covidct.benchmarks.memory import NO_GPU, MemorySampler, tree_rss_bytes
from covidct.benchmarks.paper_comparison import PAPER_TABLE5_S, paper_seconds, parse_args
from covidct.benchmarks.perf_analyzer import PERF_ANALYZER_ENV, parse_csv, perf_analyzer_binary, write_input_data
from covidct.benchmarks.plots import plot_concurrency, plot_latency_fit, plot_paper_comparison
from covidct.benchmarks.prom_metrics import BenchmarkMetrics, read_triton_metric
from covidct.benchmarks.throughput import parse_args as throughput_args
from covidct.benchmarks.throughput import repository_with_instances
from covidct.errors import BenchmarkToolError, ConfigError
from covidct.app.triton_install import TRITON_DIR_ENV
from covidct.export.config import DEFAULT_SOURCE_REPOSITORY
from covidct.export.pbtxt import read_config

RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
# Absolute paths of a machine: results must name files relative to the repository.
ABSOLUTE_PATH = re.compile(r"(?<![\w.])/(?:work|tmp|home|root|opt|usr|var|mnt|Users)/")

# The header perf_analyzer 2.50 writes with -f (gRPC, no --verbose-csv), seen here; latencies in us.
PA_HEADER = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,"
    "Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,"
    "p50 latency,p90 latency,p95 latency,p99 latency"
)


def test_fit_recovers_fixed_and_per_slice_cost():
    slices = [35, 65, 130, 406]
    fit = fit_latency(slices, [0.2 + 0.004 * n for n in slices])
    assert fit.fixed_s == pytest.approx(0.2)
    assert fit.per_slice_s == pytest.approx(0.004)
    assert fit.r2 == pytest.approx(1.0)


def test_fit_needs_two_slice_counts():
    with pytest.raises(ConfigError, match="2 distinct slice counts"):
        fit_latency([35, 35], [1.0, 1.1])


def test_markdown_table_roundtrip_first_table_only():
    text = markdown_table(["slices", "s"], [[35, "1.0"], [406, "9.5"]]) + "\n\nfoot\n\n" + markdown_table(["x"], [[1]])
    assert parse_markdown_table(text) == [{"slices": "35", "s": "1.0"}, {"slices": "406", "s": "9.5"}]


def test_paper_times_exact_and_interpolated():
    assert paper_seconds(406) == (23.65, False)
    value, interpolated = paper_seconds(45)
    assert interpolated and PAPER_TABLE5_S[35] < value < PAPER_TABLE5_S[52]


def test_cli_overrides_defaults():
    cfg = parse_args(["--model-repository", "r", "--quick", "--repeats", "4", "--slices", "9"])
    assert (cfg.slices, cfg.size, cfg.repeats, cfg.naive_repeats) == ((9,), 128, 4, 1)
    assert parse_args(["--model-repository", "r"]).slices == tuple(PAPER_TABLE5_S)


def test_perf_analyzer_csv_parsed_to_ms(tmp_path):
    path = tmp_path / "pa.csv"
    path.write_text(PA_HEADER + "\n2,4.5,10,20,30,40,50,60,70,1000,2000,3000,4000\n"
                    "1,2.5,10,20,30,40,50,60,70,500,600,700,800\n")
    points = parse_csv(path)
    assert [p["concurrency"] for p in points] == [1, 2]
    assert points[1]["throughput_per_s"] == 4.5
    assert (points[1]["p50_ms"], points[1]["p95_ms"], points[1]["p99_ms"]) == (1.0, 3.0, 4.0)
    assert points[0]["server_compute_infer_ms"] == pytest.approx(0.05)


def test_perf_analyzer_csv_missing_is_an_error(tmp_path):
    with pytest.raises(BenchmarkToolError, match="wrote no CSV"):
        parse_csv(tmp_path / "absent.csv")


def test_input_data_json_b64_roundtrip(tmp_path):
    hu = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4) - 1000
    spacing = np.array([1.0, 0.7, 0.7], dtype=np.float32)
    data = json.loads(write_input_data({"HU_VOLUME": hu, "SPACING_MM": spacing}, tmp_path / "d.json").read_text())
    request = data["data"][0]
    assert request["HU_VOLUME"]["shape"] == [2, 3, 4]
    back = np.frombuffer(base64.b64decode(request["HU_VOLUME"]["b64"]), dtype=np.int16).reshape(2, 3, 4)
    np.testing.assert_array_equal(back, hu)
    assert np.frombuffer(base64.b64decode(request["SPACING_MM"]["b64"]), dtype=np.float32).tolist() == spacing.tolist()


def test_instance_copy_sets_count_and_leaves_source(tmp_path):
    before = (DEFAULT_SOURCE_REPOSITORY / "classifier" / "config.pbtxt").read_text()
    copy = repository_with_instances(DEFAULT_SOURCE_REPOSITORY, tmp_path / "i2", 2, ("classifier", "preprocess"))
    assert read_config(copy / "classifier").instance_group[0].count == 2
    assert read_config(copy / "preprocess").instance_group[0].count == 2
    source_votes = read_config(DEFAULT_SOURCE_REPOSITORY / "vote").instance_group[0].count
    assert read_config(copy / "vote").instance_group[0].count == source_votes  # not a heavy model here
    assert (DEFAULT_SOURCE_REPOSITORY / "classifier" / "config.pbtxt").read_text() == before


def test_instance_copy_unknown_model(tmp_path):
    with pytest.raises(ConfigError, match="heavy model 'nope'"):
        repository_with_instances(DEFAULT_SOURCE_REPOSITORY, tmp_path / "x", 2, ("nope",))


def test_metrics_served_and_written_per_registry(tmp_path):
    first, second = BenchmarkMetrics("a"), BenchmarkMetrics("a")  # no clash: one registry each
    first.observe("triton", 35, 0.3)
    first.observe("naive", 35, 1.2)
    second.observe("triton", 35, 0.4)
    port = first.serve(0)
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        first.close()
    counts = read_triton_metric(text, "covidct_benchmark_patient_latency_seconds_count")
    assert sorted((s["profile"], v) for s, v in counts) == [("naive", 1.0), ("triton", 1.0)]
    path = first.write(tmp_path)
    assert 'slices="35"' in path.read_text()


def test_memory_sampler_own_process_no_gpu():
    with MemorySampler(os.getpid(), None, interval_s=0.05) as sampler:
        pass
    summary = sampler.summary()
    assert summary["server_rss_peak_bytes"] >= tree_rss_bytes(os.getpid()) // 2 > 0
    assert summary["gpu_memory_peak"] == NO_GPU


def test_plots_are_png(tmp_path):
    rows = [{"slices": n, "ours_median_s": 0.01 * n, "ours_p95_s": 0.012 * n, "paper_s": PAPER_TABLE5_S[n],
             "naive_median_s": 0.03 * n} for n in (35, 406)]
    points = [{"concurrency": c, "instances": i, "throughput_per_s": c * 1.0, "p50_ms": 10.0, "p95_ms": 12.0}
              for c in (1, 2) for i in ("1", "2")]
    paths = [
        plot_paper_comparison(rows, tmp_path / "a.png", "t"),
        plot_concurrency(points, tmp_path / "b.png", "t", series_key="instances"),
        plot_latency_fit([35, 406], [0.4, 4.1], 0.05, 0.01, tmp_path / "c.png", "t"),
    ]
    assert all(is_png(p) for p in paths)
    assert not is_png(Path(__file__))


def test_gpu_run_refuses_without_cuda(tmp_path):
    import torch

    from covidct.benchmarks.gpu_run import parse_args as gpu_args
    from covidct.benchmarks.gpu_run import run as gpu_run

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the refusal path is not reachable")
    with pytest.raises(BenchmarkToolError, match="no CUDA GPU visible"):
        gpu_run(gpu_args(["--out", str(tmp_path / "gpu")]))
    assert not (tmp_path / "gpu").exists()


def test_git_info_outside_a_checkout_is_unknown(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a fresh temporary folder is no git checkout
    assert git_commit() == UNKNOWN
    assert git_dirty() == UNKNOWN
    info = machine_info()
    assert (info["git_commit"], info["git_uncommitted_changes"]) == (UNKNOWN, UNKNOWN)
    line = machine_line(info)
    assert "commit `unknown`" in line and "uncommitted" not in line


def test_triton_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(TRITON_DIR_ENV, str(tmp_path))
    assert triton_dir() == tmp_path
    monkeypatch.setenv(TRITON_DIR_ENV, str(tmp_path / "absent"))
    with pytest.raises(BenchmarkToolError, match=rf"absent: no Triton installation folder.*{TRITON_DIR_ENV}="):
        triton_dir()


def test_triton_dir_under_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv(TRITON_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BenchmarkToolError, match=r"\.triton: no Triton installation folder.*make setup"):
        triton_dir()
    (tmp_path / ".triton").mkdir()
    assert triton_dir().resolve() == (tmp_path / ".triton").resolve()


def test_perf_analyzer_binary_missing_in_triton_dir(tmp_path, monkeypatch):
    monkeypatch.delenv(PERF_ANALYZER_ENV, raising=False)
    monkeypatch.setenv(TRITON_DIR_ENV, str(tmp_path))
    with pytest.raises(BenchmarkToolError, match=r"perf_analyzer/bin/perf_analyzer: perf_analyzer binary not found"):
        perf_analyzer_binary()
    binary = tmp_path / "perf_analyzer" / "bin" / "perf_analyzer"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    assert perf_analyzer_binary() == binary


def test_server_benchmarks_share_their_options():
    for parse in (parse_args, throughput_args):
        cfg = parse(["--model-repository", "repo", "--url", "localhost:8001", "--out", "o"])
        assert (cfg.model_repository, cfg.url, cfg.out) == ("repo", "localhost:8001", "o")
    assert throughput_args(["--model-repository", "repo"]).url is None


def test_result_files_carry_no_absolute_paths():
    files = [p for p in RESULTS_DIR.rglob("*") if p.is_file() and p.suffix != ".png"]
    assert any(p.suffix == ".json" for p in files), f"no JSON results under {RESULTS_DIR}"
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            assert not ABSOLUTE_PATH.search(line), f"{path.relative_to(RESULTS_DIR)}:{number}: {line[:120]}"


def test_absolute_path_pattern_control():
    """Control: the pattern finds machine paths and leaves URLs and relative paths alone."""
    assert ABSOLUTE_PATH.search('"out": "/tmp/pc_quiet"')
    assert ABSOLUTE_PATH.search("/home/ci/checkout/.triton/perf_analyzer/bin/perf_analyzer -m vote")
    assert not ABSOLUTE_PATH.search(".triton/perf_analyzer/bin/perf_analyzer --input-data benchmarks/results/x.json")
    assert not ABSOLUTE_PATH.search("http://localhost:8002/metrics and demo_output/model_repository")
