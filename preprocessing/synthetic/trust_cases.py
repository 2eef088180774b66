"""Synthetic series that a chest CT triage must answer with "not assessable".

:func:`trust_cases` builds them from one healthy chest phantom
(:func:`covidct.preprocessing.synthetic.phantom.make_phantom`, default adult geometry), the
non-chest generators (:mod:`covidct.preprocessing.synthetic.non_chest`) and the transforms of
:mod:`covidct.preprocessing.synthetic.case_transforms`. Each :class:`TrustCase` names the
reasons of which at least one must appear in the refusal; the reason codes are
``REASON_CODES``:

==========================  ====================================================
``no_body``                 no patient in the field of view
``no_lungs``                the scan holds no lungs (another body region)
``lungs_incomplete``        a real part of the lungs lies beyond the top or bottom of the scan
``too_few_lung_slices``     too few slices show lung to judge the patient
``implausible_lung_volume`` the lung volume is far from an adult's
``hu_calibration``          the HU values are not calibrated (air is not -1000 HU)
``implausible_spacing``     the voxel spacing is not that of a CT series
``orientation``             the slices are turned or mirrored
==========================  ====================================================

:func:`crop_cases` makes the two cropped cases (neck only, lung bases only) of any
volume, e.g. a real series.

:func:`coverage_crops` makes the crops of a chest series that tell a clipped margin from
missing lung, given the series' own per-slice lung area (mm^2, e.g.
``LungSegmentation.lung_area_mm2`` or a phantom's exact ``lung_mask``): at each end,
``INCOMPLETE_REMOVED_FRACTION`` (20 %) of the lung volume removed must be refused with
``lungs_incomplete``; the last ``CLIPPED_LUNG_SLICES`` (1 and 2) lung-bearing slices
removed must be answered with the ``partial_coverage`` warning. Slices run inferior ->
superior (``[N, H, W]``), so the inferior end is slice 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from covidct.errors import ConfigError
from covidct.preprocessing.synthetic.case_transforms import (
    all_air,
    crop_slices,
    flip_anterior_posterior,
    rotate_in_plane,
    shift_hu,
    uniform_noise,
    with_spacing,
)
from covidct.preprocessing.synthetic.non_chest import make_abdomen, make_head, make_thighs
from covidct.preprocessing.synthetic.phantom import make_phantom
from covidct.preprocessing.volume import CTVolume

__all__ = ["BASE_ONLY_FRACTIONS", "CLIPPED_LUNG_SLICES", "COVERAGE_ENDS", "INCOMPLETE_REMOVED_FRACTION",
           "NECK_ONLY_FRACTIONS", "REASON_CODES", "CoverageCrop", "TrustCase", "coverage_crops", "crop_cases",
           "trust_cases"]

REASON_CODES = frozenset({
    "no_body", "no_lungs", "lungs_incomplete", "too_few_lung_slices", "implausible_lung_volume",
    "hu_calibration", "implausible_spacing", "orientation",
})
#: (start, stop) slice fractions of the neck-only crop: the top 15 % of the slices.
NECK_ONLY_FRACTIONS = (0.85, 1.0)
#: (start, stop) slice fractions of the base-only crop: the lowest 40 % of the slices.
BASE_ONLY_FRACTIONS = (0.0, 0.4)
#: The coverage crops cut at each end: ``"inferior"`` (slice 0, lung bases), ``"superior"`` (apices).
COVERAGE_ENDS = ("inferior", "superior")
#: Fraction of the lung volume a ``lungs_incomplete`` coverage crop removes at one end (at least).
INCOMPLETE_REMOVED_FRACTION = 0.2
#: Lung-bearing slices a ``partial_coverage`` coverage crop removes at one end (a clipped margin).
CLIPPED_LUNG_SLICES = (1, 2)


@dataclass(frozen=True)
class TrustCase:
    """One series that must be refused.

    Attributes:
        name: short identifier (``"neck_only"``).
        volume: the series (HU int16 ``[N, H, W]``).
        expected_reasons: reason codes (subset of ``REASON_CODES``, never empty) of which
            at least one must appear in the answer.
    """

    name: str
    volume: CTVolume
    expected_reasons: frozenset[str]

    def __post_init__(self) -> None:
        unknown = sorted(set(self.expected_reasons) - REASON_CODES)
        if not self.expected_reasons or unknown:
            raise ConfigError(
                f"TrustCase {self.name!r}: expected_reasons={sorted(self.expected_reasons)}; expected a non-empty "
                f"subset of {sorted(REASON_CODES)}"
            )


def crop_cases(volume: CTVolume) -> tuple[TrustCase, TrustCase]:
    """The ``neck_only`` (top 15 % of slices) and ``base_only`` (lowest 40 %) crops of a chest series."""
    neck = crop_slices(volume, *NECK_ONLY_FRACTIONS)
    base = crop_slices(volume, *BASE_ONLY_FRACTIONS)
    return (
        TrustCase("neck_only", neck, frozenset(
            {"no_lungs", "too_few_lung_slices", "implausible_lung_volume", "lungs_incomplete"})),
        TrustCase("base_only", base, frozenset(
            {"lungs_incomplete", "implausible_lung_volume", "too_few_lung_slices"})),
    )


@dataclass(frozen=True)
class CoverageCrop:
    """One crop of a chest series at one end, with the answer it must get.

    Attributes:
        name: ``"<end>_<k>_slice"`` (the last k lung-bearing slices removed) or
            ``"<end>_<p>pct"`` (at least p % of the lung volume removed).
        volume: the cropped series (HU int16 ``[N', H, W]``).
        end: ``"inferior"`` (slices removed from slice 0 up) or ``"superior"`` (from the top).
        removed_fraction: fraction (0..1) of the whole series' lung volume outside the crop,
            from the lung area profile the crop was made with.
        expected_code: ``"lungs_incomplete"`` (must be refused with that reason) or
            ``"partial_coverage"`` (must be answered, with that warning).
    """

    name: str
    volume: CTVolume
    end: str
    removed_fraction: float
    expected_code: str

    @property
    def assessable(self) -> bool:
        """True when the crop must be answered (a clipped margin), False when refused."""
        return self.expected_code == "partial_coverage"


def _keep(volume: CTVolume, start: int, stop: int) -> CTVolume:
    """Slices ``start .. stop - 1`` through :func:`crop_slices` (exact for integer bounds)."""
    n = volume.num_slices
    return crop_slices(volume, start / n, stop / n)


def coverage_crops(
    volume: CTVolume, lung_area_mm2: np.ndarray, removed_fraction: float = INCOMPLETE_REMOVED_FRACTION,
    clipped_slices: tuple[int, ...] = CLIPPED_LUNG_SLICES,
) -> tuple[CoverageCrop, ...]:
    """The coverage crops of a chest series whose lungs lie inside it, per end in
    :data:`COVERAGE_ENDS`: for each ``k`` in ``clipped_slices`` the scan ends ``k``
    lung-bearing slices short of the lungs' end (``partial_coverage``), then the smallest
    crop that removes at least ``removed_fraction`` of the lung volume (``lungs_incomplete``).

    Args:
        volume: the whole series (HU int16 ``[N, H, W]``, inferior -> superior).
        lung_area_mm2: float ``[N]``, the series' own lung area per slice (mm^2): the
            removed fractions are measured on it.
        removed_fraction: in (0, 1), the lung fraction the refused crops remove at least.
        clipped_slices: how many lung-bearing slices the answered crops remove (each >= 1).

    Raises:
        ConfigError: ``lung_area_mm2`` is not ``[N]`` finite areas >= 0 with lung on more
            slices than ``max(clipped_slices)``, or the fraction or slice counts are out of range.
    """
    area = np.asarray(lung_area_mm2, dtype=np.float64)
    n = volume.num_slices
    lung = np.flatnonzero(area > 0) if area.shape == (n,) and np.all(np.isfinite(area)) else np.empty(0, int)
    need = max(clipped_slices, default=0)
    if lung.size <= need or np.any(area < 0):
        raise ConfigError(f"coverage_crops: lung_area_mm2 has shape {area.shape} with lung on {lung.size} slices; "
                          f"expected [{n}] areas >= 0 mm^2 with lung on more than {need} slices")
    if not (isinstance(removed_fraction, (int, float)) and math.isfinite(removed_fraction)
            and 0.0 < removed_fraction < 1.0):
        raise ConfigError(f"coverage_crops: removed_fraction={removed_fraction!r}; expected a number in (0, 1)")
    if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in clipped_slices):
        raise ConfigError(f"coverage_crops: clipped_slices={clipped_slices!r}; expected integers >= 1")
    total = float(area.sum())
    first, last = int(lung[0]), int(lung[-1])
    below = np.cumsum(area) / total  # lung fraction in slices 0..i
    above = np.cumsum(area[::-1]) / total  # lung fraction in slices N-1-i..N-1
    bounds = {
        "inferior": [(f"{k}_slice", first + k, n) for k in clipped_slices]
        + [(f"{round(100 * removed_fraction)}pct", int(np.searchsorted(below, removed_fraction)) + 1, n)],
        "superior": [(f"{k}_slice", 0, last + 1 - k) for k in clipped_slices]
        + [(f"{round(100 * removed_fraction)}pct", 0, n - 1 - int(np.searchsorted(above, removed_fraction)))],
    }
    crops = []
    for end in COVERAGE_ENDS:
        for label, start, stop in bounds[end]:
            code = "lungs_incomplete" if label.endswith("pct") else "partial_coverage"
            crops.append(CoverageCrop(f"{end}_{label}", _keep(volume, start, stop), end,
                                      1.0 - float(area[start:stop].sum()) / total, code))
    return tuple(crops)


def trust_cases(size: int = 128, num_slices: int = 60, seed: int = 0) -> tuple[TrustCase, ...]:
    """Every synthetic case a triage must refuse, in a fixed order (13 cases).

    Args:
        size: H = W pixels of every volume (>= 16).
        num_slices: N slices of the chest phantom and the non-chest volumes (>= 2; the
            crops keep 15 % and 40 % of them).
        seed: seeds the chest phantom, the non-chest patients and the noise volume.
    """
    chest = make_phantom(num_slices=num_slices, size=size, covid=False, seed=seed).volume
    z, y, x = chest.spacing_mm
    neck, base = crop_cases(chest)
    return (
        TrustCase("abdomen_bowel_gas", make_abdomen(num_slices, size, seed), frozenset({"no_lungs"})),
        TrustCase("head", make_head(num_slices, size, seed), frozenset({"no_lungs"})),
        TrustCase("thighs", make_thighs(num_slices, size, seed), frozenset({"no_lungs"})),
        neck,
        base,
        TrustCase("rotated_90", rotate_in_plane(chest, 1), frozenset({"orientation"})),
        TrustCase("flipped_front_back", flip_anterior_posterior(chest), frozenset({"orientation"})),
        TrustCase("hu_plus_1024", shift_hu(chest, 1024), frozenset({"hu_calibration"})),
        TrustCase("hu_minus_1024", shift_hu(chest, -1024), frozenset({"hu_calibration"})),
        TrustCase("all_air", all_air(chest), frozenset({"no_body", "no_lungs", "hu_calibration"})),
        TrustCase("noise", uniform_noise(chest, seed=seed),
                  frozenset({"hu_calibration", "no_body", "no_lungs"})),
        # spacings a scanner could write but no adult chest CT has; physically impossible ones
        # (100 mm pixels, 1e9 mm slices) are refused as bad requests before any check
        TrustCase("pixel_spacing_9mm", with_spacing(chest, (z, 9.0, 9.0)), frozenset({"implausible_spacing"})),
        TrustCase("slice_spacing_40mm", with_spacing(chest, (40.0, y, x)), frozenset({"implausible_spacing"})),
    )
