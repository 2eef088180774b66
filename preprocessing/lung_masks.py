"""Paper 000's classical lung mask and infection-candidate mask, per slice.

Paper 000 (CNN6) builds its masks from two HU thresholds: tissue is at or above
-300 HU, ground-glass and denser is at or above -700 HU; the lung mask is binary-filled
"to solidify the lung morphology", and the infection mask is their difference, cleaned
by erosion and dilation. The text leaves the details open; this module implements,
for every axial slice independently (2-D, 8-connected components; slices are never
connected to each other):

1. **Low density**: ``hu < tissue_threshold_hu`` (-300 HU): air, aerated lung,
   ground-glass opacity.
2. **Inside the body**: low-density components that touch the edge of the slice are the
   air around the patient (and the padding outside the reconstruction circle); they
   are dropped. What is left are the air regions enclosed by tissue: lungs, trachea,
   large airways, bowel gas.
3. **Airways / gas pockets**: of those components, a component is kept as lung only
   when its area is at least ``MIN_COMPONENT_FRACTION`` (10 %) of the largest enclosed
   component of the same slice and at least ``MIN_COMPONENT_PIXELS`` scaled to the
   slice size (64 px on 512x512). This drops the trachea and main bronchi next to
   open lungs and small gas pockets. At the lung apex, where the trachea is as large as
   the lung tips, it is kept: those slices are closed-lung slices that the open-lung
   selection discards.
4. **Binary fill**: holes of the kept components are filled (paper 000's binary fill):
   vessels, airway walls and dense lesions enclosed by aerated lung become lung.
   Dense lesions touching the chest wall that are not enclosed stay outside (a known
   limit of any threshold method).
5. **Infection candidates**: lung pixels at or above ``infection_threshold_hu``
   (-700 HU: ground glass, consolidation, vessels), eroded ``erosion_iterations`` times
   then dilated ``dilation_iterations`` times with a 3x3 cross (an opening: thin vessel
   walls and the partial-volume rim at the lung border disappear), and restricted to
   the lung again after dilation.

Where it runs: the thresholds, the block counts, the upsampling and the opening are
torch operations on the input's device (numpy in, numpy out; a CUDA tensor stays on the
GPU). Only the component analysis of steps 2-4 runs on the host, on a bool copy of the
low-density mask at work resolution (a quarter of the pixels, one byte each): torch has
no connected-component labelling, and ``scipy.ndimage.label`` does it in one call per chunk
of slices using a 3-D structuring element whose z-neighbours are zero (per-slice
labelling, vectorised). Steps 1-4 run at a work resolution of about 256x256 (512x512 slices are
analysed as 2x2 blocks; a block is low-density when at least 2 of its 4 pixels are) and
the lung mask is upsampled back (nearest), so its outline is exact to 2 px on 512x512;
step 5 runs at full resolution (the opening removes the 1-px rim this leaves). This
keeps both masks under ~2 ms per 512x512 slice on one core (full resolution took ~5 ms).

Input ``hu``: HU ``[N, H, W]`` (int16 from the readers); outputs: bool ``[N, H, W]``, numpy
for numpy input, else tensors on the input's device.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from covidct.errors import ConfigError, VolumeError
from covidct.preprocessing.config import MaskConfig
from covidct.preprocessing.devices import ArrayLike, as_tensor, dtype_name, like

#: A kept lung component is at least this fraction of the slice's largest enclosed one.
MIN_COMPONENT_FRACTION = 0.10
#: ... and at least this many pixels on a 256x256 work slice (scaled with the area).
MIN_COMPONENT_PIXELS = 16
#: Components are analysed on slices downsampled by an integer factor to about this size.
MASK_WORK_SIZE = 256
#: Slices processed together (int64 labels of 16 x 256 x 256 = 8 MB: stays in cache).
CHUNK_SLICES = 16

_STRUCT_8 = np.zeros((3, 3, 3), dtype=bool)
_STRUCT_8[1] = True  # 8-connectivity in-plane, none across slices
_STRUCT_8.setflags(write=False)


def _check_config(config: MaskConfig) -> None:
    if config.infection_threshold_hu >= config.tissue_threshold_hu:
        raise ConfigError(
            f"MaskConfig: infection_threshold_hu={config.infection_threshold_hu} must be below "
            f"tissue_threshold_hu={config.tissue_threshold_hu} (HU)"
        )
    if config.erosion_iterations < 0 or config.dilation_iterations < 0:
        raise ConfigError(
            f"MaskConfig: erosion_iterations={config.erosion_iterations}, "
            f"dilation_iterations={config.dilation_iterations}; expected >= 0"
        )


def _check_hu(hu: ArrayLike) -> torch.Tensor:
    values = as_tensor(hu, what="lung masks: hu")
    if values.ndim != 3 or values.shape[1] < 3 or values.shape[2] < 3:
        raise VolumeError(f"lung masks: hu must be [N, H, W] with H, W >= 3; got shape {tuple(values.shape)}")
    if values.dtype == torch.bool or values.is_complex():
        raise VolumeError(f"lung masks: hu has dtype {dtype_name(values)}; expected integer or float HU")
    return values


def _edge_labels(labels: np.ndarray) -> np.ndarray:
    """Labels present on the in-plane border of any slice of ``labels`` ``[n, H, W]``."""
    edges = np.concatenate(
        [labels[:, 0, :].ravel(), labels[:, -1, :].ravel(), labels[:, :, 0].ravel(), labels[:, :, -1].ravel()]
    )
    return np.unique(edges)


def _slice_of_labels(labels: np.ndarray, count: int) -> np.ndarray:
    """Slice index of every label 0..count (label 0, the background, gets index 0).

    ``ndimage.label`` numbers components in scan order, so the labels of slice ``i``
    are a contiguous range: the running maximum per slice gives each range's end.
    """
    ends = np.maximum.accumulate(labels.reshape(labels.shape[0], -1).max(axis=1))
    return np.searchsorted(ends, np.arange(count + 1), side="left")


def _label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-slice 8-connected labelling of ``[n, H, W]`` into int64 labels (fast LUT indexing)."""
    labels = np.empty(mask.shape, dtype=np.int64)
    count = ndimage.label(mask, structure=_STRUCT_8, output=labels)
    return labels, int(count)


