"""Synthetic series that a chest CT triage must answer with "not assessable".

:func:`trust_cases` builds them from one healthy chest phantom
(:func:`preprocessing.synthetic.phantom.make_phantom`, default adult geometry), the
non-chest generators (:mod:`preprocessing.synthetic.non_chest`) and the transforms of
:mod:`preprocessing.synthetic.case_transforms`. Each :class:`TrustCase` names the
reasons of which at least one must appear in the refusal; the reason codes are
``REASON_CODES``:

==========================  ====================================================
``no_body``                 no patient in the field of view
``no_lungs``                the scan holds no lungs (another body region)
``lungs_incomplete``        the lungs are cut off at the top or bottom of the scan
``too_few_lung_slices``     too few slices show lung to judge the patient
``implausible_lung_volume`` the lung volume is far from an adult's
``hu_calibration``          the HU values are not calibrated (air is not -1000 HU)
``implausible_spacing``     the voxel spacing is not that of a CT series
``orientation``             the slices are turned or mirrored
==========================  ====================================================

:func:`crop_cases` makes the two cropped cases (neck only, lung bases only) of any
volume, e.g. a real series.
"""

from __future__ import annotations

from dataclasses import dataclass

from covidct.errors import ConfigError
from preprocessing.synthetic.case_transforms import (
    all_air,
    crop_slices,
    flip_anterior_posterior,
    rotate_in_plane,
    shift_hu,
    uniform_noise,
    with_spacing,
)
from preprocessing.synthetic.non_chest import make_abdomen, make_head, make_thighs
from preprocessing.synthetic.phantom import make_phantom
from preprocessing.volume import CTVolume

__all__ = ["BASE_ONLY_FRACTIONS", "NECK_ONLY_FRACTIONS", "REASON_CODES", "TrustCase", "crop_cases", "trust_cases"]

REASON_CODES = frozenset({
    "no_body", "no_lungs", "lungs_incomplete", "too_few_lung_slices", "implausible_lung_volume",
    "hu_calibration", "implausible_spacing", "orientation",
})
#: (start, stop) slice fractions of the neck-only crop: the top 15 % of the slices.
NECK_ONLY_FRACTIONS = (0.85, 1.0)
#: (start, stop) slice fractions of the base-only crop: the lowest 40 % of the slices.
BASE_ONLY_FRACTIONS = (0.0, 0.4)


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
