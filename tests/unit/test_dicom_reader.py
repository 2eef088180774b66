"""Reading DICOM series written with pydicom: order, HU, spacing, compression, series choice."""

from __future__ import annotations

import dataclasses
import logging
import os
import zipfile

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    BasicTextSRStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from covidct.errors import MixedSeriesError, ObliqueSeriesError
from covidct.preprocessing.reader_config import ReaderConfig
from covidct.preprocessing.io.dicom_decode import DecodeTask, decode_series, resolve_workers, stored_to_hu
from covidct.preprocessing.io.series_reader import read_dicom_series, read_series
from covidct.preprocessing.volume import make_series_key
from tests.unit.dicom_factory import PATIENT_ID, PATIENT_NAME, STUDY_DATE, write_ct_series


def zip_folder(folder, archive, prefix=""):
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, prefix + path.relative_to(folder).as_posix())
    return archive


def test_uncompressed_series_sorted_by_position_not_file_name(tmp_path):
    written = write_ct_series(tmp_path / "s", num_slices=7, z0=-50.0, dz=2.5)
    volume = read_series(tmp_path / "s")
    np.testing.assert_array_equal(volume.hu, written.hu)
    assert volume.hu.dtype == np.int16 and volume.hu.shape == (7, 64, 64)
    np.testing.assert_allclose(volume.positions_mm, written.positions_mm)
    assert volume.spacing_mm == pytest.approx((2.5, 0.7, 0.7))
    # names were written in reverse position order: the first slice is the last name
    assert volume.source_names == tuple(p.name for p in written.paths)
    assert volume.source_names[0] == "IM0007.dcm"
    assert volume.source_format == "dicom"
    assert volume.series_key == make_series_key(written.series_uid)


def test_volume_holds_no_patient_identifier(tmp_path):
    written = write_ct_series(tmp_path / "s")
    volume = read_series(tmp_path / "s")
    text = repr([getattr(volume, f.name) for f in dataclasses.fields(volume) if f.name != "hu"])
    for identifier in (PATIENT_NAME, PATIENT_ID, STUDY_DATE, written.series_uid, written.study_uid):
        assert identifier not in text


def test_recursive_folder_names_are_relative_posix_paths(tmp_path):
    write_ct_series(tmp_path / "root" / "a" / "b", num_slices=4)
    volume = read_series(tmp_path / "root")
    assert volume.source_names[0] == "a/b/IM0004.dcm"
    assert all(name.startswith("a/b/IM") for name in volume.source_names)


def test_zip_of_a_series_reads_like_the_folder(tmp_path):
    written = write_ct_series(tmp_path / "s", num_slices=5)
    archive = zip_folder(tmp_path / "s", tmp_path / "series.zip", prefix="study/")
    volume = read_series(archive)
    np.testing.assert_array_equal(volume.hu, written.hu)
    assert volume.source_format == "dicom-zip"
    assert volume.source_names[0] == "study/IM0005.dcm"


def test_zip_decoded_by_a_process_pool(tmp_path):
    written = write_ct_series(tmp_path / "s", num_slices=48, rows=32, cols=32)
    archive = zip_folder(tmp_path / "s", tmp_path / "series.zip")
    volume = read_series(archive, config=ReaderConfig(decode_workers=2))
    np.testing.assert_array_equal(volume.hu, written.hu)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=["rle", "jpeg2000"])
def test_compressed_transfer_syntaxes_decode_to_the_same_hu(tmp_path, syntax):
    written = write_ct_series(tmp_path / "s", num_slices=4, transfer_syntax=syntax)
    assert pydicom.dcmread(written.paths[0]).file_meta.TransferSyntaxUID == syntax
    volume = read_series(tmp_path / "s")
    np.testing.assert_array_equal(volume.hu, written.hu)


def test_rescale_slope_and_intercept_applied(tmp_path):
    written = write_ct_series(tmp_path / "s", num_slices=3, slope=0.5, intercept=-1000.0)
    volume = read_series(tmp_path / "s")
    np.testing.assert_array_equal(volume.hu, written.hu)


def test_hu_clipped_to_int16():
    stored = np.array([[0, 30000], [-30000, 100]], dtype=np.int16)
    np.testing.assert_array_equal(
        stored_to_hu(stored, 2.0, 0.0), [[0, 32767], [-32768, 200]]
    )
    np.testing.assert_array_equal(stored_to_hu(stored, 1.0, 5000.0)[0], [5000, 32767])


def test_position_projected_on_the_oblique_slice_normal(tmp_path):
    angle = np.deg2rad(15)
    orientation = (1, 0, 0, 0, float(np.cos(angle)), float(-np.sin(angle)))
    written = write_ct_series(tmp_path / "s", num_slices=5, dz=3.0, orientation=orientation)
    with pytest.raises(ObliqueSeriesError, match=r"lies 15 degrees off the patient axes; expected an axial series"):
        read_series(tmp_path / "s")  # a 15 degree gantry tilt is refused by default
    volume = read_series(tmp_path / "s", config=ReaderConfig(max_oblique_deg=20))
    np.testing.assert_array_equal(volume.hu, written.hu)
    np.testing.assert_allclose(np.diff(volume.positions_mm), 3.0)
    assert volume.spacing_mm[0] == pytest.approx(3.0)


