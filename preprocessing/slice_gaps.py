"""Missing slices: gaps between the slice positions of a series, and whether lung lies at them.

A series whose files were dropped (a missing range, a failed transfer) still has the true
positions of the slices it kept. Measuring it as if it were continuous would shorten the
lungs and hide what is missing, so the gaps are found from the positions (mm along the
scan axis, ascending, inferior -> superior): two neighbours more than
``(1 + gap_tolerance)`` x the median spacing apart. A gap with lung on either side of it
(:func:`gaps_at_lung`) may have held lung: the series is not assessable (``slice_gap``).
A gap outside the lungs changes neither the lung volume nor the burden, which count each
lung-bearing slice once with the median spacing (its own thickness), never with the
distance to its neighbour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SliceGap:
    """Slices missing between slice ``index`` and ``index + 1`` (indices into the volume).

    ``start_mm`` / ``end_mm``: the positions of those two slices (mm); ``spacing_mm``:
    the series' median slice spacing (mm).
    """

    index: int
    start_mm: float
    end_mm: float
    spacing_mm: float

    @property
    def width_mm(self) -> float:
        """Distance between the two slices around the gap (mm)."""
        return self.end_mm - self.start_mm

    @property
    def missing_slices(self) -> int:
        """About how many slices of the median spacing are missing (at least 1)."""
        return max(1, round(self.width_mm / self.spacing_mm) - 1)

    def describe(self) -> str:
        """``"between 120 and 140 mm (20 mm, about 9 slices of 2 mm)"``."""
        return (f"between {self.start_mm:.4g} and {self.end_mm:.4g} mm ({self.width_mm:.3g} mm, about "
                f"{self.missing_slices} slices of {self.spacing_mm:.3g} mm)")


def find_gaps(positions_mm: np.ndarray, spacing_mm: float, gap_tolerance: float) -> tuple[SliceGap, ...]:
    """The gaps of ascending ``positions_mm`` ``[N]`` whose neighbours lie more than
    ``(1 + gap_tolerance) * spacing_mm`` apart; empty for fewer than 2 slices."""
    positions = np.asarray(positions_mm, dtype=np.float64).reshape(-1)
    if positions.size < 2 or not np.isfinite(spacing_mm) or spacing_mm <= 0:
        return ()
    limit = (1.0 + gap_tolerance) * spacing_mm
    return tuple(
        SliceGap(int(i), float(positions[i]), float(positions[i + 1]), float(spacing_mm))
        for i in np.flatnonzero(np.diff(positions) > limit)
    )


def gaps_at_lung(gaps: tuple[SliceGap, ...], lung_area_mm2: np.ndarray) -> tuple[SliceGap, ...]:
    """The gaps with lung on the slice before or after them (``lung_area_mm2`` ``[N]``)."""
    area = np.asarray(lung_area_mm2).reshape(-1)
    return tuple(g for g in gaps if area[g.index] > 0 or area[g.index + 1] > 0)
