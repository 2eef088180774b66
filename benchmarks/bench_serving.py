"""Per-patient latency of the served ensemble over gRPC, with Triton's per-step breakdown.

For each slice count, a synthetic phantom series (``--size`` x ``--size`` int16 HU) is
sent ``--repeats`` times (after one warm-up request) with :func:`covidct.client.submit.submit`;
the client-side wall time is reported, and Triton's statistics
(``get_inference_statistics``) give, per model and request, the server-side time split
into queue / compute input / compute infer / compute output.

    python -m covidct.benchmarks.bench_serving --model-repository demo_output/model_repository
    python -m covidct.benchmarks.bench_serving            # trains + exports the demo models first

Prints a table and writes ``bench_serving.json`` into ``--output``. Timings are never
asserted in tests; this is a measurement tool.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import tritonclient.grpc as grpcclient

from covidct.benchmarks.common import machine_info, triton_endpoint, write_json
from covidct.client.submit import submit
from covidct.preprocessing.synthetic.phantom import make_phantom

ENSEMBLE = "covid_ct_pipeline"
STEPS = ("preprocess", "classifier", "segmenter", "vote")
PHASES = ("queue", "compute_input", "compute_infer", "compute_output")


def model_stats(client: grpcclient.InferenceServerClient, model: str) -> dict[str, tuple[int, int]]:
    """``phase -> (count, total ns)`` of one model's cumulative inference statistics."""
    stats = client.get_inference_statistics(model_name=model, as_json=True)["model_stats"][0]["inference_stats"]
    out = {"success": stats.get("success", {})}
    out.update({phase: stats.get(phase, {}) for phase in PHASES})
    return {k: (int(v.get("count", 0)), int(v.get("ns", 0))) for k, v in out.items()}


def breakdown(before: dict, after: dict) -> dict[str, float]:
    """Mean milliseconds per request of each phase between two snapshots."""
    requests = after["success"][0] - before["success"][0]
    if requests <= 0:
        return {}
    result = {"requests": requests, "total_ms": (after["success"][1] - before["success"][1]) / requests / 1e6}
    for phase in PHASES:
        result[f"{phase}_ms"] = (after[phase][1] - before[phase][1]) / requests / 1e6
    return result


def repository_from_demo_models(output: Path, quick: bool) -> Path:
    from covidct.export.config import RepositoryOptions
    from covidct.export.repository import build_repository
    from covidct.training.demo_models import train_demo_models

    checkpoints = train_demo_models(output / "checkpoints", seed=0, quick=quick)
    return build_repository(
        checkpoints["classifier"],
        checkpoints["segmenter"],
        output / "model_repository",
        profile="portable",
        options=RepositoryOptions(overwrite=True),
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    repository = args.model_repository or repository_from_demo_models(output, args.quick)
    rows = []
    with triton_endpoint(Path(repository), None, output) as (url, _server):
        client = grpcclient.InferenceServerClient(url)
        for num_slices in args.slices:
            volume = make_phantom(num_slices, size=args.size, covid=True, seed=num_slices).volume
            submit(volume, url, client=client)  # warm-up
            before = {m: model_stats(client, m) for m in (ENSEMBLE, *STEPS)}
            latencies = []
            selected = 0
            for _ in range(args.repeats):
                result = submit(volume, url, client=client)
                latencies.append(result.latency_s)
                selected = len(result.selected_indices)
            after = {m: model_stats(client, m) for m in (ENSEMBLE, *STEPS)}
            row = {
                "slices": num_slices,
                "size": args.size,
                "selected": selected,
                "megabytes_sent": volume.hu.nbytes / 1e6,
                "latency_s_median": statistics.median(latencies),
                "latency_s_min": min(latencies),
                "latency_s_all": latencies,
                "server": {m: breakdown(before[m], after[m]) for m in (ENSEMBLE, *STEPS)},
            }
            rows.append(row)
            print_row(row)
        client.close()
    report = {"machine": machine_info(), "repository": str(repository), "repeats": args.repeats, "rows": rows}
    write_json(output / "bench_serving.json", report)
    return report


def print_row(row: dict[str, Any]) -> None:
    server = row["server"]
    print(
        f"\n{row['slices']} slices {row['size']}x{row['size']} ({row['megabytes_sent']:.0f} MB sent, "
        f"{row['selected']} selected): client latency median {row['latency_s_median']:.2f} s "
        f"(min {row['latency_s_min']:.2f} s); server ensemble {server[ENSEMBLE].get('total_ms', 0) / 1e3:.2f} s"
    )
    print(f"  {'step':<12} {'total ms':>9} {'queue':>8} {'c.input':>8} {'c.infer':>9} {'c.output':>9}")
    for model in STEPS:
        s = server[model]
        print(
            f"  {model:<12} {s.get('total_ms', 0):>9.1f} {s.get('queue_ms', 0):>8.1f} "
            f"{s.get('compute_input_ms', 0):>8.1f} {s.get('compute_infer_ms', 0):>9.1f} "
            f"{s.get('compute_output_ms', 0):>9.1f}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, default=None, help="served repository (default: build one)")
    parser.add_argument("--slices", type=int, nargs="+", default=[35, 150, 406])
    parser.add_argument("--size", type=int, default=512, help="slice size in pixels")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="quick demo models when building the repository")
    parser.add_argument("--output", type=Path, default=Path("bench_output"))
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
