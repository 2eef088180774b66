"""Preprocessing timings: ms per slice of windowing, masks, selection and model inputs.

Not a test: prints a table (and optionally writes JSON). Pin it to one core for per-core
figures (HU + masks + selection on 512x512 is the part that runs on every slice)::

    taskset -c 0 .venv/bin/python -m covidct.benchmarks.bench_preprocessing --slices 406 --out bench.json
    taskset -c 0 .venv/bin/python -m covidct.benchmarks.bench_preprocessing --series /path/to/dicom_folder

The volume is the synthetic phantom (``covidct.preprocessing.synthetic.phantom.make_phantom``) unless
``--series`` names a real series. Stages on the whole volume are reported per volume
slice (N); stages after selection per selected slice (K). Each figure is the median of
``--repeats`` runs.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402

import numpy as np  # noqa: E402

from covidct.benchmarks.common import add_volume_arguments, machine_info, median_ms, series_or_phantom, write_json  # noqa: E402
from covidct.serving.steps import preprocess_step  # noqa: E402
from covidct.preprocessing.config import ModelInputConfig, PipelineConfig  # noqa: E402
from covidct.preprocessing.hu_window import window_normalize  # noqa: E402
from covidct.preprocessing.lung_masks import lung_and_infection_masks  # noqa: E402
from covidct.preprocessing.model_inputs import classifier_inputs, segmenter_inputs  # noqa: E402
from covidct.preprocessing.slice_selection import select_open_lung_slices  # noqa: E402


def run(args: argparse.Namespace) -> dict[str, object]:
    volume, source = series_or_phantom(args.series, args.slices, args.size, args.seed)
    hu = volume.hu
    n = hu.shape[0]
    base = PipelineConfig()
    crop_cfg = PipelineConfig(
        classifier_input=ModelInputConfig(size=224, lung_crop=True, mask_channels=True)
    )
    selected = select_open_lung_slices(hu, base.selection).indices
    sel_hu = np.ascontiguousarray(hu[selected])
    k = int(selected.size)
    spacing = np.asarray(volume.spacing_mm, dtype=np.float32)
    r = args.repeats

    def masks_and_selection() -> None:
        window_normalize(hu, base.window)
        lung_and_infection_masks(hu, base.masks)
        select_open_lung_slices(hu, base.selection)

    rows: list[tuple[str, str, tuple[float, float], int]] = [
        ("window (HU -> [0,1])", "N", median_ms(lambda: window_normalize(hu, base.window), r), n),
        ("lung + infection masks", "N", median_ms(lambda: lung_and_infection_masks(hu, base.masks), r), n),
        ("open-lung selection", "N", median_ms(lambda: select_open_lung_slices(hu, base.selection), r), n),
        ("window + masks + selection", "N", median_ms(masks_and_selection, r), n),
        ("classifier_inputs 224 (plain)", "K", median_ms(lambda: classifier_inputs(sel_hu, base), r), k),
        ("segmenter_inputs 256 (plain)", "K", median_ms(lambda: segmenter_inputs(sel_hu, base), r), k),
        (
            "classifier_inputs 224 crop+masks",
            "K",
            median_ms(lambda: classifier_inputs(sel_hu, crop_cfg), r),
            k,
        ),
        ("preprocess_step (3-D mask, checks, inputs)", "N",
         median_ms(lambda: preprocess_step(hu, spacing, base), r), n),
    ]
    result = {
        "source": source,
        "shape": list(hu.shape),
        "selected": k,
        "repeats": r,
        "machine": machine_info(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "stages": [
            {
                "stage": name,
                "per": per,
                "slices": cnt,
                "wall_ms": round(wall, 2),
                "cpu_ms": round(cpu, 2),
                "wall_ms_per_slice": round(wall / cnt, 3),
                "cpu_ms_per_slice": round(cpu / cnt, 3),
            }
            for name, per, (wall, cpu), cnt in rows
        ],
    }
    return result


def _print(result: dict[str, object]) -> None:
    print(
        f"{result['source']}: volume {result['shape']}, {result['selected']} selected slices, "
        f"median of {result['repeats']}, CPUs {result['cpu_affinity']}"
    )
    print(f"{'stage':36s} {'per':>3s} {'wall ms':>9s} {'cpu ms':>9s} {'wall/slice':>10s} {'cpu/slice':>10s}")
    for row in result["stages"]:  # type: ignore[union-attr]
        print(
            f"{row['stage']:36s} {row['per']:>3s} {row['wall_ms']:9.1f} {row['cpu_ms']:9.1f} "
            f"{row['wall_ms_per_slice']:10.3f} {row['cpu_ms_per_slice']:10.3f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_volume_arguments(parser, repeats=3)
    args = parser.parse_args(argv)
    result = run(args)
    _print(result)
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
