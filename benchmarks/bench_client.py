"""Client-side time split and throughput of ``covidct-client`` against a Triton server.

Part 1 (time split, concurrency 1): for a synthetic 406-slice 512x512 phantom written as
a DICOM folder and, when ``COVIDCT_DATA_DIR`` is set, the real JPEG Lossless series P002,
each request is repeated per transport (system shared memory, plain gRPC) and split into
read/decode, prepare (shared-memory copy + registration, or tensor building), round trip
and total. With one request in flight the delta of Triton's cumulative statistics of the
ensemble is that request's server time, so transfer = round trip - server.

Part 2 (throughput): ``--patients`` phantom DICOM folders (``--tp-slices`` x ``--size``)
through :func:`covidct.client.batch.submit_many` at each ``--concurrency``; patients/s of the
whole batch (reading included).

    python -m covidct.benchmarks.bench_client --url localhost:8001
    python -m covidct.benchmarks.bench_client --model-repository demo_output/model_repository

Writes ``bench_client.json`` into ``--output``. Never asserted in tests.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import tritonclient.grpc as grpcclient

from covidct.benchmarks.common import machine_info, triton_endpoint, write_json
from covidct.client.batch import submit_many
from covidct.client.submit import PipelineClient, read_volume
from covidct.client.transport import TransportConfig
from covidct.preprocessing.io.series_writer import write_dicom_series
from covidct.preprocessing.synthetic.phantom import make_phantom

ENSEMBLE = "covid_ct_pipeline"


def ensemble_ns(client: grpcclient.InferenceServerClient) -> tuple[int, int]:
    """(successful requests, total ns) of the ensemble so far (cumulative)."""
    stats = client.get_inference_statistics(model_name=ENSEMBLE, as_json=True)["model_stats"][0]
    success = stats["inference_stats"].get("success", {})
    return int(success.get("count", 0)), int(success.get("ns", 0))


def settled_stats(client: grpcclient.InferenceServerClient, count: int, wait_s: float = 2.0) -> tuple[int, int]:
    """The ensemble's statistics once they count ``count`` requests (Triton updates them
    just after the response is sent), or the latest after ``wait_s`` seconds."""
    deadline = time.monotonic() + wait_s
    stats = ensemble_ns(client)
    while stats[0] < count and time.monotonic() < deadline:
        time.sleep(0.01)
        stats = ensemble_ns(client)
    return stats


def time_split(url: str, series: Path, label: str, repeats: int) -> list[dict[str, Any]]:
    """Median split per transport for one series (first request per transport is a warm-up)."""
    rows = []
    reads = []
    for _ in range(repeats):
        volume, read_s = read_volume(series)
        reads.append(read_s)
    for mode in ("on", "off"):
        with PipelineClient(url, transport=TransportConfig(shared_memory=mode)) as client:
            client.infer_volume(volume)
            samples = []
            for _ in range(repeats):
                before = ensemble_ns(client.grpc)
                result = client.infer_volume(volume)
                after = settled_stats(client.grpc, before[0] + 1)
                server_s = (after[1] - before[1]) / 1e9 if after[0] - before[0] == 1 else float("nan")
                t = result.timings
                samples.append((t.prepare_s, t.round_trip_s, server_s))
        prepare, round_trip, server = (statistics.median(s[i] for s in samples) for i in range(3))
        read = statistics.median(reads)
        rows.append({
            "series": label,
            "slices": volume.num_slices,
            "shape": list(volume.hu.shape),
            "megabytes": volume.hu.nbytes / 1e6,
            "transport": result.transport,
            "read_s": read,
            "prepare_s": prepare,
            "round_trip_s": round_trip,
            "server_s": server,
            "transfer_s": prepare + round_trip - server,
            "total_s": read + prepare + round_trip,
            "verdict": result.verdict,
            "mask_megabytes": (result.lung_mask.nbytes + result.infection_mask.nbytes) / 1e6,
        })
        print(
            f"{label:<22} {result.transport:<13} read {read:6.2f} s  prepare {prepare:6.3f} s  "
            f"round trip {round_trip:6.2f} s  server {server:6.2f} s  "
            f"-> transfer {prepare + round_trip - server:6.3f} s  "
            f"total {read + prepare + round_trip:6.2f} s",
            flush=True,
        )
    return rows


def throughput(url: str, folders: list[Path], levels: list[int]) -> list[dict[str, Any]]:
    rows = []
    submit_many(folders[:1], url, concurrency=1)  # warm-up
    for level in levels:
        start = time.perf_counter()
        outcomes = submit_many(folders, url, concurrency=level)
        elapsed = time.perf_counter() - start
        failed = sum(not o.ok for o in outcomes)
        rows.append({"concurrency": level, "patients": len(folders), "seconds": elapsed,
                     "patients_per_s": len(folders) / elapsed, "failed": failed})
        print(f"concurrency {level}: {len(folders)} patients in {elapsed:6.1f} s = "
              f"{len(folders) / elapsed:5.2f} patients/s ({failed} failed)", flush=True)
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        url, _server = stack.enter_context(triton_endpoint(args.model_repository, args.url, output))
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_client_")))
        split_rows = []
        if args.split_slices > 0:
            phantom_dir = work / "phantom"
            phantom = make_phantom(args.split_slices, size=args.size, covid=True, seed=7)
            write_dicom_series(phantom.volume, phantom_dir)
            split_rows += time_split(url, phantom_dir, f"phantom {args.split_slices}x{args.size}", args.repeats)
        data_dir = os.environ.get("COVIDCT_DATA_DIR", "")
        if data_dir and (Path(data_dir) / "P002").is_dir():
            split_rows += time_split(url, Path(data_dir) / "P002", "P002 (JPEG Lossless)", args.repeats)
        folders = []
        for i in range(args.patients):
            folder = work / f"patient{i:02d}"
            phantom = make_phantom(args.tp_slices, size=args.size, covid=i % 2 == 0, seed=50 + i)
            write_dicom_series(phantom.volume, folder)
            folders.append(folder)
        tp_rows = throughput(url, folders, args.concurrency) if folders else []
    report = {"machine": machine_info(), "time_split": split_rows, "throughput": tp_rows}
    write_json(output / "bench_client.json", report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None, help="gRPC endpoint of a running server")
    parser.add_argument("--model-repository", type=Path, default=None, help="start a server on this repository")
    parser.add_argument("--split-slices", type=int, default=406, help="phantom slices for the time split (0 = skip)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--patients", type=int, default=8, help="phantom patients for the throughput part")
    parser.add_argument("--tp-slices", type=int, default=120)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--output", type=Path, default=Path("bench_output"))
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
