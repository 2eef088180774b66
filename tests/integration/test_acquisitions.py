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

from covidct.client.batch import ExitCode
from covidct.client.cli import main
from covidct.client.report import validate_report
from covidct.preprocessing.config import LungSegmentationConfig
from covidct.preprocessing.io.series_reader import read_series
from covidct.preprocessing.io.series_writer import write_dicom_series
from covidct.preprocessing.lung_segmentation import segment_lungs
from covidct.preprocessing.orientation import PATIENT_POSITION_ORIENTATIONS
from covidct.preprocessing.synthetic.case_transforms import drop_slices
from covidct.preprocessing.synthetic.phantom import make_phantom
from covidct.preprocessing.synthetic.trust_cases import coverage_crops
from covidct.preprocessing.volume import CTVolume


@pytest.fixture(scope="module")
def triton_server(shipped_server):
    """These tests run against the shipped networks trained on real chest CT."""
    return shipped_server


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


def copy_files(volume: CTVolume, source: Path, target: Path) -> Path:
    """A folder holding only the source files of ``volume``'s slices (a crop or a gap)."""
    target.mkdir(parents=True)
    for name in volume.source_names:
        shutil.copy2(source / name, target / name)
    return target


def variants(volume: CTVolume) -> dict[str, tuple[CTVolume, str | None]]:
    """Name -> (series, the code it must get): whole (none); the coverage crops at either
    end (``lungs_incomplete`` / ``partial_coverage``); 10 slices missing in the middle of the
    lungs (``slice_gap``)."""
    seg = segment_lungs(volume.hu, volume.spacing_mm, LungSegmentationConfig())
    middle = int(seg.lung_slices[len(seg.lung_slices) // 2])
    made = {"whole": (volume, None), "gap_10": (drop_slices(volume, middle, 10), "slice_gap")}
    for crop in coverage_crops(volume, seg.lung_area_mm2):
        made[crop.name] = (crop.volume, crop.expected_code)
    return made


@pytest.mark.real_data
@pytest.mark.parametrize("series", REAL_SERIES)
def test_real_series_clipped_cropped_and_with_missing_slices(triton_server, real_data_dir, tmp_path, capsys, series):
    source = real_data_dir / series
    volume = read_series(source)
    made = variants(volume)
    for name, (variant, _) in made.items():
        copy_files(variant, source, tmp_path / "patients" / name)
    answers = run_cli(capsys, ["--patients", str(tmp_path / "patients"), "--url", triton_server.grpc_url])
    assert set(answers) == set(made)
    assert {code for _, code in made.values()} == {None, "lungs_incomplete", "partial_coverage", "slice_gap"}
    whole = answers["whole"]["result"]
    assert whole["verdict"] != "not_assessable", whole["assessment"]["reasons"]
    for name, (_, code) in made.items():
        result = answers[name]["result"]
        reasons = {item["code"] for item in result["assessment"]["reasons"]}
        warnings = {item["code"] for item in result["assessment"]["warnings"]}
        if code in ("lungs_incomplete", "slice_gap"):
            assert result["verdict"] == "not_assessable" and code in reasons, (name, reasons)
        elif code == "partial_coverage":
            assert result["verdict"] != "not_assessable", (name, result["assessment"]["reasons"])
            assert code in warnings, (name, warnings)
            assert result["assessment"]["measurements"]["missing_lung_fraction"] > 0, name
            assert result["lung_volume_ml"] == pytest.approx(whole["lung_volume_ml"], rel=0.05), name
    message = next(r["message"] for r in answers["gap_10"]["result"]["assessment"]["reasons"]
                   if r["code"] == "slice_gap")
    assert "about 10 slices of 2 mm" in message, message

@pytest.mark.real_data
def test_a_real_series_written_prone_and_feet_first_gets_the_supine_answer(
    triton_server, real_data_dir, tmp_path, capsys
):
    volume = read_series(real_data_dir / "cap002")
    patients = tmp_path / "patients"
    for position in ("HFS", "HFP", "FFS", "HFDR"):
        write_dicom_series(volume, patients / position, patient_position=position, pixel_representation=0)
    answers = run_cli(capsys, ["--patients", str(patients), "--url", triton_server.grpc_url])
    supine = answers["HFS"]["result"]
    assert supine["verdict"] != "not_assessable", supine["assessment"]["reasons"]
    for position, patient in answers.items():
        result = patient["result"]
        assert result["verdict"] == supine["verdict"], position
        assert result["assessment"] == supine["assessment"], position
        assert result["selected_indices"] == supine["selected_indices"], position


@pytest.mark.real_data
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_exports_of_a_real_series_get_the_folders_answer_and_their_dicom_results(
    triton_server, real_data_dir, tmp_path, capsys
):
    """One real series as a plain folder, one Legacy Converted Enhanced CT file (frames out
    of order), a DICOMDIR export with nested extension-less files, and a folder that also
    holds a 6 mm recon of it: the same answer, and SEG + SR written for each."""
    from highdicom.legacy import LegacyConvertedEnhancedCTImage
    from pydicom.encaps import encapsulate, generate_frames
    from pydicom.fileset import FileSet
    from pydicom.uid import generate_uid

    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    datasets = []
    for path in sorted((real_data_dir / "P002").iterdir()):  # the originals carry no valid UIDs
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.SeriesNumber = "20200401", "120000", "1", 2  # DICOMDIR records
        datasets.append(ds)
    patients = tmp_path / "patients"
    for ds in datasets:
        ds.save_as((patients / "folder").mkdir(parents=True, exist_ok=True) or patients / "folder" / path_name(ds))
    converted = LegacyConvertedEnhancedCTImage(datasets, series_instance_uid=generate_uid(), series_number=3,
                                               sop_instance_uid=generate_uid(), instance_number=1)
    order = np.random.default_rng(3).permutation(len(datasets))
    frames = list(generate_frames(converted.PixelData, number_of_frames=len(datasets)))
    items = list(converted.PerFrameFunctionalGroupsSequence)
    converted.PerFrameFunctionalGroupsSequence = [items[i] for i in order]
    converted.PixelData = encapsulate([frames[i] for i in order])
    (patients / "multiframe").mkdir()
    converted.save_as(patients / "multiframe" / "ct.dcm")
    fileset = FileSet()
    for ds in datasets:
        fileset.add(ds)
    fileset.write(patients / "cd_export")
    shutil.copytree(patients / "folder", patients / "two_series" / "axial")
    thick_uid = generate_uid()
    for ds in datasets[::3]:
        thick = pydicom.dcmread(patients / "folder" / path_name(ds))
        thick.SeriesInstanceUID, thick.SliceThickness, thick.SeriesNumber = thick_uid, 6, 9
        thick.SOPInstanceUID = thick.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        thick.save_as((patients / "two_series" / "thick").mkdir(exist_ok=True) or
                      patients / "two_series" / "thick" / path_name(ds))
    out = tmp_path / "dicom"
    answers = run_cli(capsys, ["--patients", str(patients), "--url", triton_server.grpc_url, "--dicom-out", str(out)])
    reference = answers["folder"]["result"]
    assert reference["verdict"] != "not_assessable", reference["assessment"]["reasons"]
    for name in ("multiframe", "cd_export", "two_series"):
        patient = answers[name]
        assert patient["status"] == "ok", (name, patient.get("error"))
        result = patient["result"]
        for key in ("verdict", "assessment", "selected_indices", "lung_slices", "lung_volume_ml"):
            assert result[key] == reference[key], (name, key)
        assert (out / f"{name}_seg.dcm").is_file() and (out / f"{name}_sr.dcm").is_file(), name
    assert "series 9" in " ".join(answers["two_series"]["result"]["series_left_out"])
    seg = pydicom.dcmread(out / "multiframe_seg.dcm")
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {converted.SOPInstanceUID}


def path_name(ds: pydicom.Dataset) -> str:
    return f"IM{int(ds.InstanceNumber):04d}.dcm"
