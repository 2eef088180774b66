"""Hostile inputs: size limits before allocation, rescale values, one patient per input,
special files, implausible spacing. Every case is a real file and ends in a typed error
(or a reported skip), never a bare exception or an allocation the headers asked for."""

from __future__ import annotations

import gzip
import os
import tracemalloc
import warnings
import zipfile

import nibabel as nib
import numpy as np
import pydicom
import pytest
import tifffile
from pydicom.uid import generate_uid

from covidct.errors import (
    ConfigError,
    ImplausibleSpacingError,
    InputError,
    MixedPatientsError,
    NotDicomError,
    PixelDecodeError,
    RescaleValueError,
    ResourceLimitError,
)
from covidct.preprocessing.reader_config import ReaderConfig
from covidct.preprocessing.io.series_reader import read_dicom_series, read_series
from tests.unit.dicom_factory import PATIENT_ID, PATIENT_NAME, write_ct_series

PEAK_LIMIT_BYTES = 50 * 1024**2


def _edit(paths, change):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid values are the point of these tests
        for path in paths:
            ds = pydicom.dcmread(path)
            change(ds)
            ds.save_as(path)


def _peak_bytes(call):
    """Run ``call`` (expected to raise) under tracemalloc; return (exception, peak bytes)."""
    tracemalloc.start()
    try:
        with pytest.raises(InputError) as info:
            call()
        return info.value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ------------------------------------------------------------------ limits before allocation
def test_huge_rows_and_columns_fail_before_any_allocation(tmp_path):
    written = write_ct_series(tmp_path, num_slices=3)

    def huge(ds):
        ds.Rows, ds.Columns = 65535, 65535  # 8 GiB per slice; the files hold 64 x 64 pixels

    _edit(written.paths, huge)
    error, peak = _peak_bytes(lambda: read_series(tmp_path))
    assert isinstance(error, ResourceLimitError)
    assert peak < PEAK_LIMIT_BYTES
    with pytest.raises(ResourceLimitError, match=r"IM000\d\.dcm: Rows \(0028,0010\) x Columns \(0028,0011\) is "
                       r"65535x65535; expected each in \[32, 4096\] pixels \(ReaderConfig\.matrix_size_px\)"):
        read_series(tmp_path)


def test_memory_budget_checked_from_the_headers(tmp_path):
    write_ct_series(tmp_path, num_slices=6)
    with pytest.raises(ResourceLimitError, match=r"6 x 64 x 64 int16 voxels would take 49152 bytes .*"
                       r"expected at most 40000 bytes"):
        read_series(tmp_path, config=ReaderConfig(max_volume_bytes=40_000))


def test_file_over_the_per_file_budget_is_not_parsed(tmp_path):
    written = write_ct_series(tmp_path / "s", num_slices=3)
    config = ReaderConfig(max_file_bytes=5000)  # each file is about 8.5 kB
    with pytest.raises(ResourceLimitError, match=r"IM0003\.dcm: file of \d+ bytes .*expected at most 5000 bytes "
                       r"per file \(ReaderConfig\.max_file_bytes\)"):
        read_series(written.paths[0], config=config)
    with pytest.raises(ResourceLimitError, match=r"no CT image left; e\.g\. IM0001\.dcm: file of \d+ bytes"):
        read_series(tmp_path / "s", config=config)


def test_tiff_page_shape_checked_from_its_tags(tmp_path):
    (tmp_path / "t").mkdir()
    for i in range(2):
        tifffile.imwrite(tmp_path / "t" / f"IM{i + 1}.tif", np.zeros((4100, 40), np.uint16))
    with pytest.raises(ResourceLimitError, match=r"IM1\.tif: TIFF page size \(rows x columns\) is 4100x40; "
                       r"expected each in \[32, 4096\]"):
        read_series(tmp_path / "t")


def test_reader_config_limits_are_validated():
    with pytest.raises(ConfigError, match=r"ReaderConfig\.max_volume_bytes=0; expected a positive integer"):
        ReaderConfig(max_volume_bytes=0)
    with pytest.raises(ConfigError, match=r"ReaderConfig\.matrix_size_px=\(64, 32\); expected integers"):
        ReaderConfig(matrix_size_px=(64, 32))
    with pytest.raises(ConfigError, match=r"ReaderConfig\.pixel_spacing_mm=\(5\.0, 0\.1\); expected \(low, high\)"):
        ReaderConfig(pixel_spacing_mm=(5.0, 0.1))


