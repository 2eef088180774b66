"""The benchmark suite in its quick mode against the real Triton server the integration tests share
(and, for the instance sweep, servers of its own). The outputs must parse: Markdown rows,
JSON keys, valid PNG files, the Prometheus text file, perf_analyzer's CSV. No test
asserts a time."""

from __future__ import annotations

import json
import re

import pytest

from covidct.benchmarks.common import is_png, parse_markdown_table
from covidct.benchmarks.prom_metrics import read_triton_metric
from covidct.errors import BenchmarkToolError
from covidct.export.pbtxt import read_config

pytestmark = pytest.mark.integration


def test_paper_comparison_quick(triton_server, model_repository, tmp_path):
    from covidct.benchmarks.paper_comparison import main

    out = tmp_path / "paper"
    assert main(["--model-repository", str(model_repository), "--url", triton_server.grpc_url,
                 "--quick", "--out", str(out)]) == 0
    rows = parse_markdown_table((out / "paper_comparison.md").read_text())
    assert [r["slices"] for r in rows] == ["8", "12"]
    assert all(r["paper P100 (s)"].endswith("*") and float(r["ours / naive"]) > 0 for r in rows)
    report = json.loads((out / "paper_comparison.json").read_text())
    assert {"machine", "config", "rows", "fit", "paper_table5_s"} <= set(report)
    commit = report["machine"]["git_commit"]
    assert commit == "unknown" or re.fullmatch(r"[0-9a-f]{40}", commit), commit
    row = report["rows"][0]
    assert row["selected"] > 0 and row["ours_median_s"] > 0 and row["naive_median_s"] > 0
    assert row["agreement"]["same_selected_slices"] and row["agreement"]["same_verdict"]
    assert row["agreement"]["max_abs_probability_difference"] < 1e-3
    steps = row["server_ms_per_request"]
    assert {"covid_ct_pipeline", "preprocess", "classifier", "segmenter", "vote"} == set(steps)
    assert steps["classifier"]["requests"] == 1 and steps["classifier"]["compute_infer_ms"] > 0
    assert is_png(out / "paper_comparison.png")
    assert json.loads((out / "paper_comparison_config.json").read_text())["slices"] == [8, 12]
    counts = read_triton_metric((out / "benchmark_metrics.prom").read_text(),
                                "covidct_benchmark_patient_latency_seconds_count")
    assert {(s["profile"], s["slices"]) for s, _ in counts} == {("triton", "8"), ("triton", "12"),
                                                                ("naive", "8"), ("naive", "12")}


@pytest.mark.slow
def test_perf_analyzer_sweep_reads_csv(triton_server, model_repository, tmp_path):
    from covidct.benchmarks.perf_analyzer import main, perf_analyzer_binary

    try:
        perf_analyzer_binary()
    except BenchmarkToolError as exc:
        pytest.skip(f"perf_analyzer binary absent (`make setup` not run): {exc}")
    out = tmp_path / "pa"
    assert main(["--model-repository", str(model_repository), "--url", triton_server.grpc_url, "--out", str(out),
                 "--models", "covid_ct_pipeline", "classifier", "--slices", "8", "--size", "128",
                 "--concurrency-range", "1:2", "--measurement-request-count", "3", "--max-trials", "3",
                 "--stability-percentage", "1000"]) == 0
    report = json.loads((out / "perf_analyzer.json").read_text())
    for result in report["results"]:
        assert [p["concurrency"] for p in result["points"]] == [1, 2]
        assert all(p["throughput_per_s"] > 0 and p["p95_ms"] > 0 for p in result["points"])
        assert (out / f"{result['model']}.csv").read_text().startswith("Concurrency,")
        assert is_png(out / f"{result['model']}.png")
    rows = parse_markdown_table((out / "perf_analyzer.md").read_text())
    assert {r["model"] for r in rows} == {"covid_ct_pipeline", "classifier"}
    assert "--input-data" in (out / "perf_analyzer_commands.txt").read_text()


def test_throughput_against_running_server(triton_server, model_repository, tmp_path):
    from covidct.benchmarks.throughput import main

    out = tmp_path / "tp"
    assert main(["--model-repository", str(model_repository), "--url", triton_server.grpc_url, "--out", str(out),
                 "--quick"]) == 0
    report = json.loads((out / "throughput.json").read_text())
    assert [p["concurrency"] for p in report["points"]] == [1, 2]
    assert report["points"][1]["requests"] == 2 and report["points"][1]["throughput_per_s"] > 0
    assert report["memory"]["as served"]["server_rss_peak_bytes"] is None  # no pid behind --url
    assert report["client_maxrss_bytes"] > 0
    assert report["latency_vs_slices"]["fit"]["points"] == 2
    assert len(parse_markdown_table((out / "throughput.md").read_text())) == 2
    assert is_png(out / "throughput.png") and is_png(out / "latency_fit.png")


@pytest.mark.slow
def test_throughput_instance_sweep_starts_modified_copy(model_repository, tmp_path):
    from covidct.benchmarks.throughput import main

    out = tmp_path / "inst"
    assert main(["--model-repository", str(model_repository), "--out", str(out), "--quick",
                 "--instances", "2", "--concurrency", "2", "--fit-slices", "6", "10"]) == 0
    copy = out / "repositories" / "instances-2"
    assert read_config(copy / "classifier").instance_group[0].count == 2
    assert read_config(model_repository / "classifier").instance_group[0].count == 1  # source untouched
    report = json.loads((out / "throughput.json").read_text())
    memory = report["memory"]["2"]
    assert memory["server_rss_peak_bytes"] > 0 and memory["gpu_memory_peak"] == "n/a - no GPU"
    assert report["points"][0]["instances"] == "2"
