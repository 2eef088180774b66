"""Each kind of bad series input raises its own error naming the file, tag and expectation."""

from __future__ import annotations

import zipfile

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless

from covidct.errors import (
    ConfigError,
    DuplicatePositionError,
    EmptySeriesError,
    GeometryMismatchError,
    ImplausibleSpacingError,
    MissingPixelDataError,
    ModalityError,
    NotDicomError,
    PixelDecodeError,
    RescaleMissingError,
    TooFewSlicesError,
    TooManySlicesError,
    UnsafeArchivePathError,
    UnsupportedFormatError,
)
from covidct.preprocessing.reader_config import ReaderConfig
from covidct.preprocessing.io.series_reader import read_series
from tests.unit.dicom_factory import write_ct_series


def _edit(path, change):
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


def test_empty_folder(tmp_path):
    with pytest.raises(EmptySeriesError, match=r"holds no file; expected the DICOM files"):
        read_series(tmp_path)


def test_empty_zip(tmp_path):
    zipfile.ZipFile(tmp_path / "e.zip", "w").close()
    with pytest.raises(EmptySeriesError, match=r"e\.zip: holds no file"):
        read_series(tmp_path / "e.zip")


def test_zero_byte_file_given_alone(tmp_path):
    (tmp_path / "x.dcm").write_bytes(b"")
    expected = r"x\.dcm: empty file \(0 bytes\); expected a DICOM file"
    with pytest.raises(NotDicomError, match=expected):
        read_series(tmp_path / "x.dcm")


def test_folder_of_non_dicom_files_only(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"\x00" * 300 + b"garbage")
    (tmp_path / "b").write_bytes(b"")
    expected = r"no DICOM file; e\.g\. a\.bin: not DICOM.*\(0008,0016\)"
    with pytest.raises(NotDicomError, match=expected):
        read_series(tmp_path)


def test_missing_pixel_data(tmp_path):
    written = write_ct_series(tmp_path, num_slices=3)
    _edit(written.paths[1], lambda ds: delattr(ds, "PixelData"))
    expected = r"IM0002\.dcm: no Pixel Data \(7FE0,0010\); expected a CT image"
    with pytest.raises(MissingPixelDataError, match=expected):
        read_series(tmp_path)


def test_only_non_ct_modality(tmp_path):
    write_ct_series(tmp_path, num_slices=3, modality="MR")
    expected = r"no CT image left; .*Modality \(0008,0060\) is 'MR'; expected 'CT'"
    with pytest.raises(ModalityError, match=expected):
        read_series(tmp_path)


def test_mixed_rows_and_columns(tmp_path):
    written = write_ct_series(tmp_path, num_slices=3)

    def shrink(ds):
        ds.Rows, ds.Columns = 32, 32
        ds.PixelData = np.zeros((32, 32), dtype="<i2").tobytes()

    _edit(written.paths[1], shrink)
    expected = r"IM0002\.dcm: Rows \(0028,0010\) x Columns \(0028,0011\) is 32x32; expected 64x64"
    with pytest.raises(GeometryMismatchError, match=expected):
        read_series(tmp_path)


def test_duplicate_positions(tmp_path):
    written = write_ct_series(tmp_path, num_slices=4)
    _edit(written.paths[2], lambda ds: setattr(ds, "ImagePositionPatient", [-22.4, -22.4, -97.5]))
    expected = r"both at -97\.5 mm \(\(0020,0032\)\); expected one slice per position"
    with pytest.raises(DuplicatePositionError, match=expected):
        read_series(tmp_path)


def test_missing_slice_keeps_the_true_positions(tmp_path):
    """A dropped file is not an error of the reader: the volume keeps the true positions
    (the gap shows there), and the spacing is the median distance, not the mean."""
    written = write_ct_series(tmp_path, num_slices=6)
    full = read_series(tmp_path)
    written.paths[3].unlink()
    volume = read_series(tmp_path)
    assert volume.num_slices == 5
    assert volume.spacing_mm == full.spacing_mm
    kept = [i for i in range(6) if i != 3]
    assert np.allclose(volume.positions_mm, full.positions_mm[kept])
    assert np.diff(volume.positions_mm).max() == pytest.approx(2 * full.spacing_mm[0])


@pytest.mark.parametrize(
    ("keyword", "tag"), [("RescaleIntercept", "(0028,1052)"), ("RescaleSlope", "(0028,1053)")]
)
def test_rescale_missing(tmp_path, keyword, tag):
    written = write_ct_series(tmp_path, num_slices=3)
    _edit(written.paths[0], lambda ds: delattr(ds, keyword))
    expected = rf"IM0003\.dcm: .*{tag[1:-1]}\) missing or not numeric"
    with pytest.raises(RescaleMissingError, match=expected):
        read_series(tmp_path)


def test_one_slice_only(tmp_path):
    written = write_ct_series(tmp_path, num_slices=1)
    with pytest.raises(TooFewSlicesError, match=r"has 1 slice\(s\); expected at least 2"):
        read_series(tmp_path)
    with pytest.raises(TooFewSlicesError, match=r"IM0001\.dcm"):
        read_series(written.paths[0])


