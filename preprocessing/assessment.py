"""Is a series an assessable adult chest CT? Plausibility checks with reason codes.

A verdict (positive / negative) is only given for a series that passes every check;
otherwise the answer is *not assessable*, with one :class:`Reason` per failed check.
The checks read the whole-series lung segmentation
(:func:`covidct.preprocessing.lung_segmentation.segment_lungs`) and the voxel spacing; all
thresholds are in :class:`covidct.preprocessing.config.AssessmentConfig`.

Reason codes (:data:`REASON_CODES`):

* ``implausible_spacing``: pixel spacing (y, x) or slice spacing (z) outside
  ``pixel_spacing_mm`` / ``slice_spacing_mm``, or not a finite positive number.
* ``hu_calibration``: outside air not within ``air_hu`` (an HU shift of +-1024, raw
  stored values, noise), the median body tissue not within ``tissue_hu``, or fewer than
  ``min_soft_tissue_fraction`` of the body's tissue voxels in the fat/soft-tissue band
  ``soft_tissue_hu`` (noise, wrong rescale).
* ``no_body``: less than ``min_body_ml`` of body.
* ``no_lungs``: less than ``min_lung_ml`` of lung.
* ``lungs_incomplete``: more than ``max_missing_lung_fraction`` (5 %) of the estimated
  whole-lung volume lies outside the scan range (:mod:`covidct.preprocessing.lung_coverage`: the
  lung-area profile of the outermost ``coverage_fit_mm`` at each end extrapolated beyond
  the first and last slice): a real part of the lungs is missing.
* ``too_few_lung_slices``: fewer than ``min_lung_slices`` lung-bearing slices, or a
  craniocaudal lung extent below ``min_lung_extent_mm``.
* ``implausible_lung_volume``: whole-lung volume outside ``lung_volume_ml``.
* ``slice_gap``: slices are missing (positions more than ``1 + gap_tolerance`` x the
  median spacing apart) with lung on either side of the gap.
* ``orientation``: the spine is not at least ``min_spine_posterior_mm`` posterior of the
  body's centre (rows run anterior -> posterior) within ``max_spine_lateral_ratio``, or
  the two largest lung components do not lie side by side (rotated or flipped volumes).

Warning codes (:data:`WARNING_CODES`, in ``Assessment.warnings``; the answer stands):

* ``partial_coverage``: the lungs reach the first or last slice, but the estimated part
  outside the scan is at most ``max_missing_lung_fraction``: a clipped margin of the
  bases or apices (a few mm of the costophrenic recesses are often outside a clinical
  chest CT). The measurements ``missing_lung_fraction_inferior``,
  ``missing_lung_fraction_superior``, ``missing_lung_fraction`` (0..1 of the estimated
  whole lung) and ``missing_lung_ml`` hold the estimate.

Checks never raise on content: an all-air volume, noise, one slice or empty lungs give
reasons. Units: mm, ml, HU; measurements are floats (NaN where not measurable).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from covidct.errors import VolumeError
from covidct.preprocessing.config import AssessmentConfig
from covidct.preprocessing.lung_coverage import lung_coverage
from covidct.preprocessing.lung_segmentation import TISSUE_HIST_EDGES, LungSegmentation
from covidct.preprocessing.slice_gaps import SliceGap, find_gaps, gaps_at_lung

#: Both of the two largest lung components must hold this fraction of the lung volume
#: before their positions are compared (a small detached piece says nothing).
SIDE_BY_SIDE_FRACTION = 0.2

REASON_CODES = (
    "no_body",
    "no_lungs",
    "lungs_incomplete",
    "too_few_lung_slices",
    "implausible_lung_volume",
    "hu_calibration",
    "implausible_spacing",
    "orientation",
    "slice_gap",
)
WARNING_CODES = ("partial_coverage",)


@dataclass(frozen=True)
class Reason:
    """Why a series is not assessable: ``code`` from :data:`REASON_CODES`, one-sentence ``message``."""

    code: str
    message: str


@dataclass(frozen=True)
class Assessment:
    """Outcome of :func:`assess`: failed checks (``reasons``), what holds the answer back
    without refusing it (``warnings``, codes :data:`WARNING_CODES`) and what was measured."""

    reasons: tuple[Reason, ...]
    warnings: tuple[Reason, ...] = ()
    measurements: dict[str, float] = field(default_factory=dict)

    @property
    def assessable(self) -> bool:
        """True when no check failed."""
        return not self.reasons

    @property
    def codes(self) -> tuple[str, ...]:
        """The reason codes, in check order."""
        return tuple(r.code for r in self.reasons)


def _fmt(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _outside(value: float, interval: tuple[float, float]) -> bool:
    return not (math.isfinite(value) and interval[0] <= value <= interval[1])


def _band_fraction(histogram: np.ndarray, band: tuple[float, float]) -> float:
    """Fraction of histogram counts whose bin centre lies in ``band`` (HU); NaN when empty."""
    total = float(histogram.sum())
    if total == 0:
        return float("nan")
    centres = 0.5 * (TISSUE_HIST_EDGES[:-1] + TISSUE_HIST_EDGES[1:])
    inside = (centres >= band[0]) & (centres <= band[1])
    return float(histogram[inside].sum()) / total


def _measure(seg: LungSegmentation, spacing: tuple[float, ...]) -> dict[str, float]:
    area = seg.lung_area_mm2
    peak = float(area.max()) if area.size else 0.0
    dz, dy, dx = seg.spacing_mm
    slices = seg.lung_slices
    centre_r, centre_c = seg.body_centre_px
    spine_r, spine_c = seg.spine_px
    m = {
        "slice_spacing_mm": spacing[0], "pixel_spacing_y_mm": spacing[1], "pixel_spacing_x_mm": spacing[2],
        "air_hu": seg.air_hu, "tissue_hu": seg.tissue_hu,
        "body_volume_ml": seg.body_volume_ml, "body_slices": float(seg.body_slices),
        "lung_volume_ml": seg.lung_volume_ml, "right_lung_ml": seg.right_volume_ml,
        "left_lung_ml": seg.left_volume_ml, "lung_threshold_hu": seg.lung_threshold_hu,
        "lung_slices": float(slices.size),
        "first_slice_area_fraction": float(area[0] / peak) if peak > 0 else 0.0,
        "last_slice_area_fraction": float(area[-1] / peak) if peak > 0 else 0.0,
        "max_lung_area_mm2": peak,
        "spine_posterior_mm": (spine_r - centre_r) * dy, "spine_lateral_mm": (spine_c - centre_c) * dx,
        "airway_volume_ml": seg.airway_volume_ml,
    }
    volumes = seg.component_volumes_ml
    if len(volumes) >= 2 and volumes[1] >= SIDE_BY_SIDE_FRACTION * sum(volumes):
        (r0, c0), (r1, c1) = seg.component_centroids_px[:2]
        m["lung_components_lateral_mm"] = abs(c1 - c0) * dx
        m["lung_components_ap_mm"] = abs(r1 - r0) * dy
    return {k: float(v) for k, v in m.items()}


def assess(
    segmentation: LungSegmentation, hu: np.ndarray, spacing_mm: tuple[float, float, float],
    config: AssessmentConfig = AssessmentConfig(), *, positions_mm: np.ndarray | None = None,
) -> Assessment:
    """Plausibility checks of one series (see the module docstring for the codes).

    Args:
        segmentation: :func:`covidct.preprocessing.lung_segmentation.segment_lungs` of ``hu``.
        hu: the HU volume ``[N, H, W]`` the segmentation was computed from.
        positions_mm: float ``[N]`` slice positions (mm, ascending); ``None``: contiguous
            at the slice spacing. Gaps with lung beside them are ``slice_gap``
            (:mod:`covidct.preprocessing.slice_gaps`); the lung extent is measured between the
            positions.
        spacing_mm: ``(z, y, x)`` voxel spacing of ``hu`` in mm (any values: implausible ones
            are a reason, not an error).

    Raises:
        VolumeError: ``hu``'s shape is not the segmentation's source shape.
    """
    shape = tuple(int(d) for d in getattr(hu, "shape", np.shape(hu)))
    if shape != tuple(segmentation.source_shape):
        raise VolumeError(f"assess: hu has shape {shape}; the segmentation was computed on {segmentation.source_shape}")
    try:
        spacing = tuple(float(s) for s in spacing_mm)
    except (TypeError, ValueError):
        spacing = (float("nan"),) * 3
    if len(spacing) != 3:
        spacing = (float("nan"),) * 3
    m = _measure(segmentation, spacing)
    m.update(lung_coverage(segmentation.lung_area_mm2, segmentation.spacing_mm[0], config).measurements())
    gaps = _gaps(segmentation, spacing[0], positions_mm, config, m)
    m["soft_tissue_fraction"] = _band_fraction(segmentation.tissue_histogram, config.soft_tissue_hu)
    reasons: list[Reason] = []

    def add(code: str, message: str) -> None:
        reasons.append(Reason(code, message))

    for name, value, interval in (("pixel spacing y", spacing[1], config.pixel_spacing_mm),
                                  ("pixel spacing x", spacing[2], config.pixel_spacing_mm),
                                  ("slice spacing", spacing[0], config.slice_spacing_mm)):
        if _outside(value, interval):
            add("implausible_spacing", f"The {name} is {_fmt(value)} mm; expected {interval[0]} to {interval[1]} mm.")
            break

    has_body = m["body_volume_ml"] >= config.min_body_ml
    if _outside(m["air_hu"], config.air_hu):
        add("hu_calibration", f"Outside air measures {_fmt(m['air_hu'])} HU; expected {config.air_hu[0]} to "
                              f"{config.air_hu[1]} HU (calibrated CT).")
    elif has_body and _outside(m["tissue_hu"], config.tissue_hu):
        add("hu_calibration", f"Body tissue has median {_fmt(m['tissue_hu'])} HU; expected {config.tissue_hu[0]} "
                              f"to {config.tissue_hu[1]} HU.")
    elif has_body and not m["soft_tissue_fraction"] >= config.min_soft_tissue_fraction:
        add("hu_calibration", f"Only {_fmt(m['soft_tissue_fraction'])} of the body tissue lies in the fat and soft "
                              f"tissue band {config.soft_tissue_hu[0]} to {config.soft_tissue_hu[1]} HU; expected "
                              f"at least {config.min_soft_tissue_fraction}.")

    if not has_body:
        add("no_body", f"The body measures {_fmt(m['body_volume_ml'])} ml; expected at least {config.min_body_ml} ml.")
    volume = m["lung_volume_ml"]
    if not volume >= config.min_lung_ml:
        add("no_lungs", f"The lungs measure {_fmt(volume)} ml; expected at least {config.min_lung_ml} ml.")
    if segmentation.lung_slices.size:
        _lung_checks(m, config, add)
    for gap in gaps:
        add("slice_gap", f"Slices are missing {gap.describe()} with lung beside the gap; expected contiguous "
                         f"slices through the lungs (at most {1 + config.gap_tolerance:g} x the median spacing "
                         "apart).")
    _orientation(m, config, has_body, add)
    return Assessment(reasons=tuple(reasons), warnings=_coverage_warnings(m, config), measurements=m)


def _lung_checks(m: dict[str, float], config: AssessmentConfig, add: Callable[[str, str], None]) -> None:
    missing = m["missing_lung_fraction"]
    if missing > config.max_missing_lung_fraction:
        add("lungs_incomplete", f"An estimated {_pct(missing)} of the lungs lies {_beyond(m)}; expected at most "
                                f"{_pct(config.max_missing_lung_fraction)} (the scan must cover the whole lungs).")
    if m["lung_slices"] < config.min_lung_slices or not m["lung_extent_mm"] >= config.min_lung_extent_mm:
        add("too_few_lung_slices", f"The lungs span {int(m['lung_slices'])} slices over "
                                   f"{_fmt(m['lung_extent_mm'])} mm; expected at least "
                                   f"{config.min_lung_slices} slices and {config.min_lung_extent_mm} mm.")
    if _outside(m["lung_volume_ml"], config.lung_volume_ml):
        add("implausible_lung_volume", f"The lungs measure {_fmt(m['lung_volume_ml'])} ml; expected "
                                       f"{config.lung_volume_ml[0]} to {config.lung_volume_ml[1]} ml for an adult.")


def _gaps(
    seg: LungSegmentation, dz: float, positions_mm: np.ndarray | None, config: AssessmentConfig,
    m: dict[str, float],
) -> tuple[SliceGap, ...]:
    """The gaps with lung beside them; records ``slice_gaps`` (all gaps), ``largest_gap_mm``
    and the lung extent between the true positions in ``m``."""
    n = len(seg.lung_area_mm2)
    if positions_mm is None or np.shape(positions_mm) != (n,):
        positions = np.arange(n, dtype=np.float64) * (dz if math.isfinite(dz) else 1.0)
    else:
        positions = np.asarray(positions_mm, dtype=np.float64)
    gaps = find_gaps(positions, dz, config.gap_tolerance)
    m["slice_gaps"] = float(len(gaps))
    m["largest_gap_mm"] = max((g.width_mm for g in gaps), default=0.0)
    slices = seg.lung_slices
    m["lung_extent_mm"] = float(positions[slices[-1]] - positions[slices[0]] + dz) if slices.size else 0.0
    return gaps_at_lung(gaps, seg.lung_area_mm2)


def _pct(fraction: float) -> str:
    return f"{100.0 * fraction:.3g} %"


#: Where the lung lies beyond each end of the scan (slices run inferior -> superior).
_BEYOND = (("inferior", "below the first slice (lung bases)"), ("superior", "above the last slice (lung apices)"))


def _beyond(m: dict[str, float]) -> str:
    """Which end(s) of the scan cut the lungs, with each end's estimated fraction when both do."""
    cut = [(m[f"missing_lung_fraction_{end}"], where) for end, where in _BEYOND
           if m[f"missing_lung_fraction_{end}"] > 0]
    if len(cut) == 1:
        return cut[0][1]
    return "outside the scan (" + ", ".join(f"{_pct(fraction)} {where}" for fraction, where in cut) + ")"


