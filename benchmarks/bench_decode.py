"""DICOM pixel decoding speed per decoder: ms per slice on one core, in-process.

For each series (``--series``, a DICOM folder or zip; one or more) and each named pixel
decoder of :mod:`covidct.preprocessing.io.pixel_decoders` (``nvimgcodec``, ``gdcm``,
``pylibjpeg``) that is available here, the whole series is decoded to HU int16
``[N, H, W]`` in this process (``decode_workers=1``) exactly as the reader decodes it:
file read, header parse, pixel decode, rescale. One warm-up run (which also records the
decoder of every slice and the HU), then ``--repeats`` timed runs; the median wall and
CPU (process) time per slice is reported. The process is pinned to one CPU unless
``--no-pin``. "read only" is the same file read and header parse without decoding: the
floor under every decoder. Every decoder's HU are compared with pylibjpeg's (the
reference: a dependency of the bundle). Decoders unavailable here are listed with the
reason. Run from the repository root::

    python -m covidct.benchmarks.bench_decode --series DIR [DIR ...] --out OUT [--repeats 5]

Writes ``OUT/decode.md`` and ``OUT/decode.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from covidct.progress import progress as progress_bar
from covidct.benchmarks.common import machine_info, machine_line, markdown_table, median_ms, write_json
from covidct.preprocessing.reader_config import ReaderConfig
from covidct.preprocessing.io.dicom_decode import DecodeTask, decode_series_recorded, tasks_for_slices
from covidct.preprocessing.io.dicom_header import quiet_pydicom
from covidct.preprocessing.io.dicom_series import scan_dicom
from covidct.preprocessing.io.pixel_decoders import PYLIBJPEG, decoder_statuses, resolve_decoder_order

DATA_ENV = "COVIDCT_DATA_DIR"
READ_ONLY = "read only (no decode)"


def pin_to_one_cpu() -> int | None:
    """Pin this process to the first CPU it may run on; that CPU, or ``None`` where the
    platform cannot pin."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def read_only(tasks: list[DecodeTask]) -> None:
    """Read and parse every file of a folder series, pixel data bytes included, without decoding."""
    with quiet_pydicom():
        for task in tasks:
            _ = pydicom.dcmread(task.path, force=True).PixelData


def transfer_syntax_name(task: DecodeTask) -> str:
    """The transfer syntax keyword of a folder series' first file (``"zip"`` for zip members)."""
    if task.member is not None:
        return "zip"
    with quiet_pydicom():
        ds = pydicom.dcmread(task.path, stop_before_pixels=True, force=True)
    return str(ds.file_meta.TransferSyntaxUID.keyword)


def bench_series(folder: Path, decoders: tuple[str, ...], repeats: int, progress: Any) -> dict[str, Any]:
    """Time every decoder on one series: a dict with the series' shape and one row per decoder."""
    tasks = tasks_for_slices(scan_dicom(folder, ReaderConfig()).slices)
    n = len(tasks)
    rows: list[dict[str, Any]] = []
    hu: dict[str, np.ndarray] = {}
    if tasks[0].member is None:
        read_only(tasks)  # warm-up (page cache)
        wall, cpu = median_ms(lambda: read_only(tasks), repeats)
        rows.append({"decoder": READ_ONLY, "decoded_by": [], "ms_per_slice_wall": wall / n,
                     "ms_per_slice_cpu": cpu / n})
    progress.update(1)
    for name in decoders:
        warm = decode_series_recorded(tasks, decoder=name)  # warm-up: record and HU
        hu[name] = warm.hu
        wall, cpu = median_ms(lambda name=name: decode_series_recorded(tasks, decoder=name), repeats)
        rows.append({"decoder": name, "decoded_by": list(warm.decoders_used), "ms_per_slice_wall": wall / n,
                     "ms_per_slice_cpu": cpu / n})
        progress.update(1)
    reference = PYLIBJPEG if PYLIBJPEG in hu else (decoders[0] if decoders else None)
    for row in rows:
        if row["decoder"] in hu and reference is not None:
            row["hu_identical_to_reference"] = bool(np.array_equal(hu[row["decoder"]], hu[reference]))
    return {
        "series": folder.name,
        "slices": n,
        "matrix": [tasks[0].rows, tasks[0].columns],
        "transfer_syntax": transfer_syntax_name(tasks[0]),
        "reference": reference,
        "rows": rows,
    }