def test_too_many_slices_checked_before_decoding(tmp_path):
    written = write_ct_series(tmp_path, num_slices=4)
    data = written.paths[0].read_bytes()
    written.paths[0].write_bytes(data[: len(data) - 1000])  # would fail decoding
    with pytest.raises(TooManySlicesError, match=r"has 4 slices; expected at most 3"):
        read_series(tmp_path, config=ReaderConfig(max_slices=3))


def test_truncated_pixel_data(tmp_path):
    written = write_ct_series(tmp_path, num_slices=3)
    data = written.paths[2].read_bytes()  # paths are in position order, names reversed
    written.paths[2].write_bytes(data[: len(data) - 1000])
    expected = (r"IM0001\.dcm: cannot decode Pixel Data \(7FE0,0010\) \(ValueError: The number of bytes of pixel "
                r"data is less than expected")
    with pytest.raises(PixelDecodeError, match=expected):
        read_series(tmp_path)


def test_corrupt_compressed_pixel_data_in_parallel_decode(tmp_path):
    written = write_ct_series(tmp_path, num_slices=48, rows=32, cols=32, transfer_syntax=RLELossless)
    data = bytearray(written.paths[40].read_bytes())
    data[-300:-200] = b"\xff" * 100  # garble the RLE segments
    written.paths[40].write_bytes(bytes(data))
    expected = r"IM0008\.dcm: cannot decode Pixel Data \(7FE0,0010\)"
    with pytest.raises(PixelDecodeError, match=expected):
        read_series(tmp_path, config=ReaderConfig(decode_workers=2))


@pytest.mark.parametrize("entry", ["../evil.dcm", "/abs/evil.dcm", "a/../../evil.dcm", "C:/evil.dcm"])
def test_zip_entry_outside_root(tmp_path, entry):
    written = write_ct_series(tmp_path / "s", num_slices=2)
    with zipfile.ZipFile(tmp_path / "s.zip", "w") as zf:
        zf.write(written.paths[0], "ok/IM1.dcm")
        zf.writestr(zipfile.ZipInfo(entry), written.paths[1].read_bytes())
    expected = r"s\.zip: zip entry .*evil\.dcm' points outside"
    with pytest.raises(UnsafeArchivePathError, match=expected):
        read_series(tmp_path / "s.zip")
    assert not (tmp_path / "evil.dcm").exists()


@pytest.mark.parametrize("name", ["missing", "image.png", "scan.tif"])
def test_unsupported_paths(tmp_path, name):
    if name != "missing":
        (tmp_path / name).write_bytes(b"x")
    expected = rf"{name}: (not a supported series|cannot be read)"
    with pytest.raises(UnsupportedFormatError, match=expected):
        read_series(tmp_path / name)


def test_unsupported_source_type():
    expected = r"got a list; expected a path or an np\.ndarray"
    with pytest.raises(UnsupportedFormatError, match=expected):
        read_series([1, 2, 3])  # type: ignore[arg-type]


def test_localizers_only(tmp_path):
    write_ct_series(tmp_path, num_slices=2, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    with pytest.raises(EmptySeriesError, match=r"no axial CT image among 2 files .*localizer"):
        read_series(tmp_path)


def test_bad_reader_config_and_spacing_override(tmp_path):
    write_ct_series(tmp_path, num_slices=2)
    with pytest.raises(ConfigError, match=r"series_rule is 'biggest'; expected one of"):
        read_series(tmp_path, config=ReaderConfig(series_rule="biggest"))
    with pytest.raises(ConfigError, match=r"decode_workers is -1"):
        read_series(tmp_path, config=ReaderConfig(decode_workers=-1))
    with pytest.raises(ConfigError, match=r"spacing_mm is read from DICOM/NIfTI files"):
        read_series(tmp_path, spacing_mm=(1.0, 1.0, 1.0))
    assert np.isfinite(read_series(tmp_path).spacing_mm).all()


def test_orientation_and_pixel_spacing_must_agree(tmp_path):
    written = write_ct_series(tmp_path, num_slices=3)
    _edit(written.paths[1], lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0.98, 0.2]))
    expected = (r"IM0002\.dcm: Image Orientation \(0020,0037\) \[1\.0, 0\.0, 0\.0, 0\.0, 0\.98, 0\.2\]; "
                r"expected \[1\.0, 0\.0")
    with pytest.raises(GeometryMismatchError, match=expected):
        read_series(tmp_path)
    _edit(written.paths[1], lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 1, 0]))
    _edit(written.paths[2], lambda ds: delattr(ds, "PixelSpacing"))
    expected = r"IM0001\.dcm: Pixel Spacing \(0028,0030\) is missing; expected each in \[0\.1, 12\] mm"
    with pytest.raises(ImplausibleSpacingError, match=expected):
        read_series(tmp_path)


def test_no_slice_position(tmp_path):
    written = write_ct_series(tmp_path, num_slices=3)

    def strip(ds):
        del ds.ImagePositionPatient, ds.SliceLocation

    _edit(written.paths[0], strip)
    expected = r"IM0003\.dcm: no slice position: Image Position \(0020,0032\)"
    with pytest.raises(GeometryMismatchError, match=expected):
        read_series(tmp_path)