# --------------------------------------------------------------------------------- zip
def _zip_of(folder, archive):
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.iterdir()):
            zf.write(path, path.name)
    return archive


def _add_zeros(archive, name, size):
    """Append an entry of ``size`` zero bytes, compressed while it is written (streaming)."""
    with zipfile.ZipFile(archive, "a", zipfile.ZIP_DEFLATED) as zf:
        info = zipfile.ZipInfo(name)
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w") as fp:
            chunk = bytes(1 << 20)
            for _ in range(size >> 20):
                fp.write(chunk)


def test_zip_bomb_refused_before_inflating(tmp_path):
    write_ct_series(tmp_path / "s", num_slices=3)
    archive = _zip_of(tmp_path / "s", tmp_path / "bomb.zip")
    _add_zeros(archive, "zeros.dcm", 200 << 20)  # 200 MiB of zeros, about 200 kB compressed
    assert archive.stat().st_size < 1 << 20
    error, peak = _peak_bytes(lambda: read_series(archive))
    assert peak < PEAK_LIMIT_BYTES
    assert isinstance(error, ResourceLimitError)
    expected = (r"bomb\.zip::zeros\.dcm: zip entry inflates \d+ to 209715200 bytes, a compression ratio of \d+; "
                r"expected at most 200 \(ReaderConfig\.max_compression_ratio\)")
    with pytest.raises(ResourceLimitError, match=expected):
        read_series(archive)


def test_zip_entry_size_and_declared_total(tmp_path):
    write_ct_series(tmp_path / "s", num_slices=3)
    archive = _zip_of(tmp_path / "s", tmp_path / "s.zip")
    with pytest.raises(ResourceLimitError, match=r"s\.zip::IM000\d\.dcm: zip entry declares \d+ bytes .*"
                       r"expected at most 4000 bytes per file"):
        read_series(archive, config=ReaderConfig(max_file_bytes=4000))
    with pytest.raises(ResourceLimitError, match=r"s\.zip: zip entries declare \d+ bytes .* in all; expected at "
                       r"most 20000 bytes \(ReaderConfig\.max_volume_bytes\)"):
        read_series(archive, config=ReaderConfig(max_volume_bytes=20_000))


def test_zip_with_too_many_entries(tmp_path):
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for i in range(10_001):
            zf.writestr(f"f{i:05d}", b"")
    with pytest.raises(ResourceLimitError, match=r"many\.zip: holds 10001 zip entries; expected at most 10000 "
                       r"\(ReaderConfig\.max_files\)"):
        read_series(archive)


def test_zip_entry_inflating_past_its_declared_size_is_stopped(tmp_path):
    written = write_ct_series(tmp_path / "s", num_slices=3)
    archive = tmp_path / "lie.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in written.paths:
            zf.write(path, path.name)
    size = written.paths[0].stat().st_size
    data = bytearray(archive.read_bytes())
    real, lie = size.to_bytes(4, "little"), (size - 100).to_bytes(4, "little")
    central = data.index(b"PK\x01\x02")  # first central directory header: the first entry
    assert data[central + 24:central + 28] == real
    data[central + 24:central + 28] = lie  # declared uncompressed size, 100 bytes short
    archive.write_bytes(bytes(data))
    expected = r"lie\.zip::IM0003\.dcm: zip entry is corrupt or inflates to other than its declared \d+ bytes"
    with pytest.raises(PixelDecodeError, match=expected):
        read_series(archive)


# ------------------------------------------------------------------------------ rescale
@pytest.mark.parametrize(
    ("keyword", "value", "expected"),
    [
        ("RescaleSlope", "0", r"Rescale Slope \(0028,1053\) is 0\.0; expected a finite non-zero number"),
        ("RescaleSlope", "NaN", r"Rescale Slope \(0028,1053\) is nan; expected a finite non-zero number"),
        ("RescaleIntercept", "inf", r"Rescale Intercept \(0028,1052\) is inf; expected a finite number of HU"),
    ],
)
def test_rescale_values(tmp_path, keyword, value, expected):
    written = write_ct_series(tmp_path, num_slices=3)
    _edit(written.paths[1:2], lambda ds: setattr(ds, keyword, value))
    with pytest.raises(RescaleValueError, match=r"IM0002\.dcm: " + expected):
        read_series(tmp_path)


