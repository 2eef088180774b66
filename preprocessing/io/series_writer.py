"""Write a :class:`~covidct.preprocessing.volume.CTVolume` as the input formats the bundle reads.

- :func:`write_dicom_series`: one CT Image Storage file per slice (pydicom), uncompressed
  (Explicit VR Little Endian) or RLE Lossless. Study, series and frame-of-reference UIDs
  are shared, SOP Instance UIDs are per slice. File names do not follow anatomical
  order (``name_order="reversed"``: ``IM0001.dcm`` is the most superior slice, as in
  COVID-CT-MD; ``"random"``: a seeded permutation), so readers must sort by position.
  Geometry (``patient_position="HFS"``, the default): ImageOrientationPatient
  ``[1,0,0,0,1,0]``, ImagePositionPatient ``[-W*sx/2, -H*sy/2, positions_mm[i]]``,
  SliceLocation ``positions_mm[i]``, PixelSpacing ``[sy, sx]`` (row, column),
  SliceThickness ``sz``. Another Patient Position (0018,5100) (``"HFP"``, ``"FFS"``,
  ``"FFP"``, ``"HFDL"``, ``"HFDR"``, ``"FFDL"``, ``"FFDR"``) writes the same anatomy as
  that scanner stores it: the orientation of
  :data:`~covidct.preprocessing.orientation.PATIENT_POSITION_ORIENTATIONS`, the pixels flipped or
  transposed accordingly (``orientation.to_source``) and each slice's Image Position the
  patient coordinate of its first stored pixel, so a reader that follows the header
  gets ``hu`` back.
  Pixels: ``pixel_representation=1`` stores signed int16 HU (BitsStored 16, intercept 0);
  ``pixel_representation=0`` stores ``HU + 1024`` unsigned (BitsStored 12 when it fits,
  else 16; intercept -1024), like many scanners.
- :func:`write_dicom_zip`: the same files in a zip archive (entries under one folder).
- :func:`write_nifti`: int16 NIfTI-1; data axes ``(i, j, k) = (W, H, N)``, i.e.
  ``data[c, r, n] == hu[n, r, c]``. The affine maps to NIfTI's RAS world the same
  geometry as the DICOM writer (columns to the patient's left, rows to posterior,
  slices to superior): ``diag(-sx, -sy, sz, 1)`` with origin
  ``(W*sx/2, H*sy/2, positions_mm[0])``; units mm, qform/sform code 1 (scanner). A
  reader that reorients to LPS (``nibabel.orientations``) gets ``hu`` back unflipped.
- :func:`write_tiff_folder`: COVID-CTset layout, 16-bit unsigned TIFF per slice
  (``IM0001.tif`` = first slice in ascending order), stored value ``HU - intercept``.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

from covidct.errors import ConfigError, VolumeError
from covidct.preprocessing.orientation import source_orientation, transform_from_orientation
from covidct.preprocessing.volume import CTVolume

NAME_ORDERS = ("reversed", "random", "anatomical")
COMPRESSIONS = (None, "rle")
UNSIGNED_INTERCEPT = -1024


def _check_volume(volume: CTVolume) -> None:
    if not isinstance(volume, CTVolume):
        raise VolumeError(f"series writer: expected a CTVolume, got {type(volume).__name__}")


def _file_numbers(n: int, name_order: str, seed: int) -> np.ndarray:
    """File number (1-based) of each slice in ascending anatomical order."""
    if name_order == "reversed":
        return np.arange(n, 0, -1)
    if name_order == "random":
        return np.random.default_rng(seed).permutation(n) + 1
    if name_order == "anatomical":
        return np.arange(1, n + 1)
    raise ConfigError(f"series writer: name_order={name_order!r}; expected one of {NAME_ORDERS}")


def _pixels(hu: np.ndarray, pixel_representation: int) -> tuple[np.ndarray, int, float]:
    """(stored array, BitsStored, RescaleIntercept) for the chosen representation."""
    if pixel_representation == 1:
        return hu.astype("<i2"), 16, 0.0
    if pixel_representation == 0:
        low = int(hu.min())
        if low < UNSIGNED_INTERCEPT:
            raise VolumeError(
                f"series writer: HU minimum {low} is below {UNSIGNED_INTERCEPT}; unsigned storage "
                f"(PixelRepresentation 0, intercept {UNSIGNED_INTERCEPT}) cannot hold it"
            )
        stored = (hu.astype(np.int32) - UNSIGNED_INTERCEPT).astype("<u2")
        bits = 12 if int(stored.max()) < 4096 else 16
        return stored, bits, float(UNSIGNED_INTERCEPT)
    raise ConfigError(f"series writer: pixel_representation={pixel_representation!r}; expected 0 or 1")


def iter_dicom_datasets(
    volume: CTVolume,
    *,
    compression: str | None = None,
    patient_name: str = "ANON^PHANTOM",
    patient_id: str = "PHANTOM0",
    series_description: str = "covidct synthetic chest CT",
    series_number: int = 1,
    pixel_representation: int = 1,
    name_order: str = "reversed",
    seed: int = 0,
    study_date: str = "20200401",
    patient_position: str = "HFS",
) -> Iterator[tuple[str, Dataset]]:
    """Yield ``(file name, dataset)`` per slice, in ascending position order."""
    _check_volume(volume)
    if compression not in COMPRESSIONS:
        raise ConfigError(f"series writer: compression={compression!r}; expected one of {COMPRESSIONS}")
    orientation = source_orientation(patient_position)
    transform = transform_from_orientation(orientation)
    hu = volume.hu
    n, rows, cols = hu.shape
    stored, bits, intercept = _pixels(np.ascontiguousarray(transform.to_source(hu)), pixel_representation)
    # patient-frame (row, column) of the first stored pixel of every slice
    grid = np.stack(np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij"), axis=-1)[None]
    first_row, first_col = (int(v) for v in transform.to_source(grid)[0, 0, 0])
    numbers = _file_numbers(n, name_order, seed)
    width = max(4, len(str(n)))
    sz, sy, sx = (float(v) for v in volume.spacing_mm)
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    for i in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study_date
        ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = "120000"
        ds.AccessionNumber = ""
        ds.Modality = "CT"
        ds.Manufacturer = "covidct-phantom"
        ds.ManufacturerModelName = "covidct-phantom"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "CHEST"
        ds.SeriesDescription = series_description
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.BodyPartExamined = "CHEST"
        ds.SliceThickness = f"{sz:g}"
        ds.KVP = "120"
        ds.ConvolutionKernel = "B40f"
        ds.PatientPosition = patient_position
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = int(series_number)
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = int(numbers[i])
        ds.ImagePositionPatient = [f"{(first_col - cols / 2) * sx:.4f}", f"{(first_row - rows / 2) * sy:.4f}",
                                   f"{float(volume.positions_mm[i]):.4f}"]
        ds.ImageOrientationPatient = [f"{v:g}" for v in orientation]
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = f"{float(volume.positions_mm[i]):.4f}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = stored.shape[1:]
        ds.PixelSpacing = [f"{sx:g}", f"{sy:g}"] if transform.transpose else [f"{sy:g}", f"{sx:g}"]
        ds.BitsAllocated = 16
        ds.BitsStored = bits
        ds.HighBit = bits - 1
        ds.PixelRepresentation = pixel_representation
        ds.WindowCenter = "-600"
        ds.WindowWidth = "1500"
        ds.RescaleIntercept = f"{intercept:g}"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.PixelData = stored[i].tobytes()
        if compression == "rle":
            ds.compress(RLELossless)
        yield f"IM{int(numbers[i]):0{width}d}.dcm", ds


def write_dicom_series(
    volume: CTVolume,
    out_dir: str | Path,
    *,
    compression: str | None = None,
    patient_name: str = "ANON^PHANTOM",
    patient_id: str = "PHANTOM0",
    series_description: str = "covidct synthetic chest CT",
    series_number: int = 1,
    pixel_representation: int = 1,
    name_order: str = "reversed",
    seed: int = 0,
    study_date: str = "20200401",
    patient_position: str = "HFS",
) -> list[Path]:
    """Write one DICOM file per slice into ``out_dir`` (created).

    Returns the paths in ascending position order (slice ``i`` of the volume is
    ``paths[i]``). Options: see the module docstring; ``seed`` drives ``"random"`` names.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, ds in iter_dicom_datasets(
        volume, compression=compression, patient_name=patient_name, patient_id=patient_id,
        series_description=series_description, series_number=series_number,
        pixel_representation=pixel_representation, name_order=name_order, seed=seed,
        study_date=study_date, patient_position=patient_position,
    ):
        path = out / name
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_dicom_zip(
    volume: CTVolume,
    zip_path: str | Path,
    *,
    folder: str | None = None,
    compression: str | None = None,
    patient_name: str = "ANON^PHANTOM",
    patient_id: str = "PHANTOM0",
    series_description: str = "covidct synthetic chest CT",
    series_number: int = 1,
    pixel_representation: int = 1,
    name_order: str = "reversed",
    seed: int = 0,
    study_date: str = "20200401",
) -> Path:
    """Write the DICOM series into a zip archive (deflated) and return its path.

    Entries are ``<folder>/IMxxxx.dcm``; ``folder`` defaults to the archive's stem
    (``""`` puts them at the root). Other options as :func:`write_dicom_series`.
    """
    path = Path(zip_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = path.stem if folder is None else folder
    datasets = iter_dicom_datasets(
        volume, compression=compression, patient_name=patient_name, patient_id=patient_id,
        series_description=series_description, series_number=series_number,
        pixel_representation=pixel_representation, name_order=name_order, seed=seed,
        study_date=study_date,
    )
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, ds in datasets:
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            archive.writestr(f"{root}/{name}" if root else name, buffer.getvalue())
    return path


def write_nifti(volume: CTVolume, path: str | Path) -> Path:
    """Write int16 NIfTI-1 (``.nii`` or ``.nii.gz``); axes (x, y, z) = (W, H, N)."""
    import nibabel as nib

    _check_volume(volume)
    sz, sy, sx = (float(v) for v in volume.spacing_mm)
    n, rows, cols = volume.hu.shape
    # Columns run to the patient's left, rows to posterior (DICOM LPS, as the series
    # writer's geometry); NIfTI's world is RAS, so x and y change sign.
    affine = np.diag([-sx, -sy, sz, 1.0])
    affine[:3, 3] = [cols * sx / 2, rows * sy / 2, float(volume.positions_mm[0])]
    data = np.ascontiguousarray(volume.hu.transpose(2, 1, 0))
    image = nib.Nifti1Image(data, affine)
    image.header.set_data_dtype(np.int16)
    image.header.set_xyzt_units("mm", "sec")
    image.header.set_slope_inter(1.0, 0.0)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, out)
    return out


def write_tiff_folder(volume: CTVolume, out_dir: str | Path, intercept: int = -1024) -> list[Path]:
    """Write 16-bit unsigned TIFFs ``IM0001.tif``... (ascending order), stored = HU - intercept."""
    import tifffile

    _check_volume(volume)
    hu = volume.hu
    stored = hu.astype(np.int32) - int(intercept)
    if stored.min() < 0 or stored.max() > 65535:
        raise VolumeError(
            f"write_tiff_folder: HU range [{int(hu.min())}, {int(hu.max())}] minus intercept "
            f"{intercept} does not fit uint16 [0, 65535]"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(hu.shape[0])))
    paths = []
    for i in range(hu.shape[0]):
        path = out / f"IM{i + 1:0{width}d}.tif"
        tifffile.imwrite(path, stored[i].astype(np.uint16))
        paths.append(path)
    return paths