def _coverage_warnings(m: dict[str, float], config: AssessmentConfig) -> tuple[Reason, ...]:
    """``partial_coverage`` where the lungs reach the first or last slice but the estimated
    part outside the scan is within ``max_missing_lung_fraction`` (the answer stands)."""
    missing = m["missing_lung_fraction"]
    if not 0.0 < missing <= config.max_missing_lung_fraction:
        return ()
    return (Reason("partial_coverage", f"The lungs reach the end of the scan: an estimated {_pct(missing)} of the "
                                       f"lungs ({_fmt(m['missing_lung_ml'])} ml) lies {_beyond(m)}; expected at "
                                       f"most {_pct(config.max_missing_lung_fraction)}, so the answer stands."),)


def _orientation(
    m: dict[str, float], config: AssessmentConfig, has_body: bool, add: Callable[[str, str], None],
) -> None:
    posterior, lateral = m["spine_posterior_mm"], m["spine_lateral_mm"]
    spine_found = has_body and math.isfinite(posterior) and math.isfinite(lateral)
    if spine_found and (posterior < config.min_spine_posterior_mm
                        or abs(lateral) > config.max_spine_lateral_ratio * posterior):
        add("orientation", f"The spine lies {_fmt(posterior)} mm posterior and {_fmt(lateral)} mm lateral of the "
                           f"body centre; expected at least {config.min_spine_posterior_mm} mm posterior and at "
                           f"most {config.max_spine_lateral_ratio} x that sideways (axial, anterior at the top).")
        return
    if "lung_components_lateral_mm" in m and m["lung_components_lateral_mm"] <= m["lung_components_ap_mm"]:
        add("orientation", f"The two lungs are {_fmt(m['lung_components_lateral_mm'])} mm apart sideways and "
                           f"{_fmt(m['lung_components_ap_mm'])} mm front to back; expected side by side.")
