"""DICOM SEG and SR of an answer, built from a phantom series written as real DICOM files
(no server: the answer is made from the phantom's own masks on a reduced grid): supine
single-frame files, files with absent or empty Type 2 patient/study attributes, prone,
feet-first and decubitus files (stored pixels flipped/transposed against the volume's
patient layout) and one Legacy Converted Enhanced CT multi-frame file."""

from __future__ import annotations

import copy
import dataclasses
import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest

from covidct.client.batch import ExitCode, exit_code_of
from covidct.client.dicom_results import (
    build_dicom_results,
    dicom_results_for,
    read_source_headers,
    write_dicom_results,
)
from covidct.client.dicom_seg import (
    TYPE2_PATIENT_STUDY,
    DicomOutputConfig,
    full_resolution_masks,
    with_type2_attributes,
)
from covidct.client.dicom_sr import report_values
from covidct.client.listener import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_OUT_OF_RESOURCES,
    STATUS_SUCCESS,
    SeriesCollector,
)
from covidct.client.pacs import StoreDestination, StowDestination, parse_destination
from covidct.client.result import Assessment, PipelineResult, Reason
from covidct.errors import DicomResultsError, InputError, ResultStoreError, SourceHeaderError
from covidct.preprocessing.io.series_reader import read_series
from covidct.preprocessing.io.series_writer import iter_dicom_datasets, write_dicom_series
from covidct.preprocessing.orientation import InPlaneTransform, source_orientation, transform_from_orientation
from covidct.preprocessing.resize import resize_nearest
from covidct.preprocessing.synthetic.phantom import make_phantom
from covidct.preprocessing.volume import CTVolume

N, SIZE, FACTOR = 24, 64, 4
CARD = {
    role: {"network": net, "task": role, "demo": True, "intended_use": "demonstration",
           "training_data": {"source_kind": "phantom", "synthetic": True}}
    for role, net in (("classifier", "cnn6"), ("segmenter", "unet"))
}


@pytest.fixture(scope="module")
def phantom_series(tmp_path_factory):
    phantom = make_phantom(N, SIZE, covid=True, seed=3)
    folder = tmp_path_factory.mktemp("dicom_results") / "series"
    write_dicom_series(phantom.volume, folder)
    return phantom, folder, read_series(folder)


def answer(phantom, **changes) -> PipelineResult:
    lung_slices = np.flatnonzero(phantom.lung_mask.reshape(N, -1).any(axis=1)).astype(np.int32)
    values = dict(
        verdict="positive", positive_fraction=0.6, vote_threshold=0.25,
        slice_probabilities=np.array([0.9, 0.2, 0.7], np.float32),
        selected_indices=lung_slices[:3], lesion_burden_pct=4.25, lung_volume_ml=4321.5,
        model_versions=("classifier=cnn6:1:sha256:aa", "segmenter=unet:1:sha256:bb"), latency_s=0.1,
        lung_slices=lung_slices,
        lung_mask=phantom.lung_mask[lung_slices][:, ::FACTOR, ::FACTOR].astype(np.uint8),
        infection_mask=phantom.lesion_mask[lung_slices][:, ::FACTOR, ::FACTOR].astype(np.uint8),
        mask_spacing_mm=(1.0, 4.0, 4.0), model_card=CARD, num_slices=N,
    )
    values.update(changes)
    return PipelineResult(**values)


def test_seg_holds_the_resampled_masks_and_references_every_source_slice(phantom_series):
    phantom, folder, volume = phantom_series
    result = answer(phantom)
    seg = dicom_results_for(folder, volume, result).segmentation
    headers = read_source_headers(folder, volume.source_names)
    uids = [str(h.SOPInstanceUID) for h in headers]
    referenced = [str(i.ReferencedSOPInstanceUID) for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence]
    assert sorted(referenced) == sorted(uids)
    decoded = hd.seg.Segmentation.from_dataset(pydicom.dcmread(pydicom.filebase.DicomBytesIO(_bytes(seg))))
    pixels = decoded.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=[1, 2], assert_missing_frames_are_empty=True
    )
    expected = np.zeros((N, SIZE, SIZE, 2), bool)
    expected[result.lung_slices, ..., 0] = resize_nearest(result.lung_mask, (SIZE, SIZE)) > 0
    expected[result.lung_slices, ..., 1] = resize_nearest(result.infection_mask, (SIZE, SIZE)) > 0
    np.testing.assert_array_equal(pixels.astype(bool), expected)
    assert expected[..., 1].any() and pixels.shape == (N, SIZE, SIZE, 2)
    assert "DEMO" in seg.SeriesDescription
    names = [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence]
    assert names == ["39607008", "52988006"]
    algorithm = seg.SegmentSequence[1].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "covidct DEMO unet" and algorithm.AlgorithmVersion == "unet:1:sha256:bb"


