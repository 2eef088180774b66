"""Read a folder of 16-bit TIFF slices (the COVID-CTset layout) into a :class:`CTVolume`.

COVID-CTset stores one series as a folder of ``IM*.tif`` files, one 16-bit unsigned
slice each, holding the stored values: HU = value + intercept (default -1024, the
datasets' Rescale Intercept). TIFF has no patient position, so - here and only here -
slices are ordered by natural file-name sort (``IM2`` before ``IM10``). Spacing is not in
the files either: pass ``spacing_mm`` (z, y, x); the default is (1, 1, 1) mm.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import tifffile

from covidct.errors import EmptySeriesError, GeometryMismatchError, PixelDecodeError, VolumeError
from preprocessing.config import ReaderConfig
from preprocessing.io.reader_checks import check_slice_count, clip_to_int16, spacing_triplet
from preprocessing.volume import CTVolume, make_series_key

TIFF_SUFFIXES = (".tif", ".tiff")
DEFAULT_TIFF_INTERCEPT = -1024
logger = logging.getLogger(__name__)
DEFAULT_TIFF_SPACING_MM = (1.0, 1.0, 1.0)


def natural_key(name: str) -> list:
    """Sort key comparing digit runs as numbers: ``IM2.tif`` < ``IM10.tif``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def tiff_files(folder: Path) -> list[Path]:
    """The ``.tif``/``.tiff`` files directly in ``folder`` (not hidden), natural order.

    A symlink resolving outside ``folder`` is skipped (logged), never read.
    """
    real_folder = folder.resolve()
    files = []
    for p in folder.iterdir():
        if not p.name.lower().endswith(TIFF_SUFFIXES) or p.name.startswith(".") or not p.is_file():
            continue
        if p.resolve().is_relative_to(real_folder):
            files.append(p)
        else:
            logger.info("skipping %s: symlink resolves outside %s; not followed", p.name, folder)
    return sorted(files, key=lambda p: natural_key(p.name))


def read_tiff_folder(
    folder: str | Path,
    *,
    intercept: int = DEFAULT_TIFF_INTERCEPT,
    spacing_mm: tuple[float, float, float] | None = None,
    config: ReaderConfig = ReaderConfig(),
) -> CTVolume:
    """One series from a folder of 16-bit unsigned TIFF slices as HU int16 ``[N, H, W]``.

    Args:
        folder: the patient/series folder holding the slices.
        intercept: HU added to every stored value (default -1024).
        spacing_mm: (z, y, x) mm; default (1, 1, 1) since TIFF carries none.
        config: slice-count limits.
    """
    folder = Path(folder)
    files = tiff_files(folder)
    if not files:
        raise EmptySeriesError(f"{folder}: holds no .tif/.tiff slice; expected IM*.tif files")
    check_slice_count(str(folder), len(files), config)
    if spacing_mm is None:
        spacing_mm = DEFAULT_TIFF_SPACING_MM
    spacing = spacing_triplet(str(folder), spacing_mm)
    slices: list[np.ndarray] = []
    for path in files:
        try:
            image = tifffile.imread(path)
        except Exception as exc:  # noqa: BLE001 - tifffile raises many types for bad files
            raise PixelDecodeError(
                f"{path}: cannot read the TIFF image ({type(exc).__name__}: {exc})"
            ) from exc
        if image.dtype != np.uint16 or image.ndim != 2:
            raise VolumeError(
                f"{path}: TIFF holds {image.dtype} {image.shape}; expected one 16-bit "
                "unsigned 2-D slice"
            )
        if slices and image.shape != slices[0].shape:
            raise GeometryMismatchError(
                f"{path}: slice shape {image.shape}; expected {slices[0].shape} like {files[0]}"
            )
        slices.append(image)
    hu = clip_to_int16(np.stack(slices).astype(np.int32) + int(intercept))
    names = tuple(p.name for p in files)
    return CTVolume(
        hu=hu,
        spacing_mm=spacing,
        positions_mm=np.arange(hu.shape[0], dtype=np.float64) * spacing[0],
        series_key=make_series_key("tiff", *names),
        source_format="tiff",
        source_names=names,
    )
