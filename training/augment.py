"""Data augmentation in torch, applied identically to images and masks.

Papers 001/002: horizontal/vertical flips, rotation (002: 0-360 degrees; 001: 10),
zoom (002: 5%; 001: 10%) and width/height shift (002: 5%; 001: 20%). One random affine
transform per sample (rotation about the centre, isotropic zoom, shift as a fraction of
the side) is built as a 2x3 matrix and applied with ``affine_grid``/``grid_sample`` to
the image (bilinear) and to the mask (nearest), after the random flips. Pixels pulled
from outside the slice are 0 (= air after window normalisation).

Images ``[B, C, S, S]`` float32, masks ``[B, 1, S, S]`` float32 {0, 1} (NCHW).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation ranges. ``rotation_deg``: uniform in [-r, r]; ``zoom``: scale in
    [1 - z, 1 + z]; ``shift``: translation in [-s, s] of the side; flips with p = 0.5.
    ``intensity`` (ours, 0 = off): the windowed image channel gets a contrast factor in
    [1 - i, 1 + i] about 0.5 and an offset in [-i/2, i/2], clipped to [0, 1] (for a 1400 HU
    window, i = 0.1 shifts by up to 70 HU): robustness to estimated gray-to-HU maps and to
    scanners' calibration."""

    enabled: bool = True
    hflip: bool = True
    vflip: bool = True
    rotation_deg: float = 180.0
    zoom: float = 0.05
    shift: float = 0.05
    intensity: float = 0.0


PAPER002_AUGMENT = AugmentConfig(rotation_deg=180.0, zoom=0.05, shift=0.05)
PAPER001_AUGMENT = AugmentConfig(vflip=False, rotation_deg=10.0, zoom=0.1, shift=0.2)
NO_AUGMENT = AugmentConfig(enabled=False)


def random_affine_matrices(
    batch: int, cfg: AugmentConfig, generator: torch.Generator, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``[B, 2, 3]`` matrices (normalised coordinates) of rotation, zoom and shift."""
    u = torch.rand(batch, 4, generator=generator)
    angle = (u[:, 0] * 2 - 1) * math.radians(cfg.rotation_deg)
    scale = 1.0 + (u[:, 1] * 2 - 1) * cfg.zoom
    shift = (u[:, 2:] * 2 - 1) * cfg.shift * 2.0  # normalised coords span 2 per side
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    return theta.to(device)


def augment_batch(
    images: torch.Tensor,
    masks: torch.Tensor | None,
    cfg: AugmentConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Randomly flip, rotate, zoom and shift each sample; masks get the same transform.

    Mask-valued image channels (channels 1.. of a 3-channel classifier input) are
    resampled bilinearly like the image; ``masks`` is resampled nearest and stays binary.
    """
    if not cfg.enabled:
        return images, masks
    b = images.shape[0]
    device = images.device
    flips = torch.rand(b, 2, generator=generator)
    if cfg.hflip:
        sel = (flips[:, 0] < 0.5).to(device)
        images = torch.where(sel[:, None, None, None], images.flip(-1), images)
        if masks is not None:
            masks = torch.where(sel[:, None, None, None], masks.flip(-1), masks)
    if cfg.vflip:
        sel = (flips[:, 1] < 0.5).to(device)
        images = torch.where(sel[:, None, None, None], images.flip(-2), images)
        if masks is not None:
            masks = torch.where(sel[:, None, None, None], masks.flip(-2), masks)
    if cfg.intensity > 0:
        u = torch.rand(b, 2, generator=generator).to(device=device, dtype=images.dtype)
        contrast = 1.0 + (u[:, 0] * 2 - 1) * cfg.intensity
        offset = (u[:, 1] * 2 - 1) * cfg.intensity / 2
        image = ((images[:, :1] - 0.5) * contrast[:, None, None, None] + 0.5 + offset[:, None, None, None]).clamp(0, 1)
        images = torch.cat([image, images[:, 1:]], dim=1)
    if cfg.rotation_deg == 0 and cfg.zoom == 0 and cfg.shift == 0:
        return images, masks
    theta = random_affine_matrices(b, cfg, generator, device).to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if masks is not None:
        masks = F.grid_sample(masks, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return images, masks