# ------------------------------------------------------------------- one patient per input
def test_two_patients_in_one_folder(tmp_path):
    write_ct_series(tmp_path / "a", num_slices=6, seed=1)
    other = write_ct_series(tmp_path / "b", num_slices=4, seed=2)
    _edit(other.paths, lambda ds: setattr(ds, "PatientID", "OTHER-777"))
    with pytest.raises(MixedPatientsError) as info:
        read_series(tmp_path)
    message = str(info.value)
    assert "OTHER-777" not in message and PATIENT_ID not in message and PATIENT_NAME not in message
    expected = (r"the 10 CT image files belong to 2 distinct patients \(Patient ID \(0010,0020\) differs, "
                r"e\.g\. between .*a/IM0001\.dcm and .*b/IM0001\.dcm\); expected one patient and one study")
    with pytest.raises(MixedPatientsError, match=expected):
        read_series(tmp_path)


def test_two_studies_in_one_folder_and_in_one_zip(tmp_path):
    write_ct_series(tmp_path / "s" / "a", num_slices=5, seed=1)
    other_study = generate_uid()
    write_ct_series(tmp_path / "s" / "b", num_slices=3, seed=2, study_uid=other_study)
    expected = r"belong to 2 distinct studies \(Study Instance UID \(0020,000D\) differs"
    with pytest.raises(MixedPatientsError, match=expected) as info:
        read_series(tmp_path / "s")
    assert other_study not in str(info.value)
    archive = tmp_path / "s.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted((tmp_path / "s").rglob("*.dcm")):
            zf.write(path, path.relative_to(tmp_path / "s").as_posix())
    with pytest.raises(MixedPatientsError, match=expected):
        read_series(archive)


def test_patient_name_compared_where_present(tmp_path):
    write_ct_series(tmp_path / "a", num_slices=4, seed=1)
    other = write_ct_series(tmp_path / "b", num_slices=3, seed=2)
    _edit(other.paths[:1], lambda ds: delattr(ds, "PatientName"))  # absent: not compared
    assert read_series(tmp_path).num_slices == 4
    _edit(other.paths[1:2], lambda ds: setattr(ds, "PatientName", "Roe^Richard"))
    with pytest.raises(MixedPatientsError, match=r"2 distinct patients \(Patient's Name \(0010,0010\) differs"):
        read_series(tmp_path)


# ------------------------------------------------------------------ loops and special files
def test_symlink_loop_is_skipped_with_its_reason(tmp_path):
    written = write_ct_series(tmp_path / "s", num_slices=3)
    os.symlink(tmp_path / "s" / "loop_b", tmp_path / "s" / "loop_a")
    os.symlink(tmp_path / "s" / "loop_a", tmp_path / "s" / "loop_b")
    volume, report = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(volume.hu, written.hu)
    reasons = {s.name: s.reason for s in report.skipped}
    assert reasons == {"loop_a": "symlink loop; not followed", "loop_b": "symlink loop; not followed"}
    (tmp_path / "only").mkdir()
    os.symlink(tmp_path / "only" / "y", tmp_path / "only" / "x")
    os.symlink(tmp_path / "only" / "x", tmp_path / "only" / "y")
    with pytest.raises(NotDicomError, match=r"only: no DICOM file; e\.g\. x: symlink loop; not followed"):
        read_series(tmp_path / "only")


def test_fifo_is_skipped_unopened(tmp_path):
    written = write_ct_series(tmp_path / "s", num_slices=3)
    os.mkfifo(tmp_path / "s" / "pipe.dcm")  # opening it for reading would block
    volume, report = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(volume.hu, written.hu)
    assert [(s.name, s.reason) for s in report.skipped] == [
        ("pipe.dcm", "FIFO (named pipe), not a regular file; not opened")
    ]
    (tmp_path / "s2").mkdir()
    os.mkfifo(tmp_path / "s2" / "pipe.dcm")
    with pytest.raises(NotDicomError, match=r"s2: no DICOM file; e\.g\. pipe\.dcm: FIFO \(named pipe\)"):
        read_series(tmp_path / "s2")


def test_zeros_without_a_dicom_prefix_are_not_parsed_element_by_element(tmp_path):
    written = write_ct_series(tmp_path / "s", num_slices=3)
    (tmp_path / "s" / "zeros.dcm").write_bytes(bytes(8 << 20))
    volume, report = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(volume.hu, written.hu)
    assert "no data element of group 0002/0008" in report.skipped[0].reason


# -------------------------------------------------------------------------------- NIfTI
def _nifti_bytes(tmp_path, shape=(40, 40, 4)):
    nib.save(nib.Nifti1Image(np.zeros(shape, np.int16), np.eye(4)), tmp_path / "base.nii")
    return bytearray((tmp_path / "base.nii").read_bytes())