def test_slice_location_used_when_image_position_missing(tmp_path):
    written = write_ct_series(tmp_path / "s", num_slices=4)
    for path in written.paths:
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient
        ds.save_as(path)
    volume, report = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(volume.hu, written.hu)
    assert report.position_tag == "(0020,1041)"


def _write_sr(path):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = BasicTextSRStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = BasicTextSRStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "SR"
    ds.SeriesInstanceUID = generate_uid()
    ds.save_as(path, enforce_file_format=True)


def test_picks_largest_axial_ct_series_and_reports_every_skip(tmp_path, caplog):
    root = tmp_path / "study"
    main = write_ct_series(root / "axial", num_slices=6, seed=1)
    write_ct_series(root / "thin", num_slices=4, dz=1.0, seed=2, slice_thickness=1.0)
    write_ct_series(root / "scout", num_slices=2, prefix="LOC",
                    image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    write_ct_series(root / "coronal", num_slices=8, prefix="COR", orientation=(1, 0, 0, 0, 0, -1))
    write_ct_series(root / "mr", num_slices=9, prefix="MR", modality="MR")
    _write_sr(root / "report.dcm")
    (root / "notes.txt").write_text("not a DICOM file")
    (root / "empty.dcm").write_bytes(b"")
    with caplog.at_level(logging.INFO, logger="covidct.preprocessing"):
        volume, report = read_dicom_series(root)
    np.testing.assert_array_equal(volume.hu, main.hu)
    reasons = {s.name: s.reason for s in report.skipped}
    assert "localizer" in reasons["scout/LOC0001.dcm"]
    assert "non-axial" in reasons["coronal/COR0001.dcm"]
    assert "'MR'; expected 'CT'" in reasons["mr/MR0001.dcm"]
    assert "non-image object (Basic Text SR Storage)" in reasons["report.dcm"]
    assert "not DICOM" in reasons["notes.txt"]
    assert "empty file (0 bytes)" in reasons["empty.dcm"]
    assert "other series" in reasons["thin/IM0001.dcm"]
    assert len(report.skipped) == 2 + 8 + 9 + 1 + 1 + 1 + 4
    assert "skipping notes.txt: not DICOM" in caplog.text
    assert sorted(n for _, n in report.series_sizes) == [4, 6]


def test_thinnest_rule_picks_the_smallest_spacing(tmp_path):
    write_ct_series(tmp_path / "thick", num_slices=6, dz=5.0, seed=1)
    thin = write_ct_series(tmp_path / "thin", num_slices=4, dz=1.0, seed=2)
    volume = read_series(tmp_path, config=ReaderConfig(series_rule="thinnest"))
    np.testing.assert_array_equal(volume.hu, thin.hu)
    assert volume.spacing_mm[0] == pytest.approx(1.0)


def test_most_slices_tie_broken_by_thickness_else_mixed_series_error(tmp_path):
    write_ct_series(tmp_path / "a", num_slices=4, seed=1, slice_thickness=5.0)
    b = write_ct_series(tmp_path / "b", num_slices=4, seed=2, slice_thickness=1.25)
    np.testing.assert_array_equal(read_series(tmp_path).hu, b.hu)
    write_ct_series(tmp_path / "c", num_slices=4, seed=3, slice_thickness=1.25)
    with pytest.raises(MixedSeriesError, match=r"cannot choose between series .*4 slices, 1.25 mm"):
        read_series(tmp_path)


def test_symlink_leaving_the_root_is_not_followed(tmp_path):
    written = write_ct_series(tmp_path / "s", num_slices=3)
    outside = write_ct_series(tmp_path / "outside", num_slices=1, z0=500.0,
                              series_uid=written.series_uid, prefix="OUT")
    os.symlink(outside.paths[0], tmp_path / "s" / "link.dcm")
    volume, report = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(volume.hu, written.hu)
    assert [s.name for s in report.skipped] == ["link.dcm"]
    assert "symlink resolves outside" in report.skipped[0].reason


def test_parallel_decode_matches_in_process_decode(tmp_path):
    written = write_ct_series(tmp_path / "s", num_slices=50, rows=32, cols=32)
    assert resolve_workers(2, 50) == 2
    assert resolve_workers(2, 10) == 1
    volume, report = read_dicom_series(tmp_path / "s")
    tasks = [
        DecodeTask(h.ref.display, h.ref.path, None, 32, 32, h.slope, h.intercept)
        for h in report.slices
    ]
    np.testing.assert_array_equal(decode_series(tasks, workers=2), written.hu)
    np.testing.assert_array_equal(decode_series(tasks, workers=1), written.hu)


def test_dicom_without_preamble_and_file_meta(tmp_path):
    written = write_ct_series(tmp_path / "s", num_slices=3)
    for path in written.paths:
        ds = pydicom.dcmread(path)
        ds.file_meta = FileMetaDataset()
        ds.preamble = None
        pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert written.paths[0].read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(read_series(tmp_path / "s").hu, written.hu)
