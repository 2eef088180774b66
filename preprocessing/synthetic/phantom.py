"""Synthetic chest CT phantom with exact lung and lesion masks.

:func:`make_phantom` draws one seeded patient (see :mod:`preprocessing.synthetic.phantom_anatomy`
for the anatomy and :mod:`preprocessing.synthetic.lesion_model` for the lesions) and returns a
:class:`Phantom`: the HU volume int16 ``[N, H, W]`` (slices ascending from the lung base
to above the apex), the exact lung mask (lesions included, trachea and main bronchi
excluded), the exact lesion mask and per-slice labels.

Randomness: one ``numpy.random.SeedSequence(seed)`` spawns independent generators for
the anatomy, the lesions and the noise, so ``make_phantom(seed=s, covid=False)`` is the
same patient as ``make_phantom(seed=s, covid=True)`` without the lesions.

The anatomy is drawn in normalised coordinates (fractions of the slice size and of the
slice count); ``spacing_mm`` only sets the volume's metadata. The defaults (512 pixels
at 0.7 mm, 120 slices at 2 mm) describe a 358 mm field of view and a 240 mm scan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from covidct.errors import ConfigError, VolumeError
from preprocessing.synthetic.lesion_model import LesionConfig, add_lesions
from preprocessing.synthetic.phantom_anatomy import PhantomConfig, draw_geometry, render_slice, torso_template
from preprocessing.volume import CTVolume, make_series_key

__all__ = ["LesionConfig", "Phantom", "PhantomConfig", "make_phantom", "slice_labels_of"]

MIN_SLICES = 2
MIN_SIZE = 16
HU_MIN, HU_MAX = -1024, 3071
#: Slices of Gaussian noise drawn per phantom (see :func:`_add_noise`).
NOISE_BANK_SLICES = 8


@dataclass(frozen=True)
class Phantom:
    """A CT volume with exact ground truth.

    Attributes:
        volume: the CT volume (HU int16 ``[N, H, W]``).
        lung_mask: bool ``[N, H, W]``, the lungs (lesions included).
        lesion_mask: bool ``[N, H, W]``, ground-glass/consolidation voxels (inside the lungs).
        slice_labels: uint8 ``[N]``, 1 where the slice holds lesion voxels.
    """

    volume: CTVolume
    lung_mask: np.ndarray
    lesion_mask: np.ndarray
    slice_labels: np.ndarray

    def __post_init__(self) -> None:
        shape = self.volume.hu.shape
        for name in ("lung_mask", "lesion_mask"):
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


def slice_labels_of(lesion_mask: np.ndarray) -> np.ndarray:
    """uint8 ``[N]``: 1 where slice ``i`` of a bool ``[N, H, W]`` mask has any voxel."""
    return lesion_mask.any(axis=(1, 2)).astype(np.uint8)


def _check_args(num_slices: int, size: int, spacing_mm: tuple[float, float, float]) -> None:
    if int(num_slices) != num_slices or num_slices < MIN_SLICES:
        raise ConfigError(f"make_phantom: num_slices={num_slices!r}; expected an integer >= {MIN_SLICES}")
    if int(size) != size or size < MIN_SIZE:
        raise ConfigError(f"make_phantom: size={size!r}; expected an integer >= {MIN_SIZE} pixels")
    if len(spacing_mm) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing_mm):
        raise ConfigError(
            f"make_phantom: spacing_mm={spacing_mm!r}; expected three positive mm values (z, y, x)"
        )


def _add_noise(hu: np.ndarray, rng: np.random.Generator, sigma: float) -> None:
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
    spacing_mm: tuple[float, float, float] = (2.0, 0.7, 0.7),
    config: PhantomConfig | None = None,
) -> Phantom:
    """One synthetic chest CT patient.

    Args:
        num_slices: N, number of axial slices (any N >= 2; 35-406 typical, 1,100 works).
        size: H = W in pixels.
        covid: add ground-glass/consolidation lesions (bilateral, peripheral).
        seed: patient seed; the same seed gives identical arrays.
        spacing_mm: (z, y, x) voxel spacing in mm (metadata only, see module docstring).
        config: tissue HU, noise and lesion settings (defaults: :class:`PhantomConfig`).

    Returns:
        :class:`Phantom` with ``volume.source_format == "array"`` and positions
        ``arange(N) * spacing_z`` mm.
    """
    config = config or PhantomConfig()
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
    step = 1.0 / (n - 1)
    for i in range(n):
        image, lung[i] = render_slice(geom, config, template, cage, i * step, step)
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
    _add_noise(hu, noise_rng, config.noise_hu)
    spacing = tuple(float(s) for s in spacing_mm)
    volume = CTVolume(
        hu=hu, spacing_mm=spacing, positions_mm=np.arange(n, dtype=np.float64) * spacing[0],
        series_key=make_series_key("phantom", str(seed), str(n), str(size), str(bool(covid))),
        source_format="array",
    )
    return Phantom(volume=volume, lung_mask=lung, lesion_mask=lesion, slice_labels=slice_labels_of(lesion))