def test_nifti_zero_voxel_size(tmp_path):
    data = _nifti_bytes(tmp_path)
    pixdim = np.frombuffer(bytes(data[76:108]), "<f4").copy()
    pixdim[1] = 0.0
    data[76:108] = pixdim.tobytes()  # pixdim[1:4]: the voxel size nibabel would silently set to 1
    (tmp_path / "pixdim.nii").write_bytes(bytes(data))
    with pytest.raises(ImplausibleSpacingError, match=r"pixdim\.nii: NIfTI voxel size pixdim\[1:4\] is "
                       r"\[0\.0, 1\.0, 1\.0\] mm; expected three finite positive mm values"):
        read_series(tmp_path / "pixdim.nii")
    data = _nifti_bytes(tmp_path)
    srow = np.frombuffer(bytes(data[280:328]), "<f4").copy()
    srow[0] = 0.0  # sform x column: zero voxel size along i
    data[280:328] = srow.tobytes()
    (tmp_path / "sform.nii").write_bytes(bytes(data))
    with pytest.raises(ImplausibleSpacingError, match=r"sform\.nii: NIfTI voxel size from the affine \(sform/qform\) "
                       r"is \[0\.0, 1\.0, 1\.0\] mm"):
        read_series(tmp_path / "sform.nii")


def test_nifti_huge_declared_shape(tmp_path):
    data = _nifti_bytes(tmp_path)
    data[40:56] = np.array([3, 30000, 30000, 30000, 1, 1, 1, 1], "<i2").tobytes()  # dim[0:8]
    (tmp_path / "huge.nii.gz").write_bytes(gzip.compress(bytes(data)))
    error, peak = _peak_bytes(lambda: read_series(tmp_path / "huge.nii.gz"))
    assert isinstance(error, ResourceLimitError)
    assert peak < PEAK_LIMIT_BYTES
    with pytest.raises(ResourceLimitError, match=r"NIfTI shape \(30000, 30000, 30000\): the volume of "
                       r"30000 x 30000 x 30000 int16 voxels would take 54000000000000 bytes"):
        read_series(tmp_path / "huge.nii.gz")


def test_nifti_slice_spacing_out_of_range(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((40, 40, 4), np.int16), np.diag([0.7, 0.7, 80.0, 1.0])), tmp_path / "t.nii")
    with pytest.raises(ImplausibleSpacingError, match=r"t\.nii: NIfTI slice spacing \(affine\) is 80\.0 mm; "
                       r"expected in \[0\.1, 60\] mm \(ReaderConfig\.slice_spacing_mm\)"):
        read_series(tmp_path / "t.nii")


# ------------------------------------------------------------------------------ spacing
def test_dicom_pixel_spacing_of_100_mm(tmp_path):
    write_ct_series(tmp_path, num_slices=3, pixel_spacing=(100.0, 100.0))
    with pytest.raises(ImplausibleSpacingError, match=r"IM000\d\.dcm: Pixel Spacing \(0028,0030\) is "
                       r"\[100\.0, 100\.0\] mm; expected each in \[0\.1, 12\] mm \(ReaderConfig\.pixel_spacing_mm\)"):
        read_series(tmp_path)


@pytest.mark.parametrize("value", ["0", "-0.7", "NaN"])
def test_dicom_pixel_spacing_zero_negative_nan(tmp_path, value):
    written = write_ct_series(tmp_path, num_slices=3)
    _edit(written.paths, lambda ds: setattr(ds, "PixelSpacing", [value, value]))
    with pytest.raises(ImplausibleSpacingError, match=r"Pixel Spacing \(0028,0030\) is \[.*\] mm; expected each in"):
        read_series(tmp_path)


def test_dicom_slice_spacing_from_positions(tmp_path):
    write_ct_series(tmp_path, num_slices=3, dz=80.0)
    with pytest.raises(ImplausibleSpacingError, match=r"the median distance between slice positions \(0020,0032\) "
                       r"is 80\.0 mm; expected in \[0\.1, 60\] mm"):
        read_series(tmp_path)
    thick = write_ct_series(tmp_path / "thick", num_slices=3, dz=10.0, slice_thickness=10.0)
    assert read_series(tmp_path / "thick").spacing_mm[0] == pytest.approx(10.0)
    assert thick.positions_mm[1] - thick.positions_mm[0] == 10.0
