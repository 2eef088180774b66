"""Write small CT DICOM series with pydicom for the reader tests: the headers a scanner
writes, and the broken variants the error tests need.

Each file carries the tags a CT scanner writes (CT Image Storage, UIDs, patient
position/orientation, pixel spacing, slice thickness, rescale, 16-bit signed pixels).
File names are deliberately NOT in position order (``name_order="reversed"`` by
default), so a reader that sorts by name fails the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID-000123"
STUDY_DATE = "20200321"
#: Every series written without ``study_uid`` belongs to this one study (one patient).
STUDY_UID = "1.2.826.0.1.3680043.8.498.10000000000000000000000000000000001"


@dataclass(frozen=True)
class WrittenSeries:
    """What was written: files in position order, expected HU ``[N, H, W]`` and positions."""

    paths: tuple[Path, ...]
    hu: np.ndarray
    positions_mm: np.ndarray
    series_uid: str
    study_uid: str


def random_hu(num_slices: int, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Deterministic HU int16 ``[N, H, W]`` spanning air to bone (-1024..1500)."""
    rng = np.random.default_rng(seed)
    return rng.integers(-1024, 1500, size=(num_slices, rows, cols)).astype(np.int16)


def ct_dataset(
    stored: np.ndarray,
    *,
    position: tuple[float, float, float],
    series_uid: str,
    study_uid: str,
    instance: int,
    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    pixel_spacing: tuple[float, float] = (0.7, 0.7),
    slice_thickness: float = 2.5,
    slope: float = 1.0,
    intercept: float = -1024.0,
    modality: str = "CT",
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"),
) -> Dataset:
    """One CT Image Storage dataset holding ``stored`` (int16 ``[H, W]``) uncompressed."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = list(image_type)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyDate = STUDY_DATE
    ds.Modality = modality
    ds.Manufacturer = "covidct-tests"
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19700101"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[study_uid])  # one per study
    ds.SeriesNumber = 2
    ds.InstanceNumber = instance
    ds.PatientPosition = "HFS"
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.SliceLocation = float(position[2])
    ds.SliceThickness = slice_thickness
    ds.PixelSpacing = [float(v) for v in pixel_spacing]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(s) for s in stored.shape)
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = intercept
    ds.RescaleSlope = slope
    ds.RescaleType = "HU"
    ds.PixelData = np.ascontiguousarray(stored, dtype="<i2").tobytes()
    return ds


def write_ct_series(
    folder: Path,
    *,
    num_slices: int = 6,
    rows: int = 64,
    cols: int = 64,
    z0: float = -100.0,
    dz: float = 2.5,
    slope: float = 1.0,
    intercept: float = -1024.0,
    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    seed: int = 0,
    series_uid: str | None = None,
    study_uid: str | None = None,
    name_order: str = "reversed",
    prefix: str = "IM",
    transfer_syntax: str | None = None,
    **dataset_kwargs,
) -> WrittenSeries:
    """Write ``num_slices`` slices ``dz`` mm apart along the orientation's normal.

    HU are random in -1024..1500, stored as ``(hu - intercept) / slope`` (so use a
    slope that keeps them integral). ``transfer_syntax`` compresses with
    ``ds.compress`` (e.g. RLE Lossless, JPEG 2000 Lossless).
    """
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or STUDY_UID
    hu = random_hu(num_slices, rows, cols, seed)
    stored = np.rint((hu.astype(np.float64) - intercept) / slope).astype(np.int16)
    normal = np.cross(orientation[:3], orientation[3:])
    origin = np.array([-0.35 * cols, -0.35 * rows, 0.0])
    positions = z0 + dz * np.arange(num_slices)
    names = [f"{prefix}{i + 1:04d}.dcm" for i in range(num_slices)]
    if name_order == "reversed":
        names = names[::-1]
    paths = []
    for i in range(num_slices):
        ds = ct_dataset(
            stored[i],
            position=tuple(origin + positions[i] * normal),
            series_uid=series_uid,
            study_uid=study_uid,
            instance=i + 1,
            orientation=orientation,
            slope=slope,
            intercept=intercept,
            **dataset_kwargs,
        )
        if transfer_syntax is not None:
            ds.compress(transfer_syntax, stored[i])
        path = folder / names[i]
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    hu_expected = np.rint(stored.astype(np.float64) * slope + intercept).astype(np.int16)
    return WrittenSeries(tuple(paths), hu_expected, positions, series_uid, study_uid)