def _bytes(dataset) -> bytes:
    buffer = pydicom.filebase.DicomBytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_full_resolution_masks_repeat_each_grid_block(phantom_series):
    phantom, _, _ = phantom_series
    result = answer(phantom)
    masks = full_resolution_masks(result, (N, SIZE, SIZE))
    k, index = 2, int(result.lung_slices[2])
    np.testing.assert_array_equal(
        masks[index, ..., 0], np.kron(result.lung_mask[k] > 0, np.ones((FACTOR, FACTOR), bool))
    )
    others = np.setdiff1d(np.arange(N), result.lung_slices)
    assert others.size and not masks[others].any()


def test_sr_values_equal_the_answer_and_reference_the_seg(phantom_series):
    phantom, folder, volume = phantom_series
    result = answer(phantom)
    results = dicom_results_for(folder, volume, result)
    values = report_values(results.report)
    document = result.to_dict()
    for key in ("verdict", "positive_fraction", "vote_threshold", "lung_volume_ml", "lesion_burden_pct"):
        assert values[key] == pytest.approx(document[key]), key
    assert values["selected_slices"] == len(document["selected_indices"])
    assert values["demo_warning"] == document["demo_warning"]
    assert "cnn6" in values["model_summary"]
    seg_uid = str(results.segmentation.SOPInstanceUID)
    assert values["segments"] == [(seg_uid, 1), (seg_uid, 2)]
    evidence = {
        str(i.ReferencedSOPInstanceUID)
        for study in results.report.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence for i in series.ReferencedSOPSequence
    }
    assert seg_uid in evidence and len(evidence) == N + 1


def test_not_assessable_answer_carries_its_reasons_and_leaves_out_missing_figures(phantom_series):
    phantom, folder, volume = phantom_series
    reasons = (Reason("no_lungs", "no aerated lung found"), Reason("implausible_lung_volume", "0 ml"))
    result = answer(
        phantom, verdict="not_assessable", positive_fraction=float("nan"), lesion_burden_pct=float("nan"),
        assessment=Assessment(assessable=False, reasons=reasons), selected_indices=np.zeros(0, np.int32),
        slice_probabilities=np.zeros(0, np.float32), lung_slices=np.zeros(0, np.int32),
        lung_mask=np.zeros((0, 16, 16), np.uint8), infection_mask=np.zeros((0, 16, 16), np.uint8),
    )
    results = dicom_results_for(folder, volume, result)
    values = report_values(results.report)
    assert values["verdict"] == "not_assessable"
    assert values["reason_codes"] == ["no_lungs", "implausible_lung_volume"]
    assert values["reason_messages"][0] == "no_lungs: no aerated lung found"
    assert "positive_fraction" not in values and "lesion_burden_pct" not in values
    assert int(results.segmentation.NumberOfFrames) == 2 * N  # empty frames kept: the series stays referenced


def test_missing_frame_of_reference_is_a_clear_error_and_writes_nothing(phantom_series, tmp_path):
    phantom, folder, volume = phantom_series
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    victim = broken / volume.source_names[5]
    ds = pydicom.dcmread(victim)
    del ds.FrameOfReferenceUID
    ds.save_as(victim)
    out = tmp_path / "out"
    with pytest.raises(SourceHeaderError, match=r"FrameOfReferenceUID \(0020,0052\) is missing"):
        results = dicom_results_for(broken, volume, answer(phantom))
        write_dicom_results(results, out, "p")
    assert not out.exists()
    assert exit_code_of(SourceHeaderError("x")) == ExitCode.RESULTS_NOT_STORED == 9


