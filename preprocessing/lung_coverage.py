"""Does the scan hold the whole lungs? The lung volume outside the scan range, estimated
from the lung-area profile at each end.

Input: the per-slice lung area ``lung_area_mm2`` ``[N]`` (mm^2; one value per slice of the
``[N, H, W]`` volume, slices inferior -> superior, as
:attr:`covidct.preprocessing.lung_segmentation.LungSegmentation.lung_area_mm2`) and the slice
spacing (mm). Outputs are in mm, mm^2 and ml; fractions are of the estimated whole lung
(0..1; the messages of :mod:`covidct.preprocessing.assessment` give them in percent).

At each end (inferior: slice 0, the lung bases; superior: slice ``N - 1``, the apices):

* The outermost slice holds no lung: the scan reaches past the lungs there; nothing is
  missing at that end.
* Otherwise the lungs go on beyond the scan's edge. Their area tapers to zero beyond it
  over an extrapolated **taper length** ``t`` (mm): the area ``A`` of the outermost slice
  divided by the slope (mm^2 per mm) of a least-squares line through the area of the
  slices within ``AssessmentConfig.coverage_fit_mm`` of the outermost one (at least two
  slices), bounded by the flattest plausible lung end, the area falling from the largest
  slice's ``A_max`` to zero over ``AssessmentConfig.max_taper_mm``:
  ``t = min(A / slope, max_taper_mm * A / A_max)``. A flat or rising profile at the end
  (a cut through the middle of the lungs) has no usable slope and gets the bound: a large
  missing part. A few clipped millimetres of the costophrenic recesses or the apices
  (small ``A``, steep slope) give a small one.
* The missing volume is the linear taper beyond the edge, ``A * t / 2`` (ml after / 1000).

The estimated whole lung is the measured lung (the profile summed x the slice spacing)
plus both missing volumes. Pure numpy; no module-level state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from covidct.errors import VolumeError
from covidct.preprocessing.config import AssessmentConfig

__all__ = ["ENDS", "EndCoverage", "LungCoverage", "lung_coverage"]

#: The two ends of a chest series, in slice order (inferior = slice 0).
ENDS = ("inferior", "superior")


@dataclass(frozen=True)
class EndCoverage:
    """What lies beyond one end of the scan.

    Attributes:
        end: ``"inferior"`` (below slice 0) or ``"superior"`` (above slice ``N - 1``).
        end_area_mm2: lung area of the outermost slice (mm^2); 0 where the scan reaches
            past the lungs.
        slope_mm2_per_mm: fitted growth of the lung area per mm into the scan (mm^2 / mm;
            NaN where not fitted: no lung on the outermost slice, or one slice only).
        taper_mm: estimated extent of the lung beyond the edge (mm; 0 when none).
        missing_ml: estimated lung volume beyond the edge (ml).
    """

    end: str
    end_area_mm2: float
    slope_mm2_per_mm: float
    taper_mm: float
    missing_ml: float


@dataclass(frozen=True)
class LungCoverage:
    """The lung volume inside the scan and the estimate of what lies outside it (ml)."""

    inferior: EndCoverage
    superior: EndCoverage
    measured_ml: float

    @property
    def missing_ml(self) -> float:
        """Estimated lung volume outside the scan, both ends (ml)."""
        return self.inferior.missing_ml + self.superior.missing_ml

    @property
    def whole_ml(self) -> float:
        """Estimated whole lung: measured + missing (ml)."""
        return self.measured_ml + self.missing_ml

    def _of_whole(self, missing_ml: float) -> float:
        whole = self.whole_ml
        return missing_ml / whole if whole > 0 else float("nan")

    @property
    def inferior_fraction(self) -> float:
        """Estimated fraction (0..1) of the whole lung below the scan (bases); NaN without lung."""
        return self._of_whole(self.inferior.missing_ml)

    @property
    def superior_fraction(self) -> float:
        """Estimated fraction (0..1) of the whole lung above the scan (apices); NaN without lung."""
        return self._of_whole(self.superior.missing_ml)

    @property
    def missing_fraction(self) -> float:
        """Estimated fraction (0..1) of the whole lung outside the scan, both ends; NaN without lung."""
        return self._of_whole(self.missing_ml)

    def measurements(self) -> dict[str, float]:
        """The assessment's coverage measurements (fractions 0..1, ml)."""
        return {
            "missing_lung_fraction_inferior": self.inferior_fraction,
            "missing_lung_fraction_superior": self.superior_fraction,
            "missing_lung_fraction": self.missing_fraction,
            "missing_lung_ml": self.missing_ml,
        }


def _slope(area: np.ndarray, dz: float, fit_mm: float) -> float:
    """Least-squares growth (mm^2 per mm) of ``area`` (outermost slice first) over the slices
    whose centres lie within ``fit_mm`` of the outermost one (at least two); NaN for one slice."""
    count = min(area.size, max(2, int(math.floor(fit_mm / dz + 1e-9)) + 1))
    if count < 2:
        return float("nan")
    z = np.arange(count, dtype=np.float64) * dz
    a = area[:count]
    z_centred = z - z.mean()
    return float(np.dot(z_centred, a - a.mean()) / np.dot(z_centred, z_centred))


def _end(end: str, area: np.ndarray, dz: float, peak: float, config: AssessmentConfig) -> EndCoverage:
    """:class:`EndCoverage` of one end; ``area`` is the profile from that end inward (mm^2)."""
    edge = float(area[0])
    if edge <= 0.0:
        return EndCoverage(end, 0.0, float("nan"), 0.0, 0.0)
    slope = _slope(area, dz, config.coverage_fit_mm)
    bound = config.max_taper_mm * edge / peak
    taper = min(edge / slope, bound) if slope > 0 else bound
    return EndCoverage(end, edge, slope, taper, 0.5 * edge * taper / 1000.0)


def lung_coverage(
    lung_area_mm2: np.ndarray, slice_spacing_mm: float, config: AssessmentConfig = AssessmentConfig(),
) -> LungCoverage:
    """Estimate the lung volume beyond each end of the scan (see the module docstring).

    Args:
        lung_area_mm2: float ``[N]``, lung area of every slice (mm^2), inferior -> superior.
        slice_spacing_mm: distance between neighbouring slices (mm).
        config: ``coverage_fit_mm`` and ``max_taper_mm`` are read.

    Raises:
        VolumeError: ``lung_area_mm2`` is not a non-empty 1-D array of finite areas >= 0, or
            the spacing is not a finite positive number.
    """
    area = np.asarray(lung_area_mm2, dtype=np.float64)
    if area.ndim != 1 or area.size == 0 or not np.all(np.isfinite(area)) or np.any(area < 0):
        raise VolumeError(f"lung_coverage: lung_area_mm2 has shape {area.shape}; expected [N] finite areas >= 0 mm^2")
    dz = float(slice_spacing_mm)
    if not (math.isfinite(dz) and dz > 0):
        raise VolumeError(f"lung_coverage: slice_spacing_mm={slice_spacing_mm!r}; expected a finite spacing > 0 mm")
    measured = float(area.sum()) * dz / 1000.0
    peak = float(area.max())
    if peak <= 0.0:
        nothing = (EndCoverage(e, 0.0, float("nan"), 0.0, 0.0) for e in ENDS)
        return LungCoverage(*nothing, measured_ml=0.0)
    return LungCoverage(inferior=_end("inferior", area, dz, peak, config),
                        superior=_end("superior", area[::-1], dz, peak, config), measured_ml=measured)
