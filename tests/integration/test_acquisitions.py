"""Real-world acquisitions through the real server and the real client CLI: a chest CT
written supine, prone, feet-first or decubitus gets the same answer and the patient's own
right and left lung, and its SEG lies on the lungs in each source frame's geometry; real
series clipped by a slice or two at either end are answered with ``partial_coverage``,
while crops that remove a fifth of the lungs and ten missing slices inside the lungs are
not assessable."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from client.batch import ExitCode
from client.cli import main
from client.report import validate_report
from preprocessing.config import LungSegmentationConfig
from preprocessing.io.series_reader import read_series
from preprocessing.io.series_writer import write_dicom_series
from preprocessing.lung_segmentation import segment_lungs
from preprocessing.orientation import PATIENT_POSITION_ORIENTATIONS
from preprocessing.synthetic.phantom import make_phantom
from preprocessing.volume import CTVolume

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REAL_SERIES = ("P002", "cap002", "normal002")
CONSOLIDATION_HU = 40


def run_cli(capsys, argv: list[str]) -> dict:
    main([*argv, "--json", "--no-progress", "--concurrency", "2"])
    document = json.loads(capsys.readouterr().out)
    validate_report(document)
    return {Path(p["input"]).name: p for p in document["patients"]}


@dataclasses.dataclass(frozen=True)
class Chest:
    """A phantom whose left upper lung is consolidated (so left and right differ), with
    its own per-side lung volumes (ml) and lung mask ``[N, H, W]`` in the patient frame."""

    volume: CTVolume
    lung: np.ndarray
    right_ml: float
    left_ml: float


@pytest.fixture(scope="module")
def chest() -> Chest:
    phantom = make_phantom(60, size=128, covid=False, seed=8)
    hu, lung = phantom.volume.hu.copy(), phantom.lung_mask.copy()
    labels, count = ndimage.label(lung)
    sizes = ndimage.sum(lung, labels, range(1, count + 1))
    two = np.argsort(sizes)[-2:] + 1
    columns = [ndimage.center_of_mass(labels == k)[2] for k in two]
    left = labels == two[int(np.argmax(columns))]  # column 0 is the patient's right
    slices = np.flatnonzero(left.any(axis=(1, 2)))
    upper = np.zeros_like(left)
    upper[slices[len(slices) // 2]:] = True
    filled = left & upper
    hu[filled] = CONSOLIDATION_HU
    lung &= ~filled
    voxel = phantom.volume.voxel_volume_ml
    right = lung & ~left
    volume = dataclasses.replace(phantom.volume, hu=hu)
    return Chest(volume, lung, float(right.sum() * voxel), float((lung & left).sum() * voxel))


def patient_coordinates(ds: pydicom.Dataset, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """DICOM patient coordinates (mm) ``[K, 3]`` of stored pixels (rows, cols) of ``ds``."""
    iop = np.asarray(ds.ImageOrientationPatient, float)
    dr, dc = (float(v) for v in ds.PixelSpacing)
    return (np.asarray(ds.ImagePositionPatient, float)[None]
            + (cols * dc)[:, None] * iop[None, :3] + (rows * dr)[:, None] * iop[None, 3:])


def seg_on_lung_fraction(seg_path: Path, source: Path, chest: Chest) -> float:
    """Share of the SEG's lung pixels that lie in the phantom's lung, each located through
    its referenced source instance's own Image Position / Orientation / Pixel Spacing."""
    seg = pydicom.dcmread(seg_path)
    by_uid = {}
    for path in source.iterdir():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        by_uid[ds.SOPInstanceUID] = ds
    n, rows, cols = chest.volume.hu.shape
    z, sy, sx = chest.volume.spacing_mm
    x0, y0 = -cols * sx / 2, -rows * sy / 2
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    inside = total = 0
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        if int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber) != 1:
            continue
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        r, c = np.nonzero(frame)
        points = patient_coordinates(by_uid[uid], r, c)
        k = np.abs(chest.volume.positions_mm - points[0, 2]).argmin()
        vr = np.clip(np.rint((points[:, 1] - y0) / sy).astype(int), 0, rows - 1)
        vc = np.clip(np.rint((points[:, 0] - x0) / sx).astype(int), 0, cols - 1)
        inside += int(chest.lung[k, vr, vc].sum())
        total += r.size
    assert total > 0
    return inside / total