def test_non_dicom_source_has_no_headers(phantom_series, tmp_path):
    phantom, _, volume = phantom_series
    with pytest.raises(SourceHeaderError, match="names no source file"):
        read_source_headers(tmp_path, ())


def test_write_is_atomic_and_a_failure_leaves_no_file(phantom_series, tmp_path):
    phantom, folder, volume = phantom_series
    results = dicom_results_for(folder, volume, answer(phantom))
    paths = write_dicom_results(results, tmp_path / "out", "p1")
    assert [p.name for p in paths] == ["p1_seg.dcm", "p1_sr.dcm"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p1_seg.dcm", "p1_sr.dcm"]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DicomResultsError, match="cannot be written"):
        write_dicom_results(results, blocker, "p2")


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian package dicom3tools) not installed")
def test_seg_and_sr_pass_dciodvfy_without_errors(phantom_series, tmp_path):
    phantom, folder, volume = phantom_series
    for path in write_dicom_results(dicom_results_for(folder, volume, answer(phantom)), tmp_path, "p"):
        run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        errors = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], f"{path.name}: {errors}"


# ------------------------------------------------------------------- destinations
def test_destinations_parse_and_refuse_bad_values():
    assert parse_destination("http://pacs:8042/dicom-web/", None) == StowDestination("http://pacs:8042/dicom-web")
    assert parse_destination(None, "pacs:104:ORTHANC") == StoreDestination("pacs", 104, "ORTHANC")
    assert parse_destination(None, None) is None
    with pytest.raises(InputError, match="expected HOST:PORT:AET"):
        parse_destination(None, "pacs:104")
    with pytest.raises(InputError, match="port '99999' is not in 1..65535"):
        parse_destination(None, "pacs:99999:X")
    with pytest.raises(InputError, match="not both"):
        parse_destination("http://a", "pacs:104:X")
    with pytest.raises(InputError, match="http"):
        parse_destination("pacs:8042", None)
    assert exit_code_of(ResultStoreError("refused", 409)) == ExitCode.RESULTS_NOT_STORED


# ---------------------------------------------------------------------- collector
def _instance(series_uid: str, sop_uid: str, modality: str = "CT") -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2" if modality == "CT" else "1.2.840.10008.5.1.4.1.1.4"
    ds.Modality = modality
    ds.SeriesInstanceUID, ds.SOPInstanceUID = series_uid, sop_uid
    return ds


def test_collector_groups_by_series_and_releases_quiet_series(tmp_path):
    collector = SeriesCollector(tmp_path, max_series=2, max_bytes=1000, quiet_s=5.0)
    assert collector.offer(_instance("1.1", "1.1.1"), b"x" * 100, now=0.0) == STATUS_SUCCESS
    assert collector.offer(_instance("1.1", "1.1.2"), b"x" * 100, now=3.0) == STATUS_SUCCESS
    assert collector.offer(_instance("1.9", "1.9.1", modality="MR"), b"x" * 100, now=3.0) == STATUS_SUCCESS
    assert collector.series_count == 1 and collector.held_bytes == 200
    assert collector.due(now=7.0) == []
    (series,) = collector.due(now=8.0)
    assert series.instances == 2 and len(list(series.folder.iterdir())) == 2
    assert collector.due(now=20.0) == []  # in flight: not handed out twice
    collector.finish(series)
    assert collector.series_count == 0 and not series.folder.exists()


def test_collector_answers_out_of_resources_when_full_and_drops_an_overflowed_series(tmp_path):
    collector = SeriesCollector(tmp_path, max_series=2, max_bytes=250, quiet_s=1.0)
    assert collector.offer(_instance("1.1", "1.1.1"), b"x" * 100, now=0.0) == STATUS_SUCCESS
    assert collector.offer(_instance("1.2", "1.2.1"), b"x" * 100, now=0.0) == STATUS_SUCCESS
    assert collector.offer(_instance("1.3", "1.3.1"), b"x" * 10, now=0.0) == STATUS_OUT_OF_RESOURCES
    assert collector.offer(_instance("1.2", "1.2.2"), b"x" * 100, now=0.0) == STATUS_OUT_OF_RESOURCES
    ready = collector.due(now=2.0)
    assert [s.uid for s in ready] == ["1.1"]  # 1.2 overflowed: dropped, not triaged half
    assert collector.series_count == 1


