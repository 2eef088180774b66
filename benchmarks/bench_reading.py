"""Series reading speed: ms per slice, headers + decode + HU, for DICOM folders.

Cases:
- an uncompressed phantom series (default 406 slices of 512x512: ``covidct.preprocessing.synthetic.phantom``
  written by ``covidct.preprocessing.io.series_writer`` into a temporary folder);
- the real COVID-CT-MD series (JPEG Lossless), from ``--data-dir`` or
  ``COVIDCT_DATA_DIR``; skipped when neither is given.

Each case runs with 1 decode worker and with all cores (``decode_workers=0``); the
median of ``--repeats`` runs is reported: wall time per slice, CPU time per slice
(this process plus its pool workers; less sensitive to other load on the machine) and
the header scan alone. Run from the repository root::

    python -m covidct.benchmarks.bench_reading [--data-dir DIR] [--out results.json]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

from covidct.benchmarks.common import machine_info, write_json
from covidct.preprocessing.reader_config import ReaderConfig
from covidct.preprocessing.io.dicom_series import scan_dicom
from covidct.preprocessing.io.series_reader import read_series
from covidct.preprocessing.io.series_writer import write_dicom_series
from covidct.preprocessing.synthetic.phantom import make_phantom

REAL_SERIES = ("P002", "cap002", "normal002")


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (pool workers), in s."""
    usages = (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    return sum(u.ru_utime + u.ru_stime for u in usages)


def _time_read(folder: Path, workers: int, repeats: int) -> dict:
    config = ReaderConfig(decode_workers=workers)
    scan_s, total_s, cpu_s = [], [], []
    num_slices = 0
    for _ in range(repeats):
        start = time.perf_counter()
        scan_dicom(folder, config)
        scan_s.append(time.perf_counter() - start)
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        volume = read_series(folder, config=config)
        total_s.append(time.perf_counter() - start)
        cpu_s.append(_cpu_seconds() - cpu_start)
        num_slices = volume.num_slices
    total = statistics.median(total_s)
    return {
        "slices": num_slices,
        "workers": workers or os.cpu_count(),
        "total_s": round(total, 3),
        "ms_per_slice": round(1000.0 * total / num_slices, 2),
        "cpu_ms_per_slice": round(1000.0 * statistics.median(cpu_s) / num_slices, 2),
        "header_scan_ms_per_slice": round(1000.0 * statistics.median(scan_s) / num_slices, 3),
    }


def _write_uncompressed(folder: Path, num_slices: int, size: int) -> None:
    phantom = make_phantom(num_slices=num_slices, size=size, covid=True, seed=0)
    write_dicom_series(phantom.volume, folder)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("COVIDCT_DATA_DIR") or None)
    parser.add_argument("--slices", type=int, default=406)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_reading_") as tmp:
        folder = Path(tmp) / "uncompressed"
        _write_uncompressed(folder, args.slices, args.size)
        for workers in (1, 0):
            rows.append({"case": f"uncompressed {args.size}x{args.size}",
                         **_time_read(folder, workers, args.repeats)})
    if args.data_dir is not None:
        for name in REAL_SERIES:
            if (Path(args.data_dir) / name).is_dir():
                for workers in (1, 0):
                    rows.append({"case": f"real {name} (JPEG Lossless)",
                                 **_time_read(Path(args.data_dir) / name, workers, args.repeats)})
    result = {
        "benchmark": "bench_reading",
        "machine": machine_info(),
        "repeats": args.repeats,
        "rows": rows,
    }
    print(f"{'case':34s} {'slices':>6s} {'workers':>7s} {'total s':>8s} {'ms/slice':>9s} "
          f"{'cpu ms/slice':>12s} {'scan ms/slice':>13s}")
    for r in rows:
        print(f"{r['case']:34s} {r['slices']:6d} {r['workers']:7d} {r['total_s']:8.3f} "
              f"{r['ms_per_slice']:9.2f} {r['cpu_ms_per_slice']:12.2f} "
              f"{r['header_scan_ms_per_slice']:13.3f}")
    if args.out is not None:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
