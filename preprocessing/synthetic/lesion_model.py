"""Synthetic COVID-19-like lesions: placement in a lung mask and HU rendering.

Shared by the synthetic phantom (:mod:`covidct.preprocessing.synthetic.phantom`) and by lesion insertion
into real normal series (:mod:`covidct.preprocessing.synthetic.lesion_insertion`); both give the lesion
sizes in voxels, so this module knows nothing about mm or image size.

A lesion is a 3-D ellipsoid (semi-axes in slices, rows, columns) whose surface is
perturbed by a smooth random field, clipped to the lung mask. Its centre is placed
subpleurally (about one in-plane radius from the lung border, preferring lateral and
posterior lung), alternately in the two lungs (bilateral). Kinds:

- ``ggo``: ground-glass opacity, target HU drawn from ``ggo_hu`` (-620..-420 HU);
- ``consolidation``: target HU from ``consolidation_hu`` (-60..+20 HU);
- ``mixed``: ground glass with a consolidated core (normalised radius < 0.45).

Rendering per voxel (HU): ``lesion = target + texture_hu * f + keep * clip(orig - ref,
-100, 100) + N(0, noise_hu)`` with ``f`` a smooth random field in [-1, 1] and ``ref`` the
median lung HU; the written value is ``orig + w * (lesion - orig)`` with the weight
``w`` rising from ``edge_weight`` (0.8) at the lesion border to 1 inside (``orig``
capped at ``max_original_hu``). Every voxel that is written is in the returned mask,
and only lung voxels are written: voxels outside the mask keep their exact original HU.

Volumes are int16 HU ``[N, H, W]``; masks bool ``[N, H, W]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from covidct.errors import ConfigError, VolumeError

LESION_KINDS = ("ggo", "consolidation", "mixed")


@dataclass(frozen=True)
class LesionConfig:
    """How many lesions, of which kind and HU (see the module docstring).

    n_lesions: inclusive (min, max) lesions per patient.
    kind_weights: relative probability of ``ggo``, ``consolidation``, ``mixed``.
    open_fraction: a lesion centre lies on a slice whose lung (that side) has at least
        this fraction of the largest lung cross-section (open-lung slices).
    max_original_hu: original voxels denser than this are mixed as if they were this
        dense (HU), so a lesion over a calcification or rib edge stays in range.
    """

    n_lesions: tuple[int, int] = (3, 8)
    ggo_hu: tuple[float, float] = (-620.0, -420.0)
    consolidation_hu: tuple[float, float] = (-60.0, 20.0)
    kind_weights: tuple[float, float, float] = (0.5, 0.2, 0.3)
    texture_hu: float = 40.0
    keep_fraction: float = 0.3
    noise_hu: float = 0.0
    edge_weight: float = 0.8
    open_fraction: float = 0.3
    max_original_hu: float = 50.0

    def check(self) -> None:
        lo, hi = self.n_lesions
        if not 0 <= lo <= hi:
            raise ConfigError(f"LesionConfig.n_lesions={self.n_lesions}; expected 0 <= min <= max")
        for name in ("ggo_hu", "consolidation_hu"):
            a, b = getattr(self, name)
            if a > b:
                raise ConfigError(f"LesionConfig.{name}={(a, b)}; expected (low, high) HU")
        if len(self.kind_weights) != 3 or min(self.kind_weights) < 0 or sum(self.kind_weights) <= 0:
            raise ConfigError(
                f"LesionConfig.kind_weights={self.kind_weights}; expected three weights >= 0, sum > 0"
            )
        if not 0.0 < self.edge_weight <= 1.0:
            raise ConfigError(f"LesionConfig.edge_weight={self.edge_weight}; expected in (0, 1]")


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], wavelength: np.ndarray,
                  terms: int = 6) -> np.ndarray:
    """A smooth random field in [-1, 1] on a box ``shape``.

    Sum of ``terms`` separable products of 1-D random cosines (only 1-D cosines are
    evaluated, so large boxes stay cheap); ``wavelength`` is the typical wavelength per
    axis in voxels (z, y, x). Standard deviation about 0.5 before clipping.
    """
    field = np.zeros(shape, dtype=np.float32)
    for _ in range(terms):
        factors = []
        for axis, size in enumerate(shape):
            k = rng.normal() * 2 * np.pi / max(float(wavelength[axis]), 1.0)
            factors.append(np.cos(k * np.arange(size) + rng.uniform(0, 2 * np.pi)).astype(np.float32))
        field += factors[0][:, None, None] * factors[1][None, :, None] * factors[2][None, None, :]
    # Each product has variance 1/8: scale the sum to a standard deviation of 0.5.
    return np.clip(field * np.float32(np.sqrt(2.0 / terms)), -1.0, 1.0)


def _split_column(lung: np.ndarray) -> int:
    """The column splitting the two lungs (centre of the lung mask's column extent)."""
    cols = np.flatnonzero(lung.any(axis=(0, 1)))
    return int((cols[0] + cols[-1] + 1) // 2)


def _pick_center(rng: np.random.Generator, lung_slice: np.ndarray, radius: float,
                 side: int, split: int) -> tuple[int, int] | None:
    """A subpleural centre (row, col) on one slice and side; ``None`` if that side is empty."""
    region = lung_slice.copy()
    if side == 0:
        region[:, split:] = False
    else:
        region[:, :split] = False
    if not region.any():
        return None
    dist = ndimage.distance_transform_edt(region)
    candidates = (dist >= 0.4 * radius) & (dist <= 1.0 * radius)
    if not candidates.any():
        candidates = dist >= 0.5 * dist.max()
    rows, cols = np.nonzero(candidates)
    # Prefer lateral and posterior lung (larger weight away from the split, lower rows).
    lateral = np.abs(cols - split) / max(1, lung_slice.shape[1] / 2)
    posterior = rows / max(1, lung_slice.shape[0])
    weight = 0.2 + lateral + 0.5 * posterior
    index = rng.choice(rows.size, p=weight / weight.sum())
    return int(rows[index]), int(cols[index])


def add_lesions(hu: np.ndarray, lung: np.ndarray, rng: np.random.Generator, config: LesionConfig,
                radius_px: tuple[float, float], radius_slices: tuple[float, float]) -> np.ndarray:
    """Render lesions into ``hu`` in place; return the exact lesion mask.

    Args:
        hu: int16 HU ``[N, H, W]``, modified in place (lesion voxels only).
        lung: bool ``[N, H, W]``; lesions are clipped to it.
        rng: random generator (the only source of randomness).
        config: lesion kinds, HU and counts.
        radius_px: (min, max) in-plane semi-axis in pixels.
        radius_slices: (min, max) semi-axis along the slices, in slices.

    Returns:
        bool ``[N, H, W]``: voxels changed by a lesion (a subset of ``lung``).
    """
    config.check()
    if hu.dtype != np.int16 or hu.ndim != 3 or lung.shape != hu.shape:
        raise VolumeError(
            f"add_lesions: hu must be int16 [N, H, W] and lung bool of the same shape; "
            f"got {hu.dtype} {hu.shape} and {lung.shape}"
        )
    lesion = np.zeros(hu.shape, dtype=bool)
    n_lo, n_hi = config.n_lesions
    count = int(rng.integers(n_lo, n_hi + 1))
    if count == 0 or not lung.any():
        return lesion
    n, h, w = hu.shape
    split = _split_column(lung)
    area = np.stack([lung[:, :, :split].sum(axis=(1, 2)), lung[:, :, split:].sum(axis=(1, 2))])
    step = max(1, n // 32)  # the median lung HU from every step-th slice is plenty
    if not lung[::step].any():
        step = 1
    ref = float(np.median(hu[::step][lung[::step]]))
    weights = np.asarray(config.kind_weights, dtype=float)
    first_side = int(rng.integers(0, 2))
    for i in range(count):
        side = (first_side + i) % 2
        if area[side].max() == 0:
            side = 1 - side
        open_slices = np.flatnonzero(area[side] >= config.open_fraction * area[side].max())
        z = int(rng.choice(open_slices))
        r_in = rng.uniform(*radius_px, size=2) * rng.uniform(0.8, 1.2, size=2)
        r_z = float(rng.uniform(*radius_slices))
        center = _pick_center(rng, lung[z], float(r_in.mean()), side, split)
        if center is None:
            continue
        kind = LESION_KINDS[int(rng.choice(3, p=weights / weights.sum()))]
        semi = np.array([max(r_z, 0.5), max(r_in[0], 1.0), max(r_in[1], 1.0)])
        _render_one(hu, lung, lesion, rng, config, (z, *center), semi, kind, ref)
    return lesion


def _render_one(hu: np.ndarray, lung: np.ndarray, lesion: np.ndarray, rng: np.random.Generator,
                config: LesionConfig, center: tuple[int, int, int], semi: np.ndarray, kind: str,
                ref: float) -> None:
    """Write one perturbed ellipsoid lesion (semi-axes ``semi`` in voxels, z/y/x)."""
    reach = np.ceil(semi * 1.3).astype(int)
    lo = np.maximum(np.asarray(center) - reach, 0)
    hi = np.minimum(np.asarray(center) + reach + 1, hu.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    shape = tuple(int(b - a) for a, b in zip(lo, hi))
    grids = [(np.arange(a, b, dtype=np.float32) - c) / s
             for a, b, c, s in zip(lo, hi, center, semi)]
    rho = np.sqrt(grids[0][:, None, None] ** 2 + grids[1][None, :, None] ** 2
                  + grids[2][None, None, :] ** 2)
    bumps = _smooth_field(rng, shape, semi * 1.5)
    rho = rho / (1.0 + 0.25 * bumps)
    inside = (rho < 1.0) & lung[box]
    if not inside.any():
        return
    if kind == "consolidation":
        target = np.full(shape, rng.uniform(*config.consolidation_hu), dtype=np.float32)
    else:
        target = np.full(shape, rng.uniform(*config.ggo_hu), dtype=np.float32)
        if kind == "mixed":
            target[rho < 0.45] = rng.uniform(*config.consolidation_hu)
    texture = _smooth_field(rng, shape, np.maximum(semi * 0.5, 2.0))
    orig = hu[box].astype(np.float32)
    value = (target + config.texture_hu * texture
             + config.keep_fraction * np.clip(orig - ref, -100.0, 100.0))
    if config.noise_hu > 0:
        value += rng.normal(0.0, config.noise_hu, size=shape).astype(np.float32)
    weight = config.edge_weight + (1.0 - config.edge_weight) * np.clip((1.0 - rho) / 0.25, 0, 1)
    # Dense voxels the lung mask may hold (calcification, rib edge) count as soft tissue.
    orig = np.minimum(orig, np.float32(config.max_original_hu))
    new = orig + weight * (value - orig)
    region = hu[box]
    region[inside] = np.clip(np.rint(new[inside]), -1024, 3071).astype(np.int16)
    lesion[box] |= inside
