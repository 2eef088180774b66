"""Whole-series lung mask and plausibility checks: ms per slice.

Not a test: prints a table (and optionally writes JSON). Run on one core for numbers
comparable with the 1 ms/slice target (mask + checks on 512x512)::

    taskset -c 0 .venv/bin/python -m covidct.benchmarks.bench_assessment --slices 406 --out bench.json
    taskset -c 0 .venv/bin/python -m covidct.benchmarks.bench_assessment --series /path/to/dicom_folder

The volume is the synthetic phantom (``covidct.preprocessing.synthetic.phantom.make_phantom``, default
adult geometry) unless ``--series`` names a real series. Each figure is the median of
``--repeats`` runs; CPU time is the robust figure on a shared machine.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import platform  # noqa: E402

from covidct.benchmarks.common import add_volume_arguments, median_ms, series_or_phantom, write_json  # noqa: E402
from covidct.preprocessing.assessment import assess  # noqa: E402
from covidct.preprocessing.config import PipelineConfig  # noqa: E402
from covidct.preprocessing.lung_segmentation import segment_lungs  # noqa: E402
from covidct.preprocessing.mask_grid import block_mean, reduction_factor  # noqa: E402
from covidct.preprocessing.slice_selection import select_by_lung_area  # noqa: E402


def run(args: argparse.Namespace) -> dict[str, object]:
    volume, source = series_or_phantom(args.series, args.slices, args.size, args.seed)
    hu, spacing = volume.hu, volume.spacing_mm
    n = hu.shape[0]
    config = PipelineConfig()
    seg_cfg, check_cfg = config.lung_segmentation, config.assessment
    factor = reduction_factor(hu.shape[1], hu.shape[2], seg_cfg.mask_size)
    seg = segment_lungs(hu, spacing, seg_cfg)
    outcome = assess(seg, hu, spacing, check_cfg)
    r = args.repeats

    def everything() -> None:
        s = segment_lungs(hu, spacing, seg_cfg)
        assess(s, hu, spacing, check_cfg)
        select_by_lung_area(s.lung_area_mm2, config.selection)

    rows = [
        ("block mean to mask grid", median_ms(lambda: block_mean(hu, factor), r)),
        ("segment_lungs", median_ms(lambda: segment_lungs(hu, spacing, seg_cfg), r)),
        ("assess", median_ms(lambda: assess(seg, hu, spacing, check_cfg), r)),
        ("select_by_lung_area", median_ms(lambda: select_by_lung_area(seg.lung_area_mm2, config.selection), r)),
        ("mask + checks + selection", median_ms(everything, r)),
    ]
    return {
        "source": source,
        "shape": list(hu.shape),
        "mask_shape": list(seg.labels.shape),
        "reasons": list(outcome.codes),
        "lung_volume_ml": round(seg.lung_volume_ml, 1),
        "repeats": r,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "stages": [
            {
                "stage": name,
                "slices": n,
                "wall_ms": round(wall, 2),
                "cpu_ms": round(cpu, 2),
                "wall_ms_per_slice": round(wall / n, 3),
                "cpu_ms_per_slice": round(cpu / n, 3),
            }
            for name, (wall, cpu) in rows
        ],
    }


def _print(result: dict[str, object]) -> None:
    print(
        f"{result['source']}: volume {result['shape']}, mask {result['mask_shape']}, "
        f"lungs {result['lung_volume_ml']} ml, reasons {result['reasons'] or 'none'}, "
        f"median of {result['repeats']}, CPUs {result['cpu_affinity']}"
    )
    print(f"{'stage':30s} {'wall ms':>9s} {'cpu ms':>9s} {'wall/slice':>10s} {'cpu/slice':>10s}")
    for row in result["stages"]:  # type: ignore[union-attr]
        print(
            f"{row['stage']:30s} {row['wall_ms']:9.1f} {row['cpu_ms']:9.1f} "
            f"{row['wall_ms_per_slice']:10.3f} {row['cpu_ms_per_slice']:10.3f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_volume_arguments(parser, repeats=5)
    args = parser.parse_args(argv)
    result = run(args)
    _print(result)
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
