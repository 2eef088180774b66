"""Phantom -> every input format (real files) -> series_reader.read_series -> same volume."""

from __future__ import annotations

import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import tifffile
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless

from covidct.errors import ConfigError, VolumeError
from covidct.preprocessing.synthetic.phantom import make_phantom
from covidct.preprocessing.io.series_reader import read_series
from covidct.preprocessing.io.series_writer import (
    write_dicom_series,
    write_dicom_zip,
    write_nifti,
    write_tiff_folder,
)
from covidct.preprocessing.volume import CTVolume

SPACING = (2.5, 0.75, 0.75)


@pytest.fixture(scope="module")
def volume() -> CTVolume:
    return make_phantom(num_slices=24, size=96, covid=True, seed=5, spacing_mm=SPACING).volume


def _write(kind: str, volume: CTVolume, tmp: Path) -> tuple[Path, dict]:
    if kind == "dicom":
        return write_dicom_series(volume, tmp / "dcm")[0].parent, {}
    if kind == "dicom-rle-random-names":
        return write_dicom_series(volume, tmp / "rle", compression="rle", name_order="random", seed=3)[0].parent, {}
    if kind == "dicom-unsigned-12bit":
        return write_dicom_series(volume, tmp / "u12", pixel_representation=0)[0].parent, {}
    if kind == "dicom-zip":
        return write_dicom_zip(volume, tmp / "series.zip"), {}
    if kind == "nifti":
        return write_nifti(volume, tmp / "series.nii.gz"), {}
    if kind == "tiff":
        return write_tiff_folder(volume, tmp / "tif")[0].parent, {"spacing_mm": volume.spacing_mm}
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["dicom", "dicom-rle-random-names", "dicom-unsigned-12bit", "dicom-zip", "nifti", "tiff"]
)
def test_round_trip_gives_the_same_hu_and_spacing(kind: str, volume: CTVolume, tmp_path: Path) -> None:
    source, extra = _write(kind, volume, tmp_path)
    back = read_series(source, **extra)
    assert back.hu.dtype == np.int16
    assert np.array_equal(back.hu, volume.hu)
    np.testing.assert_allclose(back.spacing_mm, SPACING, rtol=1e-5)
    np.testing.assert_allclose(np.diff(back.positions_mm), SPACING[0], rtol=1e-5)


