"""Insert synthetic COVID-19-like lesions into a real normal CT series.

:func:`insert_lesions` takes a normal series (HU int16 ``[N, H, W]``, e.g. COVID-CT-MD
``normal002``), a lung mask (given, or computed with paper 000's threshold mask,
:func:`covidct.preprocessing.lung_masks.lung_mask`), and renders bilateral, subpleural
ground-glass / consolidation lesions with :mod:`covidct.preprocessing.synthetic.lesion_model`, blended
with the real texture: ``lesion = target + texture + keep * (orig - lung median, clipped
to +-100 HU) + N(0, noise_hu)``, mixed with the original by a weight from 0.8 at the
border to 1 inside. Lesion sizes are given in mm and converted with the volume's
spacing. Only lung voxels are written; every written voxel is in ``lesion_mask``, so
voxels outside it keep their original HU exactly.

The result is a :class:`~covidct.preprocessing.synthetic.phantom.Phantom` (same fields as the synthetic
phantom): the new volume (``source_format="array"``, same spacing and positions),
the lung mask used, the exact lesion mask and per-slice labels.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from covidct.errors import ConfigError, VolumeError
from covidct.preprocessing.config import MaskConfig
from covidct.preprocessing.synthetic.lesion_model import LesionConfig, add_lesions
from covidct.preprocessing.lung_masks import lung_mask as threshold_lung_mask
from covidct.preprocessing.synthetic.phantom import Phantom, slice_labels_of
from covidct.preprocessing.volume import CTVolume, make_series_key

#: Real series already carry scanner noise: lesions get this much fresh noise (HU).
INSERTION_NOISE_HU = 12.0


def _check_range(name: str, value: tuple[float, float]) -> None:
    if len(value) != 2 or not 0 < value[0] <= value[1]:
        raise ConfigError(f"insert_lesions: {name}={value!r}; expected (min, max) mm with 0 < min <= max")


def _lung_for(volume: CTVolume, lung_mask: np.ndarray | None, mask_config: MaskConfig) -> np.ndarray:
    if lung_mask is None:
        lung = threshold_lung_mask(volume.hu, mask_config)
    else:
        lung = np.asarray(lung_mask)
        if lung.shape != volume.hu.shape or lung.dtype != np.bool_:
            raise VolumeError(
                f"insert_lesions: lung_mask is {lung.dtype} {lung.shape}; expected bool "
                f"{volume.hu.shape} like the volume"
            )
    if not lung.any():
        raise VolumeError(
            f"insert_lesions: the lung mask of series {volume.series_key} is empty; "
            "expected lung voxels (is this a chest CT in HU?)"
        )
    return lung


def insert_lesions(
    volume: CTVolume,
    *,
    lung_mask: np.ndarray | None = None,
    seed: int = 0,
    n_lesions: tuple[int, int] = (3, 8),
    radius_mm: tuple[float, float] = (10.0, 25.0),
    z_radius_mm: tuple[float, float] = (8.0, 25.0),
    config: LesionConfig | None = None,
    mask_config: MaskConfig = MaskConfig(),
) -> Phantom:
    """Render ``n_lesions`` synthetic lesions into the lungs of a copy of ``volume``.

    Args:
        volume: a normal chest CT (HU int16 ``[N, H, W]``); not modified.
        lung_mask: bool ``[N, H, W]``; computed with :func:`covidct.preprocessing.lung_masks.lung_mask`
            and ``mask_config`` when omitted. Lesions are clipped to it.
        seed: the same seed (and inputs) gives identical output.
        n_lesions: inclusive (min, max) lesions (overrides ``config.n_lesions``).
        radius_mm: (min, max) in-plane lesion semi-axis in mm.
        z_radius_mm: (min, max) lesion semi-axis along the slices in mm.
        config: lesion kinds and HU (default :class:`LesionConfig` with
            ``noise_hu=INSERTION_NOISE_HU``).
        mask_config: thresholds of the computed lung mask.

    Returns:
        :class:`Phantom` with the new volume, the lung mask, the lesion mask (subset of
        the lung mask) and per-slice labels (uint8 ``[N]``).
    """
    if not isinstance(volume, CTVolume):
        raise VolumeError(f"insert_lesions: expected a CTVolume, got {type(volume).__name__}")
    _check_range("radius_mm", radius_mm)
    _check_range("z_radius_mm", z_radius_mm)
    config = config or LesionConfig(noise_hu=INSERTION_NOISE_HU)
    config = dataclasses.replace(config, n_lesions=tuple(int(v) for v in n_lesions))
    lung = _lung_for(volume, lung_mask, mask_config)
    sz, sy, sx = volume.spacing_mm
    pixel_mm = 0.5 * (sy + sx)
    hu = volume.hu.copy()
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    lesion = add_lesions(
        hu, lung, rng, config,
        radius_px=(radius_mm[0] / pixel_mm, radius_mm[1] / pixel_mm),
        radius_slices=(z_radius_mm[0] / sz, z_radius_mm[1] / sz),
    )
    out = CTVolume(
        hu=hu,
        spacing_mm=volume.spacing_mm,
        positions_mm=volume.positions_mm.copy(),
        series_key=make_series_key("lesions", volume.series_key, str(seed)),
        source_format="array",
    )
    return Phantom(volume=out, lung_mask=lung, lesion_mask=lesion, slice_labels=slice_labels_of(lesion))
