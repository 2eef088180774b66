"""Synthetic chest CT phantom with exact lung and lesion masks.

:func:`make_phantom` draws one seeded patient (see :mod:`covidct.preprocessing.synthetic.phantom_anatomy`
for the anatomy and :mod:`covidct.preprocessing.synthetic.lesion_model` for the lesions) and returns a
:class:`Phantom`: the HU volume int16 ``[N, H, W]`` (slices ascending from the lung base
to above the apex), the exact lung mask (lesions included, trachea and main bronchi
excluded), the trachea and main bronchi (``airway_mask``), the exact lesion mask and
per-slice labels.

Randomness: one ``numpy.random.SeedSequence(seed)`` spawns independent generators for
the anatomy, the lesions and the noise, so ``make_phantom(seed=s, covid=False)`` is the
same patient as ``make_phantom(seed=s, covid=True)`` without the lesions.

The anatomy is drawn in normalised coordinates (fractions of the slice size and of the
slice count), so the spacing decides how large the patient is in mm. By default
(``spacing_mm=None``, see :func:`default_spacing_mm`) the slice covers an adult field of
view of ``FIELD_OF_VIEW_MM`` (360 mm: pixel spacing 360 / size mm, a body about 320 mm
wide and 245 mm deep) and the N slices, each ``SCAN_EXTENT_MM / N`` thick, cover
``SCAN_EXTENT_MM`` (310 mm) from below the diaphragm domes to above the lung apices:
the slices showing lung span 248-260 mm and the lungs hold 3.5-3.9 L (trachea and main
bronchi: 41-47 ml) for every size from 64 to 512 pixels and 35 to 406 slices (seeds
0-2). An explicit ``spacing_mm`` only sets the volume's metadata (the same pixels, other
mm).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from covidct.errors import ConfigError, VolumeError
from covidct.preprocessing.synthetic.lesion_model import LesionConfig, add_lesions
from covidct.preprocessing.synthetic.phantom_anatomy import (
    PhantomConfig,
    draw_geometry,
    render_slice,
    torso_template,
)
from covidct.preprocessing.volume import CTVolume, make_series_key

__all__ = ["FIELD_OF_VIEW_MM", "SCAN_EXTENT_MM", "LesionConfig", "Phantom", "PhantomConfig", "add_noise",
           "default_spacing_mm", "make_phantom", "slice_labels_of"]

MIN_SLICES = 2
MIN_SIZE = 16
HU_MIN, HU_MAX = -1024, 3071
#: Slices of Gaussian noise drawn per phantom (see :func:`add_noise`).
NOISE_BANK_SLICES = 8
#: In-plane field of view of the default geometry (mm): pixel spacing = FOV / size.
FIELD_OF_VIEW_MM = 360.0
#: Cranio-caudal extent of the default geometry (mm): slice spacing = extent / num_slices.
SCAN_EXTENT_MM = 310.0


@dataclass(frozen=True)
class Phantom:
    """A CT volume with exact ground truth.

    Attributes:
        volume: the CT volume (HU int16 ``[N, H, W]``).
        lung_mask: bool ``[N, H, W]``, the lungs (lesions included). Small intrapulmonary
            bronchi (air inside a wall, a few mm) belong to the lungs, as in clinical lung
            segmentations; the trachea and main bronchi do not.
        lesion_mask: bool ``[N, H, W]``, ground-glass/consolidation voxels (inside the lungs).
        slice_labels: uint8 ``[N]``, 1 where the slice holds lesion voxels.
        airway_mask: bool ``[N, H, W]``, the trachea and the two main bronchi (air, -1000 HU),
            disjoint from ``lung_mask``; ``None`` where the airways are not known (real
            series with inserted lesions).
    """

    volume: CTVolume
    lung_mask: np.ndarray
    lesion_mask: np.ndarray
    slice_labels: np.ndarray
    airway_mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        shape = self.volume.hu.shape
        names = ("lung_mask", "lesion_mask") + (("airway_mask",) if self.airway_mask is not None else ())
        for name in names:
            mask = getattr(self, name)
            if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.shape != shape:
                raise VolumeError(
                    f"Phantom.{name} must be bool {shape}; got "
                    f"{getattr(mask, 'dtype', type(mask).__name__)} {getattr(mask, 'shape', '')}"
                )
        labels = self.slice_labels
        if not isinstance(labels, np.ndarray) or labels.dtype != np.uint8 or labels.shape != shape[:1]:
            raise VolumeError(
                f"Phantom.slice_labels must be uint8 [{shape[0]}]; got "
                f"{getattr(labels, 'dtype', type(labels).__name__)} {getattr(labels, 'shape', '')}"
            )
        if self.airway_mask is not None and (self.airway_mask & self.lung_mask).any():
            overlap = int((self.airway_mask & self.lung_mask).sum())
            raise VolumeError(
                f"Phantom.airway_mask must be disjoint from lung_mask; {overlap} voxels are in both"
            )


def slice_labels_of(lesion_mask: np.ndarray) -> np.ndarray:
    """uint8 ``[N]``: 1 where slice ``i`` of a bool ``[N, H, W]`` mask has any voxel."""
    return lesion_mask.any(axis=(1, 2)).astype(np.uint8)


def default_spacing_mm(num_slices: int, size: int) -> tuple[float, float, float]:
    """(z, y, x) mm of the default adult geometry: ``SCAN_EXTENT_MM / num_slices`` between
    slices and ``FIELD_OF_VIEW_MM / size`` in-plane (a 64-pixel, 35-slice phantom:
    5.625 mm pixels, 8.86 mm slices; 512 pixels, 120 slices: 0.703 mm, 2.58 mm)."""
    _check_shape(num_slices, size)
    pixel = FIELD_OF_VIEW_MM / int(size)
    return (SCAN_EXTENT_MM / int(num_slices), pixel, pixel)


def _check_shape(num_slices: int, size: int) -> None:
    if int(num_slices) != num_slices or num_slices < MIN_SLICES:
        raise ConfigError(f"make_phantom: num_slices={num_slices!r}; expected an integer >= {MIN_SLICES}")
    if int(size) != size or size < MIN_SIZE:
        raise ConfigError(f"make_phantom: size={size!r}; expected an integer >= {MIN_SIZE} pixels")


def _check_args(num_slices: int, size: int, spacing_mm: tuple[float, float, float]) -> None:
    _check_shape(num_slices, size)
    if len(spacing_mm) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing_mm):
        raise ConfigError(
            f"make_phantom: spacing_mm={spacing_mm!r}; expected three positive mm values (z, y, x)"
        )


def add_noise(hu: np.ndarray, rng: np.random.Generator, sigma: float) -> None:
    """Add Gaussian noise (``sigma`` HU) in place, clipping to the CT range [-1024, 3071].

    For speed, the noise of each slice is a window at a random offset into a bank of
    ``NOISE_BANK_SLICES`` slices of rounded Gaussian noise (int16), so no slice repeats
    another's noise at the same pixels while only a few slices' worth is drawn.
    """
    if sigma <= 0:
        return
    pixels = hu.shape[1] * hu.shape[2]
    bank = np.rint(rng.standard_normal(NOISE_BANK_SLICES * pixels, dtype=np.float32) * sigma)
    bank = np.clip(bank, -HU_MAX, HU_MAX).astype(np.int16)
    offsets = rng.integers(0, bank.size - pixels + 1, size=hu.shape[0])
    flat = hu.reshape(hu.shape[0], pixels)
    for i, offset in enumerate(offsets):
        row = flat[i]
        row += bank[offset: offset + pixels]
        np.clip(row, HU_MIN, HU_MAX, out=row)


def make_phantom(
    num_slices: int = 120,
    size: int = 512,
    covid: bool = True,
    seed: int = 0,
    spacing_mm: tuple[float, float, float] | None = None,
    config: PhantomConfig | None = None,
) -> Phantom:
    """One synthetic chest CT patient.

    Args:
        num_slices: N, number of axial slices (any N >= 2; 35-406 typical, 1,100 works).
        size: H = W in pixels.
        covid: add ground-glass/consolidation lesions (bilateral, peripheral).
        seed: patient seed; the same seed gives identical arrays.
        spacing_mm: (z, y, x) voxel spacing in mm; ``None`` (default) gives the adult
            geometry of :func:`default_spacing_mm`; an explicit value is metadata only
            (see module docstring).
        config: tissue HU, noise and lesion settings (defaults: :class:`PhantomConfig`).

    Returns:
        :class:`Phantom` with ``volume.source_format == "array"`` and positions
        ``arange(N) * spacing_z`` mm.
    """
    config = config or PhantomConfig()
    if spacing_mm is None:
        spacing_mm = default_spacing_mm(num_slices, size)
    _check_args(num_slices, size, spacing_mm)
    config.lesions.check()
    anatomy_rng, lesion_rng, noise_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    geom = draw_geometry(anatomy_rng, config)
    template, cage = torso_template(geom, config, size)
    n = int(num_slices)
    hu = np.empty((n, size, size), dtype=np.int16)
    lung = np.empty((n, size, size), dtype=bool)
    airway = np.empty((n, size, size), dtype=bool)
    step = 1.0 / (n - 1)
    for i in range(n):
        image, lung[i], airway[i] = render_slice(geom, config, template, cage, i * step, step)
        hu[i] = np.rint(image)
    if covid:
        extent = max(1.0, np.mean([lg.t_apex - lg.t_base for lg in geom.lungs]) * (n - 1))
        lo, hi = config.lesion_radius_frac
        zlo, zhi = config.lesion_z_frac
        lesion = add_lesions(hu, lung, lesion_rng, config.lesions,
                             radius_px=(lo * size, hi * size),
                             radius_slices=(max(0.6, zlo * extent), max(0.8, zhi * extent)))
    else:
        lesion = np.zeros_like(lung)
    add_noise(hu, noise_rng, config.noise_hu)
    spacing = tuple(float(s) for s in spacing_mm)
    volume = CTVolume(
        hu=hu, spacing_mm=spacing, positions_mm=np.arange(n, dtype=np.float64) * spacing[0],
        series_key=make_series_key("phantom", str(seed), str(n), str(size), str(bool(covid))),
        source_format="array",
    )
    return Phantom(volume=volume, lung_mask=lung, lesion_mask=lesion, slice_labels=slice_labels_of(lesion),
                   airway_mask=airway)
