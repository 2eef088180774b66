"""Time to make and store the DICOM results of one patient (SEG + SR).

A phantom series (default 406 slices of 512 x 512, ``covidct.preprocessing.synthetic.phantom``
written by ``covidct.preprocessing.io.series_writer``) gets an answer made from its own masks on
the server's reduced grid (128 x 128, as the ensemble answers), so no Triton is needed.
Measured per patient, median of ``--repeats`` runs (seconds):

- ``headers_s``: reading the source headers (no pixel data) in volume order;
- ``seg_s``: resampling the masks to the source geometry and encoding the BINARY SEG;
- ``sr_s``: the TID 1500 report;
- ``write_s``: writing both files (temporary names, then rename);
- ``stow_s`` / ``cstore_s``: storing both in Orthanc through STOW-RS / C-STORE, on
  loopback. Orthanc is started by :mod:`covidct.benchmarks.orthanc` when it is installed
  and neither ``--stow`` nor ``--store`` is given; otherwise these are skipped.

Run from the repository root::

    python -m covidct.benchmarks.bench_dicom_results [--slices 406 --size 512] [--out results.json]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from covidct.benchmarks.common import machine_info, write_json
from covidct.client.dicom_results import read_source_headers, write_dicom_results
from covidct.client.dicom_seg import build_segmentation
from covidct.client.dicom_sr import build_report
from covidct.client.dicom_results import DicomResults
from covidct.client.pacs import StoreDestination, StowDestination, parse_destination
from covidct.client.result import PipelineResult
from covidct.preprocessing.io.series_reader import read_series
from covidct.preprocessing.io.series_writer import write_dicom_series
from covidct.preprocessing.synthetic.phantom import make_phantom

GRID = 128
CARD = {
    role: {"network": net, "task": role, "demo": True, "intended_use": "benchmark",
           "training_data": {"source_kind": "phantom", "synthetic": True}}
    for role, net in (("classifier", "cnn6"), ("segmenter", "unet"))
}


def phantom_answer(phantom, grid: int = GRID) -> PipelineResult:
    """An answer with the phantom's lung and lesion masks on a ``grid`` x ``grid`` plane."""
    n, size = phantom.lung_mask.shape[:2]
    step = max(1, size // grid)
    lung_slices = np.flatnonzero(phantom.lung_mask.reshape(n, -1).any(axis=1)).astype(np.int32)
    return PipelineResult(
        verdict="positive", positive_fraction=0.5, vote_threshold=0.25,
        slice_probabilities=np.full(lung_slices.size, 0.5, np.float32), selected_indices=lung_slices,
        lesion_burden_pct=3.0, lung_volume_ml=4500.0,
        model_versions=("classifier=cnn6:1:sha256:0", "segmenter=unet:1:sha256:0"), latency_s=0.0,
        lung_slices=lung_slices,
        lung_mask=np.ascontiguousarray(phantom.lung_mask[lung_slices][:, ::step, ::step]).astype(np.uint8),
        infection_mask=np.ascontiguousarray(phantom.lesion_mask[lung_slices][:, ::step, ::step]).astype(np.uint8),
        mask_spacing_mm=(1.0, 4.0, 4.0), model_card=CARD, num_slices=n,
    )


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


@contextlib.contextmanager
def _destinations(args, folder: Path):
    if args.stow or args.store:
        yield [d for d in (parse_destination(args.stow, None), parse_destination(None, args.store)) if d]
        return
    try:
        from covidct.benchmarks.orthanc import orthanc_missing_reason, start_orthanc
    except ImportError:
        yield []
        return
    if orthanc_missing_reason():
        yield []
        return
    server = start_orthanc(folder / "orthanc")
    try:
        yield [StowDestination(server.dicomweb_url), StoreDestination("127.0.0.1", server.dicom_port, "ORTHANC")]
    finally:
        server.stop()


def run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_dicom_results_") as tmp:
        folder = Path(tmp)
        phantom = make_phantom(args.slices, args.size, covid=True, seed=0)
        write_dicom_series(phantom.volume, folder / "series")
        volume = read_series(folder / "series")
        result = phantom_answer(phantom)
        rows: dict[str, list[float]] = {k: [] for k in ("headers_s", "seg_s", "sr_s", "write_s", "stow_s",
                                                        "cstore_s")}
        with _destinations(args, folder) as destinations:
            for repeat in range(args.repeats):
                headers, t = _timed(lambda: read_source_headers(folder / "series", volume.source_names))
                rows["headers_s"].append(t)
                seg, t = _timed(lambda: build_segmentation(headers, result))
                rows["seg_s"].append(t)
                sr, t = _timed(lambda: build_report(headers, seg, result))
                rows["sr_s"].append(t)
                results = DicomResults(seg, sr)
                _, t = _timed(lambda: write_dicom_results(results, folder / "out", f"p{repeat}"))
                rows["write_s"].append(t)
                for destination in destinations:
                    key = "stow_s" if isinstance(destination, StowDestination) else "cstore_s"
                    _, t = _timed(lambda: destination.store(results.datasets))
                    rows[key].append(t)
        seg_bytes = (folder / "out" / "p0_seg.dcm").stat().st_size if (folder / "out").exists() else 0
    return {
        "benchmark": "dicom_results",
        "machine": machine_info(),
        "series": {"slices": args.slices, "size": args.size, "lung_slices": int(result.lung_slices.size),
                   "mask_grid": GRID},
        "seg_frames": int(seg.NumberOfFrames),
        "seg_file_bytes": seg_bytes,
        "median_s": {k: round(statistics.median(v), 4) for k, v in rows.items() if v},
        "repeats": args.repeats,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=406)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stow", help="DICOMweb service root (default: a local Orthanc when installed)")
    parser.add_argument("--store", help="HOST:PORT:AET for C-STORE")
    parser.add_argument("--out", type=Path, help="write the results JSON here")
    args = parser.parse_args(argv)
    document = run(args)
    print(document["series"], "SEG frames", document["seg_frames"], "bytes", document["seg_file_bytes"])
    for key, value in document["median_s"].items():
        print(f"{key:>10}: {value:.3f} s")
    if args.out:
        write_json(args.out, document)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
