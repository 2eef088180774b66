"""NIfTI volumes, COVID-CTset 16-bit TIFF folders and numpy arrays into CTVolume."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import tifffile

from covidct.errors import (
    EmptySeriesError,
    GeometryMismatchError,
    ImplausibleSpacingError,
    PixelDecodeError,
    TooFewSlicesError,
    TooManySlicesError,
    UnsupportedFormatError,
    VolumeError,
)
from covidct.preprocessing.reader_config import ReaderConfig
from covidct.preprocessing.io.series_reader import read_series
from covidct.preprocessing.io.tiff_series import natural_key, read_tiff_folder

SPACING_XYZ = (0.6, 0.7, 2.0)


def _expected_hu(seed=0):
    """HU [N=5, H=36, W=32] in DICOM layout; even offsets so slope 2 stores them exactly."""
    rng = np.random.default_rng(seed)
    return (-1000 + 2 * rng.integers(0, 1200, size=(5, 36, 32))).astype(np.int16)


def _nifti_data_and_affine(hu, layout):
    sx, sy, sz = SPACING_XYZ
    lps = hu.transpose(2, 1, 0)  # (i: to Left, j: to Posterior, k: to Superior)
    if layout == "lps":
        return lps, np.diag([-sx, -sy, sz, 1.0])
    if layout == "ras":
        return lps[::-1, ::-1, :], np.diag([sx, sy, sz, 1.0])
    # superior-to-inferior slices, axes stored as (y, x, z) permuted
    data = lps[:, :, ::-1].transpose(1, 0, 2)
    affine = np.array([[0, -sx, 0, 0], [-sy, 0, 0, 0], [0, 0, -sz, 0], [0, 0, 0, 1.0]])
    return data, affine


def _save_scaled_nifti(raw, affine, slope, inter, path):
    """Save int16 ``raw`` with scl_slope/scl_inter set in the header (nibabel's writer
    would otherwise recompute them): header bytes 112 and 116 of NIfTI-1."""
    plain = path.with_name("plain.nii")
    nib.save(nib.Nifti1Image(raw, affine), plain)
    data = bytearray(plain.read_bytes())
    data[112:120] = np.array([slope, inter], dtype="<f4").tobytes()
    if path.suffix == ".gz":
        data = gzip.compress(bytes(data))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("layout", ["lps", "ras", "permuted_flipped"])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_reoriented_to_axial_with_scaling_and_spacing(tmp_path, layout, suffix):
    hu = _expected_hu()
    data, affine = _nifti_data_and_affine(hu, layout)
    raw = ((data.astype(np.int32) + 1000) // 2).astype(np.int16)
    path = tmp_path / f"vol{suffix}"
    _save_scaled_nifti(raw, affine, 2.0, -1000.0, path)
    proxy = nib.load(path).dataobj
    assert (proxy.slope, proxy.inter) == (2.0, -1000.0)
    volume = read_series(path)
    np.testing.assert_array_equal(volume.hu, hu)
    assert volume.spacing_mm == pytest.approx((2.0, 0.7, 0.6))
    np.testing.assert_allclose(np.diff(volume.positions_mm), 2.0)
    assert volume.source_format == "nifti" and volume.source_names == ()


def test_nifti_errors(tmp_path):
    four_d = nib.Nifti1Image(np.zeros((4, 4, 3, 2), np.int16), np.eye(4))
    nib.save(four_d, tmp_path / "t.nii")
    expected = r"t\.nii: NIfTI shape \(4, 4, 3, 2\); expected a 3-D volume"
    with pytest.raises(VolumeError, match=expected):
        read_series(tmp_path / "t.nii")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 1), np.int16), np.eye(4)), tmp_path / "one.nii")
    with pytest.raises(TooFewSlicesError, match=r"one\.nii: the series has 1 slice"):
        read_series(tmp_path / "one.nii")
    (tmp_path / "bad.nii").write_bytes(b"not a nifti header")
    with pytest.raises(UnsupportedFormatError, match=r"bad\.nii: not a readable NIfTI image"):
        read_series(tmp_path / "bad.nii")
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 8), np.int16), np.eye(4)), tmp_path / "cut.nii")
    data = (tmp_path / "cut.nii").read_bytes()
    (tmp_path / "cut.nii").write_bytes(data[:-5000])
    with pytest.raises(PixelDecodeError, match=r"cut\.nii: cannot read the NIfTI voxel data"):
        read_series(tmp_path / "cut.nii")


def _write_tiffs(folder, count, shape=(32, 32), dtype=np.uint16):
    folder.mkdir()
    values = (np.arange(count)[:, None, None] * 100 + np.zeros(shape)).astype(dtype)
    for i in range(count):
        tifffile.imwrite(folder / f"IM{i + 1}.tif", values[i])
    return values


def test_tiff_folder_natural_order_intercept_and_default_spacing(tmp_path):
    values = _write_tiffs(tmp_path / "patient1", 12)
    volume = read_series(tmp_path / "patient1")
    assert volume.source_names[:3] == ("IM1.tif", "IM2.tif", "IM3.tif")
    assert volume.source_names[9] == "IM10.tif"
    np.testing.assert_array_equal(volume.hu, values.astype(np.int32) - 1024)
    assert volume.spacing_mm == (1.0, 1.0, 1.0)
    assert volume.source_format == "tiff"
    other = read_tiff_folder(tmp_path / "patient1", intercept=-1000, spacing_mm=(5.0, 0.8, 0.8))
    assert int(other.hu[1, 0, 0]) == 100 - 1000
    assert other.spacing_mm == (5.0, 0.8, 0.8)
    np.testing.assert_allclose(other.positions_mm, np.arange(12) * 5.0)
    assert sorted(["IM10.tif", "IM9.tif"], key=natural_key) == ["IM9.tif", "IM10.tif"]


def test_tiff_folder_errors(tmp_path):
    _write_tiffs(tmp_path / "u8", 3, dtype=np.uint8)
    expected = r"IM1\.tif: TIFF holds uint8 \(32, 32\); expected one 16-bit unsigned"
    with pytest.raises(VolumeError, match=expected):
        read_series(tmp_path / "u8")
    _write_tiffs(tmp_path / "mixed", 3)
    tifffile.imwrite(tmp_path / "mixed" / "IM4.tif", np.zeros((40, 32), np.uint16))
    expected = r"IM4\.tif: slice shape \(40, 32\); expected \(32, 32\)"
    with pytest.raises(GeometryMismatchError, match=expected):
        read_series(tmp_path / "mixed")
    _write_tiffs(tmp_path / "many", 4)
    expected = r"many: the series has 4 slices; expected at most 3"
    with pytest.raises(TooManySlicesError, match=expected):
        read_series(tmp_path / "many", config=ReaderConfig(max_slices=3))
    (tmp_path / "none").mkdir()
    expected = r"none: holds no \.tif/\.tiff slice; expected IM\*\.tif files"
    with pytest.raises(EmptySeriesError, match=expected):
        read_tiff_folder(tmp_path / "none")


def test_array_source():
    hu = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4) - 1000
    volume = read_series(hu, spacing_mm=(2.0, 0.5, 0.5))
    np.testing.assert_array_equal(volume.hu, hu)
    np.testing.assert_allclose(volume.positions_mm, [0.0, 2.0])
    assert volume.source_format == "array"
    floats = read_series(np.full((2, 2, 2), -999.6), spacing_mm=(1, 1, 1))
    assert floats.hu.dtype == np.int16 and int(floats.hu[0, 0, 0]) == -1000
    clipped = read_series(np.full((2, 2, 2), 40000, np.uint16), spacing_mm=(1, 1, 1))
    assert int(clipped.hu.max()) == 32767


@pytest.mark.parametrize(
    ("array", "spacing", "error", "match"),
    [
        (np.zeros((2, 3, 4), np.int16), None, VolumeError, r"needs spacing_mm=\(z, y, x\)"),
        (np.zeros((3, 4), np.int16), (1, 1, 1), VolumeError,
         r"int16 with shape \(3, 4\); expected an integer or float HU array \[N, H, W\]"),
        (np.zeros((2, 3, 4), bool), (1, 1, 1), VolumeError, r"bool with shape"),
        (np.full((2, 2, 2), np.nan), (1, 1, 1), VolumeError, r"NaN or infinite"),
        (np.zeros((2, 2, 2), np.int16), (1, -1, 1), ImplausibleSpacingError,
         r"array source: spacing_mm \(1, -1, 1\), its \(y, x\) is \[-1\.0, 1\.0\] mm; expected each in \[0\.1, 12\]"),
        (np.zeros((2, 2, 2), np.int16), (float("nan"), 1, 1), ImplausibleSpacingError,
         r"its z is nan mm; expected in \[0\.1, 60\] mm \(ReaderConfig\.slice_spacing_mm\)"),
        (np.zeros((2, 2, 2), np.int16), (1, 1), ImplausibleSpacingError, r"expected three finite positive mm"),
        (np.zeros((1, 2, 2), np.int16), (1, 1, 1), TooFewSlicesError,
         r"array source: the series has 1 slice"),
    ],
)
def test_array_source_errors(array, spacing, error, match):
    with pytest.raises(error, match=match):
        read_series(array, spacing_mm=spacing)
