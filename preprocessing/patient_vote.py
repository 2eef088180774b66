"""Patient-level verdict (paper 002's vote), lung volume and lesion burden.

* :func:`patient_vote`: a patient is COVID-19 positive when the fraction of selected
  (open-lung) slices whose probability is at least ``VoteConfig.slice_threshold``
  (0.5) is at least ``VoteConfig.positive_fraction`` (0.30, paper 002's text; the
  authors' released code uses 0.10). The comparison is done on counts
  (``n_positive >= positive_fraction * n_selected``, with a 1e-9 tolerance) so that
  e.g. 3 of 10 slices is exactly 30 % regardless of float rounding.
* :func:`lung_volume_ml`: lung pixels x pixel area (mm^2) x slice distance (mm) / 1000.
* :func:`lesion_burden_percent`: infection pixels inside the lung over lung pixels, in %.

Masks are bool (or 0/1) ``[N, H, W]``; probabilities ``[K]`` or ``[K, 1]`` in [0, 1]; numpy
arrays or torch tensors on any device (the counts run with torch where the data are).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from covidct.errors import ConfigError, VolumeError
from covidct.preprocessing.config import VoteConfig
from covidct.preprocessing.devices import ArrayLike, as_tensor

_EPS = 1e-9


@dataclass(frozen=True)
class VoteResult:
    """Outcome of the patient vote.

    Attributes:
        positive: True when ``positive_fraction >= threshold`` (COVID-19 positive).
        positive_fraction: ``n_positive / n_selected`` (0..1).
        threshold: the configured ``VoteConfig.positive_fraction``.
        n_selected: number of slices voted on (the selected, open-lung slices).
        n_positive: slices with probability >= ``VoteConfig.slice_threshold``.
    """

    positive: bool
    positive_fraction: float
    threshold: float
    n_selected: int
    n_positive: int


def _check_vote_config(config: VoteConfig) -> None:
    for name in ("positive_fraction", "slice_threshold"):
        value = getattr(config, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ConfigError(f"VoteConfig.{name}={value!r}; expected a number in [0, 1]")


def slice_probabilities(probabilities: ArrayLike) -> torch.Tensor:
    """Probabilities ``[K]`` or ``[K, 1]`` as a float64 tensor ``[K]`` on their device, checked finite, in [0, 1]."""
    p = as_tensor(probabilities).to(torch.float64)
    if p.ndim == 2 and p.shape[1] == 1:
        p = p[:, 0]
    if p.ndim != 1 or p.numel() == 0:
        raise VolumeError(
            f"patient vote: probabilities have shape {tuple(p.shape)}; expected [K] or [K, 1] with K >= 1"
        )
    finite = torch.isfinite(p)
    if not bool(finite.all()):
        raise VolumeError(
            f"patient vote: {int((~finite).sum())} of {p.numel()} probabilities are not finite; "
            "expected finite values in [0, 1]"
        )
    lo, hi = float(p.min()), float(p.max())
    if lo < 0.0 or hi > 1.0:
        raise VolumeError(f"patient vote: probabilities range {lo:g}..{hi:g}; expected values in [0, 1]")
    return p


def patient_vote(probabilities: ArrayLike, config: VoteConfig = VoteConfig()) -> VoteResult:
    """Vote over per-slice COVID-19 probabilities ``[K]`` / ``[K, 1]`` of the selected slices."""
    _check_vote_config(config)
    p = slice_probabilities(probabilities)
    n_selected = int(p.numel())
    n_positive = int(torch.count_nonzero(p >= config.slice_threshold))
    positive = n_positive >= config.positive_fraction * n_selected - _EPS
    return VoteResult(
        positive=bool(positive),
        positive_fraction=n_positive / n_selected,
        threshold=float(config.positive_fraction),
        n_selected=n_selected,
        n_positive=n_positive,
    )


def _as_mask(mask: ArrayLike, name: str) -> torch.Tensor:
    values = as_tensor(mask)
    if values.is_complex():
        raise VolumeError(f"{name} has dtype {values.dtype}; expected a bool or 0/1 mask")
    return values if values.dtype == torch.bool else values != 0


def lung_volume_ml(lung_mask: ArrayLike, pixel_area_mm2: float, slice_mm: float) -> float:
    """Lung volume in ml: ``count(lung) * pixel_area_mm2 * slice_mm / 1000``.

    Args:
        lung_mask: bool or 0/1 mask ``[N, H, W]`` (any shape is accepted; numpy or a tensor).
        pixel_area_mm2: area of one mask pixel in mm^2 (at the mask's resolution).
        slice_mm: distance between slices in mm.
    """
    for name, value in (("pixel_area_mm2", pixel_area_mm2), ("slice_mm", slice_mm)):
        if not (math.isfinite(float(value)) and float(value) > 0):
            raise VolumeError(f"lung_volume_ml: {name}={value!r}; expected a finite value > 0")
    count = int(torch.count_nonzero(_as_mask(lung_mask, "lung_mask")))
    return count * float(pixel_area_mm2) * float(slice_mm) / 1000.0


def lesion_burden_percent(infection_mask: ArrayLike, lung_mask: ArrayLike) -> float:
    """Infection volume inside the lung over lung volume, in percent (0 when there is no lung).

    Both masks ``[N, H, W]`` of one shape and resolution; infection outside the lung is ignored.
    """
    infection = _as_mask(infection_mask, "infection_mask")
    lung = _as_mask(lung_mask, "lung_mask")
    if infection.shape != lung.shape:
        raise VolumeError(
            f"lesion_burden_percent: infection mask shape {tuple(infection.shape)} differs from "
            f"lung mask shape {tuple(lung.shape)}; expected equal shapes"
        )
    lung_count = int(torch.count_nonzero(lung))
    if lung_count == 0:
        return 0.0
    return 100.0 * int(torch.count_nonzero(infection & lung.to(infection.device))) / lung_count