def test_collector_refuses_an_instance_without_uids(tmp_path):
    collector = SeriesCollector(tmp_path, max_series=2, max_bytes=1000, quiet_s=1.0)
    ds = _instance("1.1", "1.1.1")
    del ds.SOPInstanceUID
    assert collector.offer(ds, b"x", now=0.0) == STATUS_CANNOT_UNDERSTAND
    assert collector.series_count == 0


def test_source_headers_come_in_volume_order(phantom_series):
    _, folder, volume = phantom_series
    headers = read_source_headers(folder, volume.source_names)
    z = [float(h.ImagePositionPatient[2]) for h in headers]
    assert z == sorted(z) and len(z) == N and "PixelData" not in headers[0]


def test_store_to_a_closed_port_is_a_store_error():
    with pytest.raises(ResultStoreError, match=r"C-STORE X@127.0.0.1:1: the PACS cannot be reached"):
        StoreDestination("127.0.0.1", 1, "X", timeout_s=2).store([_instance("1.1", "1.1.1")])



def test_stow_to_a_closed_port_is_a_store_error():
    with pytest.raises(ResultStoreError, match=r"STOW-RS http://127.0.0.1:1/dicom-web: the PACS cannot be reached"):
        ds = _instance("1.1", "1.1.1")
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        StowDestination("http://127.0.0.1:1/dicom-web", timeout_s=2).store([ds])


# ------------------------------------------------------------ any valid CT source
def _rewrite(folder, change) -> None:
    """Apply ``change(dataset)`` to every file of ``folder`` (pixels untouched)."""
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        change(ds)
        ds.save_as(path, enforce_file_format=True)


def _delete_type2(ds) -> None:
    for keyword in TYPE2_PATIENT_STUDY:
        if keyword in ds:
            delattr(ds, keyword)


def _empty_type2(ds) -> None:
    for keyword in TYPE2_PATIENT_STUDY:
        setattr(ds, keyword, "")


@pytest.mark.parametrize("change", [_delete_type2, _empty_type2], ids=["deleted", "empty"])
def test_absent_or_empty_type2_patient_and_study_attributes_stay_empty(phantom_series, tmp_path, change):
    phantom, folder, volume = phantom_series
    source = tmp_path / "anonymised"
    shutil.copytree(folder, source)
    _rewrite(source, change)
    headers = read_source_headers(source, volume.source_names)
    results = build_dicom_results(headers, answer(phantom), DicomOutputConfig(key_images=1),
                                  names=volume.source_names, hu=volume.hu)
    paths = write_dicom_results(results, tmp_path / "out", "p")
    assert [p.name for p in paths] == ["p_seg.dcm", "p_sr.dcm", "p_key01.dcm"]
    for path in paths:
        written = pydicom.dcmread(path)
        for keyword in TYPE2_PATIENT_STUDY:
            assert keyword in written, f"{path.name}: {keyword} absent"
            assert written[keyword].is_empty, f"{path.name}: {keyword} = {written.get(keyword)!r}"
        assert written.StudyInstanceUID == headers[0].StudyInstanceUID
    if change is _delete_type2:  # the headers given were not changed: the copies carry the empty attributes
        assert not any(keyword in headers[0] for keyword in TYPE2_PATIENT_STUDY)
    completed = with_type2_attributes(headers)
    assert all(keyword in completed[0] for keyword in TYPE2_PATIENT_STUDY)
    assert with_type2_attributes(completed)[0] is completed[0]


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")  # the invalid UID set on purpose
@pytest.mark.parametrize(("keyword", "tag", "value", "problem"), [
    ("SOPInstanceUID", "(0008,0018)", None, "is missing or empty"),
    ("StudyInstanceUID", "(0020,000D)", "", "is missing or empty"),
    ("SeriesInstanceUID", "(0020,000E)", None, "is missing or empty"),
    ("FrameOfReferenceUID", "(0020,0052)", "", "is missing or empty"),
    ("StudyInstanceUID", "(0020,000D)", "896911bf-1143-4c8d-8f04-f3cd1a7f6204", "is '896911bf-.*not a valid UID"),
])
def test_a_missing_or_invalid_type1_uid_is_a_source_header_error_naming_file_and_tag(
    phantom_series, keyword, tag, value, problem
):
    phantom, folder, volume = phantom_series
    headers = read_source_headers(folder, volume.source_names)
    broken = copy.deepcopy(headers[7])
    if value is None:
        delattr(broken, keyword)
    else:
        setattr(broken, keyword, value)
    headers[7] = broken
    name = volume.source_names[7]
    with pytest.raises(SourceHeaderError, match=rf"{name}: {keyword} \({tag[1:-1]}\) {problem}"):
        build_dicom_results(headers, answer(phantom), names=volume.source_names)


