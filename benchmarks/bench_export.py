"""Exported-network timings: ONNX Runtime CPU latency per slice, ONNX file sizes.

Not a test: exports each network (random weights, probability head, the exporter of
:mod:`covidct.export.onnx_export`) into a temporary folder, then times ONNX Runtime CPU sessions
at each batch size (slices per run) and intra-op thread count. Each figure is the
median of ``--repeats`` runs after one warm-up run; ``ms/slice`` = wall time / slices.
CPU time is reported too: on a shared machine it does not count waiting for a core::

    .venv/bin/python -m covidct.benchmarks.bench_export                       # cnn6@224, resnet50v2_fpn@512
    .venv/bin/python -m covidct.benchmarks.bench_export --networks cnn6:224 --batches 1 16 64 --out bench.json
    .venv/bin/python -m covidct.benchmarks.bench_export \
        --checkpoints training/shipped/classifier training/shipped/segmenter

GPU latency (torch FP16 runner behind Triton) is measured by :mod:`covidct.benchmarks.gpu_run`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from covidct.benchmarks.common import machine_info, median_ms, write_json


def export_random(name: str, size: int, folder: Path) -> tuple[Path, str, str, int]:
    """Export ``name`` at ``size`` with random weights; (path, input, output, bytes)."""
    import torch

    from covidct.export.config import OnnxExportConfig
    from covidct.export.onnx_export import export_network, runner_io
    from covidct.preprocessing.config import ModelInputConfig, PipelineConfig
    from covidct.training.registry import create_model

    torch.manual_seed(0)
    network = create_model(name, input_size=size)
    cfg = network.model_config
    inp = ModelInputConfig(size=size)
    pipeline = PipelineConfig(classifier_input=inp, segmenter_input=inp)
    result = export_network(
        network, cfg, pipeline, folder / f"{name}_{size}.onnx",
        io=runner_io(cfg.task), config=OnnxExportConfig(parity_batch_sizes=(1,)),
    )
    return result.path, result.input.name, result.output.name, result.size_bytes


def export_trained(checkpoint: Path, folder: Path) -> tuple[Path, str, str, int, str, int]:
    """Export a checkpoint folder as served; (path, input, output, bytes, network, size)."""
    from covidct.export.onnx_export import export_checkpoint

    result = export_checkpoint(checkpoint, folder / f"{checkpoint.name}.onnx")
    size = int(result.input.dims[-1])
    return result.path, result.input.name, result.output.name, result.size_bytes, result.model_name, size


def bench_network(name: str, size: int, batches: list[int], threads: list[int], repeats: int, folder: Path,
                  exported: tuple[Path, str, str, int] | None = None):
    import onnxruntime as ort

    path, inp, out, size_bytes = exported or export_random(name, size, folder)
    rows = []
    for n_threads in threads:
        options = ort.SessionOptions()
        options.intra_op_num_threads = n_threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for batch in batches:
            x = np.random.default_rng(0).random((batch, 1, size, size), dtype=np.float32)
            session.run([out], {inp: x})  # warm-up
            wall, cpu = median_ms(lambda: session.run([out], {inp: x}), repeats)
            rows.append({
                "network": name, "size": size, "onnx_mb": size_bytes / 1e6, "threads": n_threads,
                "batch": batch, "ms_per_slice": wall / batch, "cpu_ms_per_slice": cpu / batch,
            })
            print(f"{name:16s} {size:4d}  threads {n_threads}  batch {batch:3d}  "
                  f"{wall / batch:8.2f} ms/slice  (cpu {cpu / batch:8.2f})", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m covidct.benchmarks.bench_export",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--networks", nargs="*", default=None, metavar="NAME:SIZE",
                        help="registered networks with random weights (default cnn6:224 resnet50v2_fpn:512)")
    parser.add_argument("--checkpoints", nargs="*", default=[], type=Path, metavar="DIR",
                        help="checkpoint folders, exported as served (e.g. training/shipped/classifier)")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        networks = args.networks if args.networks is not None else ([] if args.checkpoints else
                                                                     ["cnn6:224", "resnet50v2_fpn:512"])
        for spec in networks:
            name, _, size = spec.partition(":")
            rows += bench_network(name, int(size or 224), args.batches, args.threads, args.repeats, Path(tmp))
        for checkpoint in args.checkpoints:
            path, inp, out, size_bytes, name, size = export_trained(checkpoint, Path(tmp))
            rows += bench_network(name, size, args.batches, args.threads, args.repeats, Path(tmp),
                                  exported=(path, inp, out, size_bytes))
    print("\nnetwork          size  ONNX MB  threads  batch  ms/slice  cpu ms/slice")
    for r in rows:
        print(f"{r['network']:16s} {r['size']:4d}  {r['onnx_mb']:7.1f}  {r['threads']:7d}  {r['batch']:5d}  "
              f"{r['ms_per_slice']:8.2f}  {r['cpu_ms_per_slice']:12.2f}")
    if args.out:
        write_json(args.out, {"machine": machine_info(), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
