"""Read a folder of 16-bit TIFF slices (the COVID-CTset layout) into a :class:`CTVolume`.

COVID-CTset stores one series as a folder of ``IM*.tif`` files, one 16-bit unsigned
slice each, holding the stored values: HU = value + intercept (default -1024, the
datasets' Rescale Intercept). TIFF has no patient position, so - here and only here -
slices are ordered by natural file-name sort (``IM2`` before ``IM10``). Spacing is not in
the files either: pass ``spacing_mm`` (z, y, x); the default is (1, 1, 1) mm.

Before a slice's pixels are read, its file size (``ReaderConfig.max_file_bytes``) and
its first page's shape and data type (from the TIFF tags) are checked, and with the first
slice the whole volume's memory budget; the volume is filled slice by slice.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import tifffile

from covidct.errors import EmptySeriesError, GeometryMismatchError, InputError, PixelDecodeError, VolumeError
from covidct.preprocessing.reader_config import ReaderConfig
from covidct.preprocessing.io.limits import check_file_size, check_matrix, check_volume_bytes
from covidct.preprocessing.io.reader_checks import check_slice_count, clip_to_int16, spacing_triplet
from covidct.preprocessing.volume import CTVolume, make_series_key

TIFF_SUFFIXES = (".tif", ".tiff")
DEFAULT_TIFF_INTERCEPT = -1024
logger = logging.getLogger(__name__)
DEFAULT_TIFF_SPACING_MM = (1.0, 1.0, 1.0)


def natural_key(name: str) -> list:
    """Sort key comparing digit runs as numbers: ``IM2.tif`` < ``IM10.tif``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def tiff_files(folder: Path) -> list[Path]:
    """The ``.tif``/``.tiff`` files directly in ``folder`` (not hidden), natural order.

    A symlink resolving outside ``folder``, a symlink loop or anything but a regular file
    is skipped (logged), never read.
    """
    real_folder = folder.resolve()
    files = []
    for p in folder.iterdir():
        if not p.name.lower().endswith(TIFF_SUFFIXES) or p.name.startswith("."):
            continue
        if not p.is_file():  # FIFO, socket, device, folder, dangling link or symlink loop
            logger.info("skipping %s: not a regular file; not opened", p.name)
            continue
        if p.resolve().is_relative_to(real_folder):
            files.append(p)
        else:
            logger.info("skipping %s: symlink resolves outside %s; not followed", p.name, folder)
    return sorted(files, key=lambda p: natural_key(p.name))


def _read_slice(path: Path, config: ReaderConfig) -> np.ndarray:
    """One 16-bit slice ``[H, W]``: file size, page shape and data type checked from the
    tags before the pixels are read."""
    check_file_size(str(path), path.stat().st_size, config)
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            shape, dtype = tuple(page.shape), page.dtype
            if dtype == np.uint16 and len(shape) == 2:
                check_matrix(str(path), shape[0], shape[1], config, "TIFF page size (rows x columns)")
                image = page.asarray()
    except InputError:  # the size checks above
        raise
    except Exception as exc:  # tifffile raises many types for bad files
        raise PixelDecodeError(
            f"{path}: cannot read the TIFF image ({type(exc).__name__}: {exc})"
        ) from exc
    if dtype != np.uint16 or len(shape) != 2:
        raise VolumeError(
            f"{path}: TIFF holds {dtype} {shape}; expected one 16-bit unsigned 2-D slice"
        )
    return image


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
    spacing = spacing_triplet(str(folder), spacing_mm, config)
    first = _read_slice(files[0], config)
    check_volume_bytes(f"{folder}: {len(files)} slices like {files[0].name}", (len(files), *first.shape), config)
    hu = np.empty((len(files), *first.shape), dtype=np.int16)
    for i, path in enumerate(files):
        image = first if i == 0 else _read_slice(path, config)
        if image.shape != first.shape:
            raise GeometryMismatchError(
                f"{path}: slice shape {image.shape}; expected {first.shape} like {files[0]}"
            )
        hu[i] = clip_to_int16(image.astype(np.int32) + int(intercept))
    names = tuple(p.name for p in files)
    return CTVolume(
        hu=hu,
        spacing_mm=spacing,
        positions_mm=np.arange(hu.shape[0], dtype=np.float64) * spacing[0],
        series_key=make_series_key("tiff", *names),
        source_format="tiff",
        source_names=names,
    )