# ------------------------------------------------------- prone, feet-first, decubitus
#: In-plane spacing (row = y, column = x) of the oriented phantom, mm: unequal, so that a
#: transpose shows in PixelSpacing too.
ORIENTED_SPACING = (5.0, 6.0)


def oriented_phantom(phantom) -> tuple[CTVolume, PipelineResult]:
    """A ``[N, 64, 48]`` crop of the phantom (patient layout) and its answer (16 x 12 grid)."""
    crop = np.s_[:, :, 8:56]
    volume = CTVolume(
        hu=np.ascontiguousarray(phantom.volume.hu[crop]), spacing_mm=(phantom.volume.spacing_mm[0], *ORIENTED_SPACING),
        positions_mm=phantom.volume.positions_mm, series_key="oriented", source_format="array",
    )
    base = answer(phantom)
    result = answer(
        phantom,
        lung_mask=phantom.lung_mask[crop][base.lung_slices][:, ::FACTOR, ::FACTOR].astype(np.uint8),
        infection_mask=phantom.lesion_mask[crop][base.lung_slices][:, ::FACTOR, ::FACTOR].astype(np.uint8),
    )
    return volume, result


def patient_origin(volume: CTVolume) -> np.ndarray:
    """Patient (x, y) mm of the patient-layout pixel (0, 0) of the oriented phantom."""
    _, h, w = volume.hu.shape
    return np.array([-w * ORIENTED_SPACING[1] / 2, -h * ORIENTED_SPACING[0] / 2])


def write_oriented_series(volume: CTVolume, folder, position: str) -> tuple[CTVolume, InPlaneTransform]:
    """Write ``volume`` (patient layout) as the files a scanner writes for Patient Position
    ``position``: stored pixels, Image Orientation, Image Position and Pixel Spacing of that
    position. Returns the volume as the reader gives it (source names, orientation)."""
    cosines = source_orientation(position)
    transform = transform_from_orientation(cosines)
    _, h, w = volume.hu.shape
    stored = np.ascontiguousarray(transform.to_source(volume.hu))
    rows_of = transform.to_source(np.broadcast_to(np.arange(h)[None, :, None], (1, h, w)))[0]
    cols_of = transform.to_source(np.broadcast_to(np.arange(w)[None, None, :], (1, h, w)))[0]
    corner = np.array([cols_of[0, 0] * ORIENTED_SPACING[1], rows_of[0, 0] * ORIENTED_SPACING[0]])
    x0, y0 = patient_origin(volume) + corner  # stored pixel (0, 0)
    spacing = ORIENTED_SPACING[::-1] if transform.transpose else ORIENTED_SPACING
    folder.mkdir(parents=True)
    names = []
    for i, (name, ds) in enumerate(iter_dicom_datasets(volume, name_order="anatomical")):
        ds.PatientPosition = position
        ds.ImageOrientationPatient = [f"{v:g}" for v in cosines]
        ds.ImagePositionPatient = [f"{x0:.4f}", f"{y0:.4f}", f"{float(volume.positions_mm[i]):.4f}"]
        ds.PixelSpacing = [f"{v:g}" for v in spacing]
        ds.Rows, ds.Columns = stored.shape[1:]
        ds.PixelData = stored[i].astype("<i2").tobytes()
        ds.save_as(folder / name, enforce_file_format=True)
        names.append(name)
    read = dataclasses.replace(volume, source_format="dicom", source_names=tuple(names), orientation=transform)
    return read, transform


