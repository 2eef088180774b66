"""DICOM SEG and SR of an answer, built from a phantom series written as real DICOM files
(no server: the answer is made from the phantom's own masks on a reduced grid)."""

from __future__ import annotations

import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest

from client.batch import ExitCode, exit_code_of
from client.dicom_results import dicom_results_for, read_source_headers, write_dicom_results
from client.dicom_seg import full_resolution_masks
from client.dicom_sr import report_values
from client.listener import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_OUT_OF_RESOURCES,
    STATUS_SUCCESS,
    SeriesCollector,
)
from client.pacs import StoreDestination, StowDestination, parse_destination
from client.result import Assessment, PipelineResult, Reason
from covidct.errors import DicomResultsError, InputError, ResultStoreError, SourceHeaderError
from preprocessing.io.series_reader import read_series
from preprocessing.io.series_writer import write_dicom_series
from preprocessing.resize import resize_nearest
from preprocessing.synthetic.phantom import make_phantom

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
