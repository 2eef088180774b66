"""Checks and conversions every series reader shares (DICOM, NIfTI, TIFF, arrays)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from covidct.errors import (
    ImplausibleSpacingError,
    RescaleValueError,
    TooFewSlicesError,
    TooManySlicesError,
    dicom_tag,
)
from covidct.preprocessing.reader_config import ReaderConfig

_INT16 = np.iinfo(np.int16)


def check_slice_count(where: str, n: int, config: ReaderConfig) -> None:
    """:class:`TooManySlicesError` / :class:`TooFewSlicesError` outside the config's range."""
    if n > config.max_slices:
        raise TooManySlicesError(
            f"{where}: the series has {n} slices; expected at most {config.max_slices} "
            "(ReaderConfig.max_slices)"
        )
    if n < config.min_slices:
        raise TooFewSlicesError(
            f"{where}: the series has {n} slice(s); expected at least {config.min_slices} "
            "(ReaderConfig.min_slices)"
        )


def clip_to_int16(values: np.ndarray) -> np.ndarray:
    """Integer-valued HU of any integer or float dtype, clipped to the int16 range."""
    if values.dtype == np.int16:
        return values
    low, high = _INT16.min, _INT16.max
    if np.issubdtype(values.dtype, np.integer):  # bounds must fit the input dtype
        info = np.iinfo(values.dtype)
        low, high = max(info.min, low), min(info.max, high)
    return np.clip(values, low, high).astype(np.int16)


def check_rescale(where: str, slope: float, intercept: float) -> None:
    """Rescale Slope (0028,1053) finite and non-zero, Rescale Intercept (0028,1052) finite
    (HU = stored * slope + intercept); else :class:`RescaleValueError`."""
    if not (math.isfinite(slope) and slope != 0.0):
        raise RescaleValueError(
            f"{where}: Rescale Slope {dicom_tag(0x0028, 0x1053)} is {slope!r}; expected a finite non-zero "
            "number (HU = stored * slope + intercept)"
        )
    if not math.isfinite(intercept):
        raise RescaleValueError(
            f"{where}: Rescale Intercept {dicom_tag(0x0028, 0x1052)} is {intercept!r}; expected a finite "
            "number of HU (HU = stored * slope + intercept)"
        )


def check_pixel_spacing(where: str, source: str, values: Sequence[float] | None, config: ReaderConfig) -> None:
    """In-plane spacing (mm, row and column) finite, positive and within ``pixel_spacing_mm``;
    else :class:`ImplausibleSpacingError` naming ``where``, the ``source`` and the range."""
    _check_mm(where, source, values, config.pixel_spacing_mm, "pixel_spacing_mm", 2)


def check_slice_spacing(where: str, source: str, value: float | None, config: ReaderConfig) -> None:
    """Distance between slices (mm) finite, positive and within ``slice_spacing_mm``."""
    _check_mm(where, source, None if value is None else (value,), config.slice_spacing_mm, "slice_spacing_mm", 1)


def spacing_triplet(
    where: str, spacing_mm: Sequence[float], config: ReaderConfig = ReaderConfig()
) -> tuple[float, float, float]:
    """A given (z, y, x) spacing (mm) as three floats within the config's ranges, else
    :class:`ImplausibleSpacingError`."""
    try:
        values = tuple(float(s) for s in spacing_mm)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3:
        raise ImplausibleSpacingError(
            f"{where}: spacing_mm is {spacing_mm!r}; expected three finite positive mm values (z, y, x)"
        )
    check_slice_spacing(where, f"spacing_mm {spacing_mm!r}, its z", values[0], config)
    check_pixel_spacing(where, f"spacing_mm {spacing_mm!r}, its (y, x)", values[1:], config)
    return values  # type: ignore[return-value]


def _check_mm(
    where: str, source: str, values: Sequence[float] | None, interval: tuple[float, float], field: str, count: int
) -> None:
    low, high = interval
    ok = values is not None and len(values) == count and all(
        math.isfinite(v) and v > 0 and low <= v <= high for v in values
    )
    if not ok:
        found = "missing" if values is None else f"{values[0] if count == 1 else list(values)} mm"
        raise ImplausibleSpacingError(
            f"{where}: {source} is {found}; expected {'each ' if count > 1 else ''}"
            f"in [{low:g}, {high:g}] mm (ReaderConfig.{field})"
        )