def patient_points(mask: np.ndarray, position, cosines, spacing) -> np.ndarray:
    """Sorted patient (x, y) mm, rounded to 0.01, of the set pixels of one stored frame
    ``mask`` ``[Rows, Columns]`` with the frame's Image Position, Orientation and Pixel Spacing."""
    rows, cols = np.nonzero(mask)
    row_dir, col_dir = np.asarray(cosines[:3], float), np.asarray(cosines[3:], float)
    points = (np.asarray(position, float)[None, :] + cols[:, None] * float(spacing[1]) * row_dir
              + rows[:, None] * float(spacing[0]) * col_dir)
    return np.unique(np.round(points[:, :2], 2), axis=0)


def expected_masks(volume: CTVolume, result: PipelineResult) -> np.ndarray:
    """bool ``[N, H, W, 2]`` (lung, infection) in the volume's patient layout."""
    n, h, w = volume.hu.shape
    expected = np.zeros((n, h, w, 2), bool)
    expected[result.lung_slices, ..., 0] = resize_nearest(result.lung_mask, (h, w)) > 0
    expected[result.lung_slices, ..., 1] = resize_nearest(result.infection_mask, (h, w)) > 0
    return expected


@pytest.mark.parametrize("position", ["HFP", "FFS", "HFDL"])
def test_seg_of_a_non_identity_orientation_overlays_each_source_frame(phantom_series, tmp_path, position):
    phantom, _, _ = phantom_series
    patient, result = oriented_phantom(phantom)
    volume, transform = write_oriented_series(patient, tmp_path / position, position)
    assert not transform.is_identity
    seg = dicom_results_for(tmp_path / position, volume, result).segmentation
    decoded = pydicom.dcmread(pydicom.filebase.DicomBytesIO(_bytes(seg)))
    headers = read_source_headers(tmp_path / position, volume.source_names)
    uids = [str(h.SOPInstanceUID) for h in headers]
    rows, cols = int(headers[0].Rows), int(headers[0].Columns)
    assert (int(decoded.Rows), int(decoded.Columns)) == (rows, cols) == transform.patient_shape(patient.hu.shape[1:])
    pixels = hd.seg.Segmentation.from_dataset(decoded).get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=[1, 2], assert_missing_frames_are_empty=True
    ).astype(bool)
    expected = expected_masks(volume, result)
    stored_expected = transform.to_source(expected)
    assert not np.array_equal(stored_expected, expected)  # the orientation matters
    np.testing.assert_array_equal(pixels, stored_expected)
    # Independent of the transform: every set pixel of a SEG frame lies, through the SEG's own
    # geometry, where the patient-layout mask puts it.
    shared = decoded.SharedFunctionalGroupsSequence[0]
    cosines = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
    spacing = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
    frames = decoded.pixel_array.reshape(-1, rows, cols)
    checked = 0
    for frame, item in zip(frames, decoded.PerFrameFunctionalGroupsSequence, strict=True):
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        index, segment = uids.index(str(uid)), int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        position_mm = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        assert position_mm == [float(v) for v in headers[index].ImagePositionPatient]
        truth = expected[index, ..., segment - 1]
        r, c = np.nonzero(truth)
        want = np.unique(np.round(patient_origin(patient)[None, :] + np.stack(
            [c * ORIENTED_SPACING[1], r * ORIENTED_SPACING[0]], axis=1), 2), axis=0)
        np.testing.assert_allclose(patient_points(frame, position_mm, cosines, spacing), want, atol=0.011)
        checked += int(truth.any())
    assert checked > N // 2