def test_every_patient_position_gets_the_same_answer_and_the_patients_own_sides(
    triton_server, tmp_path, capsys, chest
):
    patients, out = tmp_path / "patients", tmp_path / "dicom"
    for position in PATIENT_POSITION_ORIENTATIONS:
        write_dicom_series(chest.volume, patients / position, patient_position=position, name_order="random")
    answers = run_cli(capsys, ["--patients", str(patients), "--url", triton_server.grpc_url, "--dicom-out", str(out)])
    assert set(answers) == set(PATIENT_POSITION_ORIENTATIONS)
    supine = answers["HFS"]["result"]
    assert supine["verdict"] != "not_assessable", supine["assessment"]["reasons"]
    m0 = supine["assessment"]["measurements"]
    assert m0["right_lung_ml"] == pytest.approx(chest.right_ml, rel=0.08)
    assert m0["left_lung_ml"] == pytest.approx(chest.left_ml, rel=0.08)
    assert chest.right_ml > 1.3 * chest.left_ml  # a mirrored series would swap them
    for position, patient in answers.items():
        assert patient["exit_code"] in (ExitCode.POSITIVE, ExitCode.NEGATIVE), (position, patient)
        result, m = patient["result"], patient["result"]["assessment"]["measurements"]
        assert result["verdict"] == supine["verdict"], position
        assert result["assessment"]["reasons"] == [] and result["assessment"]["warnings"] == [], position
        assert result["lung_volume_ml"] == pytest.approx(supine["lung_volume_ml"], rel=0.01), position
        assert m["right_lung_ml"] == pytest.approx(m0["right_lung_ml"], rel=0.01), position
        assert m["left_lung_ml"] == pytest.approx(m0["left_lung_ml"], rel=0.01), position
        assert seg_on_lung_fraction(out / f"{position}_seg.dcm", patients / position, chest) > 0.85, position


def copy_slices(volume: CTVolume, source: Path, keep: np.ndarray, target: Path) -> Path:
    """A folder holding only the files of the slices ``keep`` (indices into ``volume``)."""
    target.mkdir(parents=True)
    for i in keep:
        shutil.copy2(source / volume.source_names[int(i)], target / volume.source_names[int(i)])
    return target


def variants(volume: CTVolume) -> dict[str, np.ndarray]:
    """Slice indices of each variant: whole; a fifth of the lung removed at the base or the
    apex; the last 1 or 2 lung-bearing slices removed at either end; 10 slices missing in
    the middle of the lungs."""
    seg = segment_lungs(volume.hu, volume.spacing_mm, LungSegmentationConfig())
    area, lung = seg.lung_area_mm2, seg.lung_slices
    n = volume.num_slices
    from_base = np.cumsum(area) / area.sum()
    from_apex = np.cumsum(area[::-1])[::-1] / area.sum()
    base20 = int(np.flatnonzero(from_base >= 0.2)[0])
    apex20 = int(np.flatnonzero(from_apex >= 0.2)[-1])
    middle = int(lung[len(lung) // 2])
    return {
        "whole": np.arange(n),
        "base_20pct": np.arange(base20 + 1, n),
        "apex_20pct": np.arange(0, apex20),
        "base_1": np.arange(lung[1], n),
        "base_2": np.arange(lung[2], n),
        "apex_1": np.arange(0, lung[-2] + 1),
        "apex_2": np.arange(0, lung[-3] + 1),
        "gap_10": np.r_[0:middle, middle + 10:n],
    }


@pytest.mark.real_data
@pytest.mark.parametrize("series", REAL_SERIES)
def test_real_series_clipped_cropped_and_with_missing_slices(triton_server, real_data_dir, tmp_path, capsys, series):
    source = real_data_dir / series
    volume = read_series(source)
    made = variants(volume)
    for name, keep in made.items():
        copy_slices(volume, source, keep, tmp_path / "patients" / name)
    answers = run_cli(capsys, ["--patients", str(tmp_path / "patients"), "--url", triton_server.grpc_url])
    assert set(answers) == set(made)

    def codes(name: str, key: str) -> set[str]:
        return {item["code"] for item in answers[name]["result"]["assessment"][key]}

    whole = answers["whole"]["result"]
    assert whole["verdict"] != "not_assessable", whole["assessment"]["reasons"]
    for name in ("base_20pct", "apex_20pct"):
        assert answers[name]["result"]["verdict"] == "not_assessable", name
        assert "lungs_incomplete" in codes(name, "reasons"), (name, codes(name, "reasons"))
    for name in ("base_1", "base_2", "apex_1", "apex_2"):
        result = answers[name]["result"]
        assert result["verdict"] != "not_assessable", (name, result["assessment"]["reasons"])
        assert "partial_coverage" in codes(name, "warnings"), name
        assert result["assessment"]["measurements"]["missing_lung_fraction"] > 0, name
        assert result["lung_volume_ml"] == pytest.approx(whole["lung_volume_ml"], rel=0.05), name
    gap = answers["gap_10"]["result"]
    assert gap["verdict"] == "not_assessable" and "slice_gap" in codes("gap_10", "reasons")
    message = next(r["message"] for r in gap["assessment"]["reasons"] if r["code"] == "slice_gap")
    assert "about 10 slices of 2 mm" in message, message