def test_dicom_files_carry_scanner_tags_and_valid_uids(volume: CTVolume, tmp_path: Path) -> None:
    paths = write_dicom_series(volume, tmp_path, patient_name="DOE^JANE", patient_id="PID-4711",
                               series_description="chest", series_number=7)
    assert len(paths) == volume.num_slices
    datasets = [pydicom.dcmread(p) for p in paths]
    first = datasets[0]
    assert first.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert first.file_meta.MediaStorageSOPClassUID == CTImageStorage
    assert first.SOPClassUID == CTImageStorage and first.Modality == "CT"
    assert list(first.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert [float(v) for v in first.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert [float(v) for v in first.PixelSpacing] == [SPACING[1], SPACING[2]]
    assert float(first.SliceThickness) == SPACING[0]
    assert (first.Rows, first.Columns) == volume.hu.shape[1:]
    assert (first.BitsAllocated, first.BitsStored, first.HighBit, first.PixelRepresentation) == (16, 16, 15, 1)
    assert first.RescaleType == "HU" and first.Manufacturer == "covidct-phantom"
    assert first.SeriesNumber == 7 and first.SeriesDescription == "chest"
    for ds in datasets:
        assert str(ds.PatientName) == "DOE^JANE" and ds.PatientID == "PID-4711"
        for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID, ds.SOPInstanceUID):
            assert uid.is_valid
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert len({ds.StudyInstanceUID for ds in datasets}) == 1
    assert len({ds.FrameOfReferenceUID for ds in datasets}) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == volume.num_slices
    # Returned paths are in ascending position; i-th file holds slice i.
    z = [float(ds.ImagePositionPatient[2]) for ds in datasets]
    np.testing.assert_allclose(z, volume.positions_mm)
    np.testing.assert_allclose([float(ds.SliceLocation) for ds in datasets], volume.positions_mm)
    assert np.array_equal(datasets[3].pixel_array, volume.hu[3])


def test_file_names_do_not_follow_anatomy(volume: CTVolume, tmp_path: Path) -> None:
    for order in ("reversed", "random"):
        folder = tmp_path / order
        write_dicom_series(volume, folder, name_order=order, seed=1)
        by_name = sorted(folder.iterdir())
        z = np.array([float(pydicom.dcmread(p, stop_before_pixels=True).SliceLocation) for p in by_name])
        assert not np.all(np.diff(z) > 0), order


def test_rle_and_unsigned_storage(volume: CTVolume, tmp_path: Path) -> None:
    rle = pydicom.dcmread(write_dicom_series(volume, tmp_path / "rle", compression="rle")[0])
    assert rle.file_meta.TransferSyntaxUID == RLELossless
    assert np.array_equal(rle.pixel_array, volume.hu[0])
    u12 = pydicom.dcmread(write_dicom_series(volume, tmp_path / "u12", pixel_representation=0)[0])
    assert (u12.PixelRepresentation, u12.BitsStored, float(u12.RescaleIntercept)) == (0, 12, -1024.0)
    assert np.array_equal(u12.pixel_array.astype(np.int32) - 1024, volume.hu[0])


def test_zip_holds_one_folder_of_dicom(volume: CTVolume, tmp_path: Path) -> None:
    path = write_dicom_zip(volume, tmp_path / "patient.zip", patient_id="ZIP-1")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        ds = pydicom.dcmread(archive.open(names[0]))
    assert len(names) == volume.num_slices and all(n.startswith("patient/IM") for n in names)
    assert ds.PatientID == "ZIP-1"


def test_nifti_axes_and_affine(volume: CTVolume, tmp_path: Path) -> None:
    image = nib.load(write_nifti(volume, tmp_path / "v.nii"))
    assert image.get_data_dtype() == np.int16
    data = np.asarray(image.dataobj)
    assert data.shape == (96, 96, 24)
    assert np.array_equal(data, volume.hu.transpose(2, 1, 0))
    np.testing.assert_allclose(np.abs(np.diag(image.affine))[:3], (SPACING[2], SPACING[1], SPACING[0]))
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")


def test_tiff_stores_hu_minus_intercept(volume: CTVolume, tmp_path: Path) -> None:
    paths = write_tiff_folder(volume, tmp_path)
    assert [p.name for p in paths[:2]] == ["IM0001.tif", "IM0002.tif"]
    stored = tifffile.imread(paths[5])
    assert stored.dtype == np.uint16
    assert np.array_equal(stored.astype(np.int32) - 1024, volume.hu[5])


def test_writer_errors_name_the_problem(volume: CTVolume, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="compression='jpeg'"):
        write_dicom_series(volume, tmp_path / "a", compression="jpeg")
    with pytest.raises(ConfigError, match="name_order='sorted'"):
        write_dicom_series(volume, tmp_path / "b", name_order="sorted")
    low = CTVolume(hu=np.full((2, 8, 8), -2000, dtype=np.int16), spacing_mm=(1.0, 1.0, 1.0),
                   positions_mm=np.arange(2.0), series_key="k", source_format="array")
    with pytest.raises(VolumeError, match="HU minimum -2000 is below -1024"):
        write_dicom_series(low, tmp_path / "c", pixel_representation=0)
    with pytest.raises(VolumeError, match=r"HU range \[-2000, -2000\]"):
        write_tiff_folder(low, tmp_path / "d")
    with pytest.raises(VolumeError, match="expected a CTVolume"):
        write_nifti(volume.hu, tmp_path / "e.nii")  # type: ignore[arg-type]