def test_full_resolution_masks_go_back_to_the_stored_layout():
    grid = np.zeros((1, 4, 2), np.uint8)
    grid[0, 0, 1] = 1  # patient layout: anterior row, patient-left column
    result = PipelineResult(
        verdict="negative", positive_fraction=0.0, vote_threshold=0.25, slice_probabilities=np.zeros(0, np.float32),
        selected_indices=np.zeros(0, np.int32), lesion_burden_pct=0.0, lung_volume_ml=1.0, model_versions=(),
        latency_s=0.0, lung_slices=np.array([0], np.int32), lung_mask=grid, infection_mask=np.zeros_like(grid),
        num_slices=1,
    )
    transposed = full_resolution_masks(result, (1, 4, 2), InPlaneTransform(transpose=True, flip_rows=True))
    assert transposed.shape == (1, 2, 4, 2)
    assert np.argwhere(transposed[0, ..., 0]).tolist() == [[1, 3]]
    flipped = full_resolution_masks(result, (1, 4, 2), InPlaneTransform(flip_rows=True, flip_columns=True))
    assert np.argwhere(flipped[0, ..., 0]).tolist() == [[3, 0]]


def test_rows_and_columns_are_compared_in_the_patient_layout(phantom_series, tmp_path):
    phantom, _, _ = phantom_series
    patient, result = oriented_phantom(phantom)
    volume, transform = write_oriented_series(patient, tmp_path / "HFDL", "HFDL")
    assert transform.transpose
    with pytest.raises(SourceHeaderError, match=r"Rows/Columns \(0028,0010\) 48 x 64 \(identity to the patient "
                                                r"layout\); expected the volume's 64 x 48"):
        dicom_results_for(tmp_path / "HFDL", dataclasses.replace(volume, orientation=InPlaneTransform()), result)


# ------------------------------------------------------------ one multi-frame source
def multiframe_source(folder, volume: CTVolume, out_dir) -> tuple[CTVolume, pydicom.Dataset]:
    """The series of ``folder`` as one Legacy Converted Enhanced CT file ``out_dir/mf.dcm``
    and the volume as read from it (source names all ``mf.dcm``, source frames by position)."""
    datasets = [pydicom.dcmread(folder / name) for name in volume.source_names]
    image = hd.legacy.LegacyConvertedEnhancedCTImage(
        datasets, series_instance_uid=hd.UID(), series_number=7, sop_instance_uid=hd.UID(), instance_number=1
    )
    out_dir.mkdir()
    image.save_as(out_dir / "mf.dcm", enforce_file_format=True)
    z = np.array([float(item.PlanePositionSequence[0].ImagePositionPatient[2])
                  for item in image.PerFrameFunctionalGroupsSequence])
    frames = tuple(int(np.argmin(np.abs(z - p))) + 1 for p in volume.positions_mm)
    assert sorted(frames) == list(range(1, N + 1)) and frames != tuple(range(1, N + 1))
    read = dataclasses.replace(volume, source_names=("mf.dcm",) * N, source_frames=frames)
    return read, pydicom.dcmread(out_dir / "mf.dcm", stop_before_pixels=True)