def _series_argument(path: Path) -> str:
    """How the report names a series folder: relative to ``$COVIDCT_DATA_DIR`` when inside it."""
    data_dir = os.environ.get(DATA_ENV)
    if data_dir:
        try:
            return f"${DATA_ENV}/{path.resolve().relative_to(Path(data_dir).resolve()).as_posix()}"
        except ValueError:
            pass
    return path.name


def markdown(result: dict[str, Any]) -> str:
    """The Markdown report of :func:`main`'s result."""
    lines = ["# DICOM pixel decoding: ms per slice per decoder", "", machine_line(result["machine"]), ""]
    pinned = result["settings"]["pinned_cpu"]
    lines.append(
        f"One core ({f'process pinned to CPU {pinned}' if pinned is not None else 'not pinned'}), in-process "
        f"(`decode_workers=1`), median of {result['settings']['repeats']} runs after one warm-up run. A run "
        "decodes the whole series to HU int16 [N, H, W] as the reader does: file read, header parse, pixel "
        "decode, rescale. CPU ms: this process's CPU time (less sensitive to other load on the machine). "
        "\"read only\": file read and header parse without decoding, the floor under every decoder."
    )
    lines += ["", f"`decoder=\"auto\"` resolves here to: {', '.join(result['auto_order'])}.", ""]
    header = ["series", "slices", "matrix", "transfer syntax", "decoder", "decoded by", "ms/slice wall",
              "ms/slice CPU", "CPU vs reference", "HU identical to reference"]
    table = []
    for s in result["series"]:
        ref = next((r for r in s["rows"] if r["decoder"] == s["reference"]), None)
        for r in s["rows"]:
            ratio = f"{ref['ms_per_slice_cpu'] / r['ms_per_slice_cpu']:.2f}x" if ref and r["decoder"] != READ_ONLY \
                else "-"
            same = {True: "yes", False: "**no**"}.get(r.get("hu_identical_to_reference"), "-")
            table.append([s["series"], s["slices"], f"{s['matrix'][0]}x{s['matrix'][1]}", s["transfer_syntax"],
                          r["decoder"], ", ".join(r["decoded_by"]) or "-", f"{r['ms_per_slice_wall']:.2f}",
                          f"{r['ms_per_slice_cpu']:.2f}", ratio, same])
    lines += [markdown_table(header, table), ""]
    refs = sorted({s["reference"] for s in result["series"] if s["reference"]})
    lines.append(f"Reference: {', '.join(refs) or 'none'} (speed-up = reference CPU ms / decoder CPU ms).")
    lines += ["", "## Decoders", ""]
    lines += [f"- `{d['name']}`: {'available' if d['available'] else 'unavailable'} - {d['detail']}"
              for d in result["decoders"]]
    lines += ["", "## Command", "", f"`{result['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=Path, nargs="+", required=True, help="DICOM series folders or zips")
    parser.add_argument("--out", type=Path, required=True, help="output folder for decode.md and decode.json")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per decoder (median reported)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the process to one CPU")
    args = parser.parse_args(argv)

    statuses = decoder_statuses()
    decoders = tuple(s.name for s in statuses if s.available)
    pinned = None if args.no_pin else pin_to_one_cpu()
    machine = machine_info()
    series = []
    runs = len(args.series) * (1 + len(decoders))
    with progress_bar(total=runs, desc="decoding", unit="run", file=sys.stderr) as bar:
        for folder in args.series:
            bar.set_postfix_str(folder.name)
            series.append(bench_series(folder, decoders, args.repeats, bar))
    command = ("python -m covidct.benchmarks.bench_decode --series "
               + " ".join(_series_argument(p) for p in args.series)
               + f" --out {args.out.as_posix()} --repeats {args.repeats}" + (" --no-pin" if args.no_pin else ""))
    result = {
        "benchmark": "bench_decode",
        "machine": machine,
        "settings": {"repeats": args.repeats, "warmup_runs": 1, "decode_workers": 1, "pinned_cpu": pinned},
        "decoders": [dataclasses.asdict(s) for s in statuses],
        "auto_order": list(resolve_decoder_order("auto")),
        "series": series,
        "command": command,
    }
    report = markdown(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decode.md").write_text(report, encoding="utf-8")
    write_json(args.out / "decode.json", result)
    print(report)
    return result


if __name__ == "__main__":
    main()
