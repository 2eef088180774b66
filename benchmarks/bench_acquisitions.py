"""Real-world acquisitions: what the assessment answers for each real series and its
variants, and what reorientation and gap detection cost per slice.

Not a test: writes ``acquisitions.md`` and ``acquisitions.json`` into ``--out``::

    .venv/bin/python -m covidct.benchmarks.bench_acquisitions --data-dir "$COVIDCT_DATA_DIR" \\
        --out benchmarks/results/cpu-2core/acquisitions

Per series (DICOM folders under ``--data-dir``): the whole series; the series written as a
scanner stores it prone (HFP), feet-first (FFS) and in right decubitus (HFDR) and read
back; the coverage crops (:func:`covidct.preprocessing.synthetic.trust_cases.coverage_crops`); 10
slices dropped inside the lungs. Each variant goes through the served ``preprocess`` step
in-process (:func:`covidct.serving.steps.preprocess_step`, the default
``PipelineConfig``): assessable, reasons, warnings, lung volumes (right / left) and the
estimated missing lung fraction. The networks do not run: the COVID-19 verdict is not part
of this table.

Costs (median of ``--repeats``, one process): the in-plane reorientation of the decoded
volume for each transform (``InPlaneTransform.to_patient`` + a contiguous copy, as the
reader does it) and the gap detection on the slice positions, per slice, beside the
series' decode time per slice.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from covidct.benchmarks.common import machine_info, machine_line, markdown_table, median_ms, write_json
from covidct.serving.steps import preprocess_step, slice_positions
from covidct.preprocessing.config import LungSegmentationConfig, PipelineConfig
from covidct.preprocessing.io.series_reader import read_series
from covidct.preprocessing.io.series_writer import write_dicom_series
from covidct.preprocessing.lung_segmentation import segment_lungs
from covidct.preprocessing.orientation import InPlaneTransform
from covidct.preprocessing.slice_gaps import find_gaps, gaps_at_lung
from covidct.preprocessing.synthetic.case_transforms import drop_slices
from covidct.preprocessing.synthetic.trust_cases import coverage_crops
from covidct.preprocessing.volume import CTVolume

POSITIONS = ("HFP", "FFS", "HFDR")
TRANSFORMS = {
    "prone (flip rows, columns)": InPlaneTransform(False, True, True),
    "feet-first (flip columns)": InPlaneTransform(False, False, True),
    "decubitus (transpose, flip)": InPlaneTransform(True, False, True),
}


def assessment_row(series: str, variant: str, volume: CTVolume, config: PipelineConfig) -> dict[str, object]:
    """The assessment of one variant as the ``preprocess`` step makes it."""
    out = preprocess_step(volume.hu, np.asarray(volume.spacing_mm, np.float32), config, slice_positions(volume))
    document = json.loads(out["ASSESSMENT"][0])
    m = document["measurements"]
    return {
        "series": series, "variant": variant, "slices": volume.num_slices,
        "assessable": document["assessable"],
        "reasons": [r["code"] for r in document["reasons"]],
        "warnings": [w["code"] for w in document["warnings"]],
        "lung_ml": m["lung_volume_ml"], "right_ml": m["right_lung_ml"], "left_ml": m["left_lung_ml"],
        "missing_lung_fraction": m.get("missing_lung_fraction"),
        "messages": [r["message"] for r in document["reasons"] + document["warnings"]],
    }


def variants_of(volume: CTVolume, workdir: Path) -> list[tuple[str, CTVolume]]:
    """(name, volume) of every variant of one series (see the module docstring)."""
    made = [("whole", volume)]
    for position in POSITIONS:
        folder = workdir / position
        write_dicom_series(volume, folder, patient_position=position, pixel_representation=0)
        made.append((f"written {position}", read_series(folder)))
    seg = segment_lungs(volume.hu, volume.spacing_mm, LungSegmentationConfig())
    made.extend((crop.name, crop.volume) for crop in coverage_crops(volume, seg.lung_area_mm2))
    middle = int(seg.lung_slices[len(seg.lung_slices) // 2])
    made.append(("10 slices dropped in the lungs", drop_slices(volume, middle, 10)))
    return made


def costs(series: str, source: Path, volume: CTVolume, repeats: int) -> list[dict[str, object]]:
    """ms per slice of reading, each reorientation and the gap detection."""
    n = volume.num_slices
    start = time.perf_counter()
    read_series(source)
    rows = [{"series": series, "step": "read + decode (all workers)",
             "ms_per_slice": (time.perf_counter() - start) * 1000 / n}]
    for name, transform in TRANSFORMS.items():
        wall, _ = median_ms(lambda t=transform: np.ascontiguousarray(t.to_patient(volume.hu)), repeats)
        rows.append({"series": series, "step": f"reorient: {name}", "ms_per_slice": wall / n})
    area = segment_lungs(volume.hu, volume.spacing_mm, LungSegmentationConfig()).lung_area_mm2
    wall, _ = median_ms(lambda: gaps_at_lung(find_gaps(volume.positions_mm, volume.spacing_mm[0], 0.5), area),
                        repeats)
    rows.append({"series": series, "step": "gap detection", "ms_per_slice": wall / n})
    return rows


def markdown(result: dict[str, object]) -> str:
    def pct(value: object) -> str:
        return "-" if value is None else f"{100 * float(value):.1f} %"

    table = [
        [r["series"], r["variant"], r["slices"], "yes" if r["assessable"] else "NOT ASSESSABLE",
         ", ".join(r["reasons"]) or "-", ", ".join(r["warnings"]) or "-", f"{r['lung_ml']:.0f}",
         f"{r['right_ml']:.0f} / {r['left_ml']:.0f}", pct(r["missing_lung_fraction"])]
        for r in result["assessments"]
    ]
    cost = [[r["series"], r["step"], f"{r['ms_per_slice']:.4f}"] for r in result["costs"]]
    return "\n".join([
        "# Real-world acquisitions: assessment of each real series and its variants",
        "",
        f"{machine_line(result['machine'])}. Command: `{result['command']}`.",
        "The `preprocess` step in-process with the default pipeline config (the networks do not run).",
        "",
        markdown_table(["series", "variant", "slices", "assessable", "reasons", "warnings", "lung ml",
                        "right / left ml", "missing lung"], table),
        "",
        f"## Cost per slice (median of {result['repeats']})",
        "",
        markdown_table(["series", "step", "ms / slice"], cost),
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("COVIDCT_DATA_DIR"),
                        help="folder of DICOM series folders (default $COVIDCT_DATA_DIR)")
    parser.add_argument("--series", nargs="*", default=["P002", "cap002", "normal002"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.data_dir is None:
        parser.error("--data-dir (or COVIDCT_DATA_DIR) names the folder of the real series")
    config = PipelineConfig()
    assessments, cost_rows = [], []
    for series in args.series:
        source = args.data_dir / series
        volume = read_series(source)
        with tempfile.TemporaryDirectory() as tmp:
            for name, variant in variants_of(volume, Path(tmp)):
                assessments.append(assessment_row(series, name, variant, config))
        cost_rows.extend(costs(series, source, volume, args.repeats))
    result = {
        "machine": machine_info(), "repeats": args.repeats,
        "command": ("python -m covidct.benchmarks.bench_acquisitions --data-dir $COVIDCT_DATA_DIR --out "
                    + str(args.out)),
        "config": dataclasses.asdict(config.assessment),
        "assessments": assessments, "costs": cost_rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "acquisitions.json", result)
    (args.out / "acquisitions.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
