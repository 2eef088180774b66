"""Small pure transforms of a :class:`~covidct.preprocessing.volume.CTVolume` that turn a valid
chest series into one a triage must refuse (cropped, turned, mis-calibrated, mis-scaled)
or into a volume with no anatomy at all.

Every function returns a new volume that shares no array with its input, which stays
unchanged. Axis order is
``[N, H, W]`` (slices ascending from inferior to superior, row 0 anterior, column 0 the
patient's right); HU for intensities, mm for spacing and positions. The result gets a
new ``series_key`` derived from the input's and the transform, so results of a
transformed series never share a key with the original.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from covidct.errors import ConfigError
from covidct.preprocessing.volume import CTVolume, make_series_key

__all__ = ["all_air", "crop_slices", "drop_slices", "flip_anterior_posterior", "rotate_in_plane", "shift_hu",
           "uniform_noise", "with_spacing"]

INT16_MIN, INT16_MAX = -32768, 32767


def _derived(volume: CTVolume, transform: str, **changes: object) -> CTVolume:
    """A copy of ``volume`` with ``changes``; never shares an array with the input."""
    for name in ("hu", "positions_mm"):
        value = changes.get(name, getattr(volume, name))
        if np.shares_memory(value, getattr(volume, name)):
            changes[name] = np.array(value, copy=True)
    key = make_series_key(volume.series_key, transform)
    return dataclasses.replace(volume, series_key=key, **changes)


def crop_slices(volume: CTVolume, start_fraction: float, stop_fraction: float) -> CTVolume:
    """Keep slices ``round(start * N)`` to ``round(stop * N)`` (stop excluded, at least one).

    Slices are ordered inferior -> superior, so ``(0.85, 1.0)`` is the top 15 % (the neck
    end of a chest scan) and ``(0.0, 0.4)`` the lowest 40 % (the lung bases). Positions
    and source names of the kept slices are kept; spacing is unchanged.

    Raises:
        ConfigError: fractions outside ``0 <= start < stop <= 1``.
    """
    if not (math.isfinite(start_fraction) and math.isfinite(stop_fraction)
            and 0.0 <= start_fraction < stop_fraction <= 1.0):
        raise ConfigError(
            f"crop_slices: start_fraction={start_fraction!r}, stop_fraction={stop_fraction!r}; "
            f"expected 0 <= start < stop <= 1"
        )
    n = volume.num_slices
    start = min(round(start_fraction * n), n - 1)
    stop = max(round(stop_fraction * n), start + 1)
    names = volume.source_names[start:stop] if volume.source_names else ()
    return _derived(volume, f"crop:{start}:{stop}", hu=volume.hu[start:stop],
                    positions_mm=volume.positions_mm[start:stop], source_names=names)


def drop_slices(volume: CTVolume, start: int, count: int) -> CTVolume:
    """Remove slices ``start .. start + count - 1`` (dropped files, a missing range): the
    kept slices keep their positions and source names, so the gap shows in
    ``positions_mm``; spacing is unchanged.

    Raises:
        ConfigError: the range is empty or does not leave slices on both sides.
    """
    n = volume.num_slices
    if not (isinstance(start, int) and isinstance(count, int) and count >= 1 and start >= 1 and start + count < n):
        raise ConfigError(
            f"drop_slices: start={start!r}, count={count!r}; expected 1 <= start, count >= 1 and start + count < {n}"
        )
    keep = np.r_[0:start, start + count:n]
    names = tuple(volume.source_names[i] for i in keep) if volume.source_names else ()
    return _derived(volume, f"drop:{start}:{count}", hu=volume.hu[keep], positions_mm=volume.positions_mm[keep],
                    source_names=names)


def rotate_in_plane(volume: CTVolume, quarter_turns: int) -> CTVolume:
    """Rotate every slice by ``quarter_turns`` x 90 degrees (counter-clockwise as displayed,
    ``numpy.rot90`` on axes (1, 2)); an odd count swaps the row and column spacing.

    Raises:
        ConfigError: ``quarter_turns`` is not an integer.
    """
    if isinstance(quarter_turns, bool) or int(quarter_turns) != quarter_turns:
        raise ConfigError(f"rotate_in_plane: quarter_turns={quarter_turns!r}; expected an integer")
    k = int(quarter_turns) % 4
    z, y, x = volume.spacing_mm
    spacing = (z, x, y) if k % 2 else (z, y, x)
    hu = np.ascontiguousarray(np.rot90(volume.hu, k=k, axes=(1, 2)))
    return _derived(volume, f"rot90:{k}", hu=hu, spacing_mm=spacing)


def flip_anterior_posterior(volume: CTVolume) -> CTVolume:
    """Mirror the rows of every slice (anterior <-> posterior: the patient lies prone as displayed)."""
    return _derived(volume, "flip-ap", hu=np.ascontiguousarray(volume.hu[:, ::-1, :]))


def shift_hu(volume: CTVolume, offset: int) -> CTVolume:
    """Add ``offset`` HU to every voxel (a wrong rescale intercept), clipped to int16
    [-32768, 32767].

    Raises:
        ConfigError: ``offset`` is not an integer.
    """
    if isinstance(offset, bool) or int(offset) != offset:
        raise ConfigError(f"shift_hu: offset={offset!r}; expected an integer number of HU")
    hu = np.clip(volume.hu.astype(np.int32) + int(offset), INT16_MIN, INT16_MAX).astype(np.int16)
    return _derived(volume, f"shift:{int(offset)}", hu=hu)


def with_spacing(volume: CTVolume, spacing_mm: tuple[float, float, float]) -> CTVolume:
    """The same voxels with another (z, y, x) spacing in mm (a wrong header).

    Positions are rescaled about the first slice so that their steps follow the new slice
    spacing: ``p0 + (p - p0) * z_new / z_old``.

    Raises:
        ConfigError: not three finite spacings > 0 mm.
    """
    values = tuple(float(s) for s in spacing_mm)
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise ConfigError(f"with_spacing: spacing_mm={spacing_mm!r}; expected three finite mm values > 0 (z, y, x)")
    positions = volume.positions_mm
    positions = positions[0] + (positions - positions[0]) * (values[0] / volume.spacing_mm[0])
    return _derived(volume, "spacing:" + ",".join(repr(s) for s in values), spacing_mm=values,
                    positions_mm=positions)


def all_air(like: CTVolume) -> CTVolume:
    """A volume of the shape, spacing and positions of ``like`` holding only air (-1000 HU)."""
    return _derived(like, "all-air", hu=np.full(like.hu.shape, -1000, dtype=np.int16))


def uniform_noise(like: CTVolume, seed: int, low: int = -1024, high: int = 3071) -> CTVolume:
    """Seeded uniform integer noise in ``[low, high]`` HU (both included), shaped like ``like``.

    Raises:
        ConfigError: not ``-32768 <= low <= high <= 32767``.
    """
    if not INT16_MIN <= low <= high <= INT16_MAX:
        raise ConfigError(f"uniform_noise: low={low!r}, high={high!r}; expected -32768 <= low <= high <= 32767")
    rng = np.random.default_rng(seed)
    hu = rng.integers(int(low), int(high), size=like.hu.shape, endpoint=True, dtype=np.int16)
    return _derived(like, f"noise:{seed}:{low}:{high}", hu=hu)
