"""Checks and conversions every series reader shares (DICOM, NIfTI, TIFF, arrays)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from covidct.errors import TooFewSlicesError, TooManySlicesError, VolumeError
from preprocessing.config import ReaderConfig

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


def spacing_triplet(where: str, spacing_mm: Sequence[float]) -> tuple[float, float, float]:
    """(z, y, x) spacing as three finite positive floats (mm), else :class:`VolumeError`."""
    try:
        values = tuple(float(s) for s in spacing_mm)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise VolumeError(
            f"{where}: spacing_mm is {spacing_mm!r}; expected three finite positive mm "
            "values (z, y, x)"
        )
    return values  # type: ignore[return-value]
