"""Slice selection: the lung-area rule (default) and paper 002's open-lung rule.

**Lung area** (``SelectionConfig.rule == "lung_area"``, :func:`select_by_lung_area`): a
slice is kept when its lung area (mm^2, from the whole-series 3-D lung mask of
:mod:`covidct.preprocessing.lung_segmentation`) is at least ``min_lung_area_fraction`` (0.25) of
the series maximum. It discards the lung apices and bases, where little lung is cut,
and keeps every slice with a sizeable lung section, wherever the lesions sit. On the
three COVID-CT-MD sample series it keeps all 83 labelled-infected slices (paper 002's
rule keeps 74) and discards 140 of 431 slices (32 %; per series 32 %, 21 % and 41 %: a
scan range that hugs the lungs leaves less to discard). **Paper 002** (``rule == "paper002"``,
:func:`select_open_lung_slices`), kept by name for the paper comparison:

At both ends of a chest CT the lungs are "closed": the slice cuts the apex or the
diaphragm domes and the middle of the image holds little air. Paper 002 (COVID-CTset)
keeps only the slices in which the inside of the lungs is visible:

1. A fixed region in the middle of the slice: x 120..370, y 240..340 on a 512x512
   slice (``SelectionConfig.region_x``/``region_y`` in pixels of a
   ``reference_size`` slice), scaled to the actual ``H x W``: on a slice of width ``W``
   the columns are ``round(120 * W / 512) .. round(370 * W / 512)`` (end exclusive).
2. Dark pixels: HU below ``dark_threshold_hu`` (-724 HU: the paper's stored value 300
   of its 16-bit data with the usual intercept -1024; working in HU keeps the rule
   valid for any scanner's rescale).
3. Per series, ``threshold = (max(count) - min(count)) / divisor`` (divisor 1.5; the
   paper's example: counts 3030 and 30 give 2000). A slice is kept when its count
   **exceeds** the threshold.

Edge cases (a series never yields an empty selection silently):

* If no slice has a single dark pixel in the region (an empty or non-chest volume, or
  lungs outside the region), there is no open lung to find: :class:`NoOpenLungError`
  is raised, naming the region and the HU threshold.
* Otherwise the selection is never empty: the slice with the maximum count always
  exceeds ``(max - min) / 1.5`` (because ``max > 0``). When all counts are equal
  (e.g. a one-slice request) the threshold is 0 and every slice is kept: without
  contrast between slices there is nothing to discard.

Input: HU ``[N, H, W]`` (slices sorted by position). Output:
:class:`SelectionResult` with ``indices`` int32 ``[K]`` (ascending), ``dark_counts``
int32 ``[N]`` and the ``threshold`` (pixels, float).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from covidct.errors import ConfigError, NoOpenLungError, VolumeError
from covidct.preprocessing.config import SelectionConfig


@dataclass(frozen=True)
class SelectionResult:
    """Open-lung selection of one series.

    Attributes:
        indices: int32 ``[K]``, ascending indices (into the ``N`` slices) of the kept slices.
        dark_counts: int32 ``[N]``, dark pixels in the region per slice.
        threshold: ``(max - min) / divisor`` of ``dark_counts``, in pixels.
    """

    indices: np.ndarray
    dark_counts: np.ndarray
    threshold: float


def scaled_region(height: int, width: int, config: SelectionConfig = SelectionConfig()) -> tuple[int, int, int, int]:
    """The selection region ``(y0, y1, x0, x1)`` (end exclusive) on an ``H x W`` slice.

    The configured region is in pixels of a ``reference_size`` square slice; it is scaled
    per axis and rounded, and always holds at least one pixel.
    """
    (x0, x1), (y0, y1), ref = config.region_x, config.region_y, config.reference_size
    if ref <= 0 or not (0 <= x0 < x1 <= ref and 0 <= y0 < y1 <= ref):
        raise ConfigError(
            f"SelectionConfig: region_x={config.region_x}, region_y={config.region_y}; expected "
            f"non-empty pixel ranges inside a reference_size={ref} slice"
        )
    sy, sx = height / ref, width / ref
    ry0, rx0 = int(round(y0 * sy)), int(round(x0 * sx))
    ry1 = max(ry0 + 1, min(height, int(round(y1 * sy))))
    rx1 = max(rx0 + 1, min(width, int(round(x1 * sx))))
    return min(ry0, height - 1), ry1, min(rx0, width - 1), rx1


def dark_pixel_counts(hu: np.ndarray, config: SelectionConfig = SelectionConfig()) -> np.ndarray:
    """Dark pixels (HU < ``dark_threshold_hu``) in the scaled region, int32 ``[N]``."""
    array = np.asarray(hu)
    if array.ndim != 3 or 0 in array.shape:
        raise VolumeError(f"slice selection: hu must be a non-empty [N, H, W] stack; got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise VolumeError(f"slice selection: hu has dtype {array.dtype}; expected integer or float HU")
    y0, y1, x0, x1 = scaled_region(array.shape[1], array.shape[2], config)
    region = array[:, y0:y1, x0:x1]
    return np.count_nonzero(region < config.dark_threshold_hu, axis=(1, 2)).astype(np.int32)


def select_open_lung_slices(hu: np.ndarray, config: SelectionConfig = SelectionConfig()) -> SelectionResult:
    """Paper 002's open-lung slices of HU slices ``[N, H, W]`` (see the module docstring).

    Raises:
        NoOpenLungError: no slice has a dark pixel in the region.
        VolumeError: ``hu`` is not a non-empty ``[N, H, W]`` stack.
        ConfigError: the region or the divisor is invalid.
    """
    if not config.divisor > 0:
        raise ConfigError(f"SelectionConfig: divisor={config.divisor!r}; expected > 0")
    counts = dark_pixel_counts(hu, config)
    high, low = int(counts.max()), int(counts.min())
    if high == 0:
        y0, y1, x0, x1 = scaled_region(hu.shape[1], hu.shape[2], config)
        raise NoOpenLungError(
            f"slice selection: none of the {counts.size} slices has a pixel below "
            f"{config.dark_threshold_hu} HU in the region rows {y0}..{y1}, columns {x0}..{x1}; "
            "expected an axial chest CT in HU with the lungs in the middle of the slice"
        )
    threshold = (high - low) / float(config.divisor)
    indices = np.flatnonzero(counts > threshold).astype(np.int32)
    return SelectionResult(indices=indices, dark_counts=counts, threshold=float(threshold))


def select_by_lung_area(lung_area_mm2: np.ndarray, config: SelectionConfig = SelectionConfig()) -> np.ndarray:
    """int32 ``[K]`` ascending indices of slices whose lung area is at least
    ``config.min_lung_area_fraction`` x the series maximum.

    Args:
        lung_area_mm2: float ``[N]``, lung area per slice in mm^2 (e.g.
            :attr:`covidct.preprocessing.lung_segmentation.LungSegmentation.lung_area_mm2`).

    Raises:
        VolumeError: the areas are not a non-empty 1-D array of finite values >= 0.
        NoOpenLungError: no slice holds lung (every area is 0).
    """
    area = np.asarray(lung_area_mm2)
    if area.ndim != 1 or area.size == 0 or not np.issubdtype(area.dtype, np.number):
        raise VolumeError(
            f"select_by_lung_area: lung_area_mm2 must be a non-empty 1-D array of mm^2; got "
            f"{area.dtype} shape {area.shape}"
        )
    area = area.astype(np.float64)
    if not np.all(np.isfinite(area)) or area.min() < 0:
        raise VolumeError(
            f"select_by_lung_area: lung_area_mm2 holds values outside [0, inf) "
            f"(min {np.nanmin(area) if np.any(np.isfinite(area)) else area[0]!r}); expected finite areas in mm^2"
        )
    peak = float(area.max())
    if peak == 0:
        raise NoOpenLungError(
            f"select_by_lung_area: none of the {area.size} slices holds lung (every lung area is 0 mm^2); "
            "expected a chest CT whose lungs the segmentation finds"
        )
    return np.flatnonzero(area >= config.min_lung_area_fraction * peak).astype(np.int32)
