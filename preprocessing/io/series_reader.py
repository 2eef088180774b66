"""Read one patient series into a :class:`~covidct.preprocessing.volume.CTVolume`.

:func:`read_series` dispatches on the source:

- DICOM folder (recursive), ``.zip`` of one, or a single DICOM file: headers are
  scanned and validated first (:mod:`covidct.preprocessing.io.dicom_series`), then pixels decoded
  in parallel (:mod:`covidct.preprocessing.io.dicom_decode`) and turned in-plane to the patient
  frame (:mod:`covidct.preprocessing.orientation`; prone, feet-first and decubitus series).
  :func:`read_dicom_series` also returns the
  :class:`~covidct.preprocessing.io.dicom_series.ScanReport` (skipped files, reasons).
- ``.nii`` / ``.nii.gz``: :mod:`covidct.preprocessing.io.nifti_volume`.
- folder of 16-bit ``.tif`` slices (COVID-CTset): :mod:`covidct.preprocessing.io.tiff_series`.
- ``np.ndarray`` ``[N, H, W]`` of HU with ``spacing_mm`` (z, y, x).

The result is HU int16 ``[N, H, W]`` sorted by position ascending, spacing in mm, and
no patient identifier (``series_key`` is a one-way hash). Every failure is a
:class:`~covidct.errors.InputError`: size limits (:mod:`covidct.preprocessing.io.limits`) are
checked from headers before pixels are allocated, a DICOM input must hold one patient and
one study (:mod:`covidct.preprocessing.io.dicom_identity`), and spacing must lie within
``ReaderConfig.pixel_spacing_mm`` / ``slice_spacing_mm``.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import numpy as np

from covidct.errors import ConfigError, UnsupportedFormatError, VolumeError
from covidct.preprocessing.reader_config import ReaderConfig
from covidct.preprocessing.io.dicom_decode import decode_series, resolve_workers, tasks_for_slices
from covidct.preprocessing.io.dicom_series import ScanReport, scan_dicom
from covidct.preprocessing.io.nifti_volume import NIFTI_SUFFIXES, read_nifti
from covidct.preprocessing.io.reader_checks import check_slice_count, clip_to_int16, spacing_triplet
from covidct.preprocessing.io.tiff_series import TIFF_SUFFIXES, read_tiff_folder, tiff_files
from covidct.preprocessing.volume import CTVolume, make_series_key

#: Single files that are recognisably not a series this reader handles.
UNSUPPORTED_SUFFIXES = (
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".npy", ".npz", ".mha", ".mhd", ".nrrd",
    ".tar", ".tgz", ".gz", ".7z", ".rar", ".txt", ".csv", ".json",
)


def read_series(
    source: str | os.PathLike | np.ndarray,
    *,
    config: ReaderConfig = ReaderConfig(),
    spacing_mm: tuple[float, float, float] | None = None,
) -> CTVolume:
    """One series as HU int16 ``[N, H, W]`` (ascending position) with spacing in mm.

    Args:
        source: DICOM folder/zip/file, ``.nii``/``.nii.gz``, folder of 16-bit TIFF
            slices, or an ``np.ndarray`` ``[N, H, W]`` of HU.
        config: series choice, slice-count limits, gap tolerance, decode workers, size
            limits checked before allocation, accepted spacing ranges (mm).
        spacing_mm: (z, y, x) mm; required for arrays, optional for TIFF folders
            (default (1, 1, 1)); DICOM and NIfTI carry their own spacing.

    A folder holding ``.tif``/``.tiff`` files at its top level is read as a TIFF
    series (HU = value - 1024; use :func:`read_tiff_folder` for another intercept);
    any other folder as DICOM.
    """
    if isinstance(source, np.ndarray):
        if spacing_mm is None:
            raise VolumeError("read_series(array) needs spacing_mm=(z, y, x) in mm")
        return volume_from_array(source, spacing_mm, config=config)
    if not isinstance(source, (str, os.PathLike)):
        raise UnsupportedFormatError(
            f"read_series got a {type(source).__name__}; expected a path or an np.ndarray"
        )
    path = Path(source)
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise UnsupportedFormatError(f"{path}: cannot be read ({exc.strerror})") from exc
    name = path.name.lower()
    if stat.S_ISDIR(mode) and tiff_files(path):
        return read_tiff_folder(path, spacing_mm=spacing_mm, config=config)
    if stat.S_ISREG(mode) and name.endswith(NIFTI_SUFFIXES):
        _no_spacing_override(path, spacing_mm)
        return read_nifti(path, config=config)
    if not stat.S_ISDIR(mode) and (
        not stat.S_ISREG(mode)
        or name.endswith(TIFF_SUFFIXES)
        or name.endswith(UNSUPPORTED_SUFFIXES)
    ):
        raise UnsupportedFormatError(
            f"{path}: not a supported series; expected a DICOM folder, .zip or file, "
            ".nii/.nii.gz, a folder of 16-bit .tif slices, or an np.ndarray"
        )
    _no_spacing_override(path, spacing_mm)
    return read_dicom_series(path, config=config)[0]


def read_dicom_series(
    path: str | os.PathLike, *, config: ReaderConfig = ReaderConfig()
) -> tuple[CTVolume, ScanReport]:
    """Read a DICOM folder, zip or file; also return what the scan found and skipped."""
    report = scan_dicom(Path(path), config)
    tasks = tasks_for_slices(report.slices, config.max_file_bytes)
    hu = decode_series(tasks, workers=resolve_workers(config.decode_workers, len(tasks)), decoder=config.decoder)
    if not report.orientation.is_identity:  # prone, feet-first, decubitus: to the patient frame
        hu = np.ascontiguousarray(report.orientation.to_patient(hu))
    volume = CTVolume(
        hu=hu,
        spacing_mm=report.spacing_mm,
        positions_mm=report.positions_mm,
        series_key=report.series_key,
        source_format=report.source_format,
        source_names=report.source_names,
        source_frames=report.source_frames,
        source_series=report.chosen_series,
        series_left_out=report.series_left_out,
        orientation=report.orientation,
    )
    return volume, report


def volume_from_array(
    array: np.ndarray,
    spacing_mm: tuple[float, float, float],
    *,
    config: ReaderConfig = ReaderConfig(),
) -> CTVolume:
    """Wrap an HU array ``[N, H, W]`` (integer or float; rounded, clipped to int16)."""
    if array.ndim != 3 or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise VolumeError(
            f"array source is {array.dtype} with shape {array.shape}; expected an integer "
            "or float HU array [N, H, W]"
        )
    check_slice_count("array source", array.shape[0], config)
    spacing = spacing_triplet("array source", spacing_mm, config)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise VolumeError("array source holds NaN or infinite values; expected finite HU")
        array = np.rint(array)
    hu = np.ascontiguousarray(clip_to_int16(array))
    return CTVolume(
        hu=hu,
        spacing_mm=spacing,
        positions_mm=np.arange(hu.shape[0], dtype=np.float64) * spacing[0],
        series_key=make_series_key("array", hashlib.sha256(memoryview(hu)).hexdigest()),
        source_format="array",
    )


def _no_spacing_override(path: Path, spacing_mm: object) -> None:
    if spacing_mm is not None:
        raise ConfigError(
            f"{path}: spacing_mm is read from DICOM/NIfTI files; pass it only for TIFF "
            "folders and arrays"
        )