def _lung_from_low_density(low: np.ndarray, min_pixels: int) -> np.ndarray:
    """Steps 2-4 on a chunk ``[n, H, W]`` of low-density pixels: the filled lung mask."""
    labels, count = _label(low)
    if count == 0:
        return np.zeros(low.shape, dtype=bool)
    area = np.bincount(labels.ravel(), minlength=count + 1)
    enclosed = np.ones(count + 1, dtype=bool)
    enclosed[0] = False
    enclosed[_edge_labels(labels)] = False
    slice_of = _slice_of_labels(labels, count)
    largest = np.zeros(low.shape[0], dtype=np.int64)
    np.maximum.at(largest, slice_of[enclosed], area[enclosed])
    keep = enclosed & (area >= min_pixels) & (area >= MIN_COMPONENT_FRACTION * largest[slice_of])
    lung = keep[labels]
    # Binary fill: background components of the lung mask not touching the slice edge.
    holes, hole_count = _label(~lung)
    if hole_count:
        is_hole = np.ones(hole_count + 1, dtype=bool)
        is_hole[0] = False
        is_hole[_edge_labels(holes)] = False
        lung |= is_hole[holes]
    return lung


def mask_work_factor(height: int, width: int) -> int:
    """Integer in-plane downsampling factor of the component analysis (2 for 512x512)."""
    return max(1, min(height, width) // MASK_WORK_SIZE)


def _low_density(hu: torch.Tensor, threshold_hu: float, f: int) -> torch.Tensor:
    """Low-density mask at work resolution: at least half of each ``f x f`` block below the threshold.

    Trailing rows/columns beyond a multiple of ``f`` are dropped (restored by :func:`_upsample`).
    """
    low = hu < threshold_hu
    if f == 1:
        return low
    _, h, w = hu.shape
    ones = low.view(torch.uint8)[:, : (h // f) * f, : (w // f) * f]
    # Rows of each block first (contiguous rows), then its columns.
    rows = sum(ones[:, dy::f] for dy in range(1, f)) + ones[:, 0::f]
    count = sum(rows[:, :, dx::f] for dx in range(1, f)) + rows[:, :, 0::f]
    return count >= (f * f + 1) // 2


def _upsample(mask: torch.Tensor, f: int, height: int, width: int) -> torch.Tensor:
    """Nearest upsampling of a work-resolution mask by ``f``; leftover edge rows/columns copy the last."""
    if f == 1:
        return mask
    n, hh, ww = mask.shape
    # As bytes: torch copies uint8 faster than bool on the CPU.
    up = mask.view(torch.uint8)[:, :, None, :, None].expand(n, hh, f, ww, f).reshape(n, hh * f, ww * f)
    up = up.view(torch.bool)
    if tuple(up.shape[1:]) == (height, width):
        return up
    hh, ww = hh * f, ww * f
    rows = torch.cat([up, up[:, hh - 1 : hh, :].expand(-1, height - hh, -1)], dim=1)
    return torch.cat([rows, rows[:, :, ww - 1 : ww].expand(-1, -1, width - ww)], dim=2)


def _work_setup(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(f, min_pixels)`` of the component analysis for slices of ``shape`` ``[N, H, W]``."""
    _, h, w = shape
    f = mask_work_factor(h, w)
    work_area = (h // f) * (w // f)
    return f, max(1, int(round(MIN_COMPONENT_PIXELS * work_area / (256 * 256))))


def _lung_chunk(hu: torch.Tensor, config: MaskConfig, f: int, min_pixels: int) -> torch.Tensor:
    low = _low_density(hu, config.tissue_threshold_hu, f).cpu().numpy()
    lung = torch.from_numpy(_lung_from_low_density(low, min_pixels)).to(hu.device)
    return _upsample(lung, f, hu.shape[1], hu.shape[2])


def _shift_erode(mask: torch.Tensor) -> torch.Tensor:
    """One in-plane erosion of ``[n, H, W]`` by a 3x3 cross (outside the slice counts as False)."""
    out = mask.clone()
    out[:, 1:, :] &= mask[:, :-1, :]
    out[:, :-1, :] &= mask[:, 1:, :]
    out[:, :, 1:] &= mask[:, :, :-1]
    out[:, :, :-1] &= mask[:, :, 1:]
    out[:, 0, :] = False
    out[:, -1, :] = False
    out[:, :, 0] = False
    out[:, :, -1] = False
    return out


def _shift_dilate(mask: torch.Tensor) -> torch.Tensor:
    """One in-plane dilation of ``[n, H, W]`` by a 3x3 cross."""
    out = mask.clone()
    out[:, 1:, :] |= mask[:, :-1, :]
    out[:, :-1, :] |= mask[:, 1:, :]
    out[:, :, 1:] |= mask[:, :, :-1]
    out[:, :, :-1] |= mask[:, :, 1:]
    return out


def _infection_chunk(hu: torch.Tensor, lung: torch.Tensor, config: MaskConfig) -> torch.Tensor:
    candidates = lung & (hu >= config.infection_threshold_hu)
    for _ in range(config.erosion_iterations):
        candidates = _shift_erode(candidates)
    for _ in range(config.dilation_iterations):
        candidates = _shift_dilate(candidates)
    if config.dilation_iterations:
        candidates &= lung
    return candidates


def _by_chunks(like_hu: torch.Tensor, count: int, step) -> tuple[torch.Tensor, ...]:
    """``count`` bool tensors shaped and placed like ``like_hu``, filled ``CHUNK_SLICES`` slices at a
    time by ``step(start, stop, outputs)`` (intermediates of a chunk stay in cache)."""
    outputs = tuple(torch.empty(like_hu.shape, dtype=torch.bool, device=like_hu.device) for _ in range(count))
    for start in range(0, like_hu.shape[0], CHUNK_SLICES):
        step(start, start + CHUNK_SLICES, outputs)
    return outputs


def lung_mask(hu: ArrayLike, config: MaskConfig = MaskConfig()) -> ArrayLike:
    """Filled lung mask (bool ``[N, H, W]``) of HU slices ``[N, H, W]`` (steps 1-4).

    The component analysis runs on ``f x f`` blocks (``f`` from :func:`mask_work_factor`,
    2 on 512x512 slices; a block is low-density when at least half of its pixels are)
    and the result is upsampled back to ``H x W`` (nearest).
    """
    return lung_and_infection_masks(hu, config, infection=False)[0]


def infection_mask(hu: ArrayLike, lung: ArrayLike, config: MaskConfig = MaskConfig()) -> ArrayLike:
    """Infection candidates (bool ``[N, H, W]``): lung pixels >= -700 HU, opened (step 5)."""
    _check_config(config)
    values = _check_hu(hu)
    lung_t = as_tensor(lung, values.device).bool()
    if tuple(lung_t.shape) != tuple(values.shape):
        raise VolumeError(
            f"infection_mask: lung mask shape {tuple(lung_t.shape)} differs from hu shape {tuple(values.shape)}"
        )

    def step(start: int, stop: int, outputs: tuple[torch.Tensor, ...]) -> None:
        outputs[0][start:stop] = _infection_chunk(values[start:stop], lung_t[start:stop], config)

    return like(_by_chunks(values, 1, step)[0], hu)


def lung_and_infection_masks(
    hu: ArrayLike, config: MaskConfig = MaskConfig(), *, infection: bool = True
) -> tuple[ArrayLike, ...]:
    """Paper 000's masks of HU slices ``[N, H, W]``: ``(lung, infection)``, both bool ``[N, H, W]``
    (``(lung,)`` with ``infection=False``); numpy for numpy input, else tensors on its device.

    Same result as :func:`lung_mask` then :func:`infection_mask`, computed chunk by
    chunk (``CHUNK_SLICES`` slices) so that the intermediate arrays stay in cache.
    """
    _check_config(config)
    values = _check_hu(hu)
    f, min_pixels = _work_setup(tuple(values.shape))

    def step(start: int, stop: int, outputs: tuple[torch.Tensor, ...]) -> None:
        chunk = values[start:stop]
        outputs[0][start:stop] = _lung_chunk(chunk, config, f, min_pixels)
        if infection:
            outputs[1][start:stop] = _infection_chunk(chunk, outputs[0][start:stop], config)

    return tuple(like(mask, hu) for mask in _by_chunks(values, 2 if infection else 1, step))