def test_seg_over_one_multiframe_source_places_each_slice_at_its_frame(phantom_series, tmp_path):
    phantom, folder, volume = phantom_series
    mf_volume, header = multiframe_source(folder, volume, tmp_path / "mf")
    result = answer(phantom)
    results = dicom_results_for(tmp_path / "mf", mf_volume, result, DicomOutputConfig(key_images=2))
    written = pydicom.dcmread(pydicom.filebase.DicomBytesIO(_bytes(results.segmentation)))
    decoded = hd.seg.Segmentation.from_dataset(written)
    referenced = decoded.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert [str(i.ReferencedSOPInstanceUID) for i in referenced] == [str(header.SOPInstanceUID)]
    pixels = decoded.get_pixels_by_source_frame(
        source_sop_instance_uid=str(header.SOPInstanceUID), source_frame_numbers=list(mf_volume.source_frames),
        segment_numbers=[1, 2], assert_missing_frames_are_empty=True,
    ).astype(bool)
    np.testing.assert_array_equal(pixels, expected_masks(volume, result))
    source_positions = [[float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
                        for item in header.PerFrameFunctionalGroupsSequence]
    for item in decoded.PerFrameFunctionalGroupsSequence:
        frame = int(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        assert position == source_positions[frame - 1]
    evidence = {str(i.ReferencedSOPInstanceUID) for study in results.report.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for i in series.ReferencedSOPSequence}
    assert evidence == {str(header.SOPInstanceUID), str(results.segmentation.SOPInstanceUID)}
    assert len(results.key_images) == 2
    for image in results.key_images:
        reference = image.SourceImageSequence[0]
        frame = int(reference.ReferencedFrameNumber)
        assert str(reference.ReferencedSOPInstanceUID) == str(header.SOPInstanceUID)
        assert [float(v) for v in image.ImagePositionPatient] == source_positions[frame - 1]


def test_multiframe_sources_over_several_files_or_frames_out_of_range_are_clear_errors(phantom_series, tmp_path):
    phantom, folder, volume = phantom_series
    mf_volume, _ = multiframe_source(folder, volume, tmp_path / "mf")
    shutil.copy(tmp_path / "mf" / "mf.dcm", tmp_path / "mf" / "mf2.dcm")
    two_files = dataclasses.replace(mf_volume, source_names=("mf.dcm",) * (N - 1) + ("mf2.dcm",))
    with pytest.raises(SourceHeaderError, match=r"frames of 2 files \(mf.dcm, mf2.dcm\); DICOM SEG/SR support one"):
        dicom_results_for(tmp_path / "mf", two_files, answer(phantom))
    beyond = dataclasses.replace(mf_volume, source_frames=(N + 1,) + mf_volume.source_frames[1:])
    with pytest.raises(SourceHeaderError, match=rf"mf.dcm: source frame {N + 1}; expected 1..{N} "
                                                r"\(Number of Frames \(0028,0008\)\)"):
        dicom_results_for(tmp_path / "mf", beyond, answer(phantom))
    single = dataclasses.replace(volume, source_frames=tuple(range(1, N + 1)))
    with pytest.raises(SourceHeaderError, match=r"frames of 24 files"):
        dicom_results_for(folder, single, answer(phantom))
    broken = pydicom.dcmread(tmp_path / "mf" / "mf.dcm")
    frame = mf_volume.source_frames[3]
    del broken.PerFrameFunctionalGroupsSequence[frame - 1].PlanePositionSequence
    (tmp_path / "broken").mkdir()
    broken.save_as(tmp_path / "broken" / "mf.dcm", enforce_file_format=True)
    with pytest.raises(SourceHeaderError, match=rf"mf.dcm: frame {frame}: no PlanePositionSequence \(0020,9113\)"):
        dicom_results_for(tmp_path / "broken", mf_volume, answer(phantom))


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian package dicom3tools) not installed")
def test_prone_and_multiframe_seg_pass_dciodvfy_without_errors(phantom_series, tmp_path):
    phantom, folder, volume = phantom_series
    patient, oriented_result = oriented_phantom(phantom)
    prone, _ = write_oriented_series(patient, tmp_path / "HFP", "HFP")
    mf_volume, _ = multiframe_source(folder, volume, tmp_path / "mf")
    cases = {"prone": (tmp_path / "HFP", prone, oriented_result), "mf": (tmp_path / "mf", mf_volume, answer(phantom))}
    for name, (source, case_volume, result) in cases.items():
        paths = write_dicom_results(dicom_results_for(source, case_volume, result), tmp_path / "out", name)
        for path in paths:
            run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
            errors = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
            assert errors == [], f"{path.name}: {errors}"


# ---------------------------------------------------------------------- warnings
def test_sr_carries_the_assessment_warnings_beside_the_reasons(phantom_series):
    phantom, folder, volume = phantom_series
    warnings = (Reason("partial_coverage", "lung bases 12 mm outside the scan"),)
    result = answer(phantom, assessment=Assessment(assessable=True, warnings=warnings))
    values = report_values(dicom_results_for(folder, volume, result).report)
    assert values["verdict"] == "positive" and values["reason_codes"] == []
    assert values["warning_codes"] == ["partial_coverage"]
    assert values["warning_messages"] == ["partial_coverage: lung bases 12 mm outside the scan"]
    plain = report_values(dicom_results_for(folder, volume, answer(phantom)).report)
    assert plain["warning_codes"] == [] and plain["warning_messages"] == []
