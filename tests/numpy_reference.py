"""The numpy implementation of the per-slice numerics, as it was before they moved to torch.

The served and trained numerics (:mod:`covidct.preprocessing.hu_window`,
:mod:`covidct.preprocessing.slice_resize`, :mod:`covidct.preprocessing.lung_masks`,
:mod:`covidct.preprocessing.lung_crop`, :mod:`covidct.preprocessing.model_inputs`,
:func:`covidct.preprocessing.mask_grid.block_mean`, the vote and burden counts) are torch
operations on the model instance's device. This module keeps the numpy implementation
they replaced (the same arithmetic; block_mean without its cache chunking) as the
oracle of ``tests/unit/test_device_numerics.py``: the
torch results must equal it (exactly for integer and bool outputs, within 1e-5 for
floats) on CPU and, where CUDA is present, on the GPU. The component analysis of the
paper-000 lung mask is shared (it runs on the host in both), so it is imported.
"""

from __future__ import annotations

import numpy as np

from covidct.preprocessing.config import MaskConfig, ModelInputConfig, PipelineConfig
from covidct.preprocessing.lung_crop import NO_BOX
from covidct.preprocessing.lung_masks import CHUNK_SLICES, _lung_from_low_density, _work_setup
from covidct.preprocessing.resize import linear_axis_weights, resize_nearest  # numpy, the client's; unchanged


def window_normalize(hu: np.ndarray, lo: float, hi: float) -> np.ndarray:
    out = np.asarray(hu).astype(np.float32, copy=True)
    np.subtract(out, np.float32(lo), out=out)
    np.multiply(out, np.float32(1.0 / (hi - lo)), out=out)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def resize_bilinear(array: np.ndarray, out_hw: tuple[int, int], box=None) -> np.ndarray:
    oh, ow = out_hw
    y0, y1, x0, x1 = (0, array.shape[1], 0, array.shape[2]) if box is None else box
    array = array.astype(np.float32)
    if (y0, y1, x0, x1) == (0, oh, 0, ow) and array.shape[1:] == (oh, ow):
        return array.copy()
    ya, yb, wy = linear_axis_weights(y0, y1, oh)
    xa, xb, wx = linear_axis_weights(x0, x1, ow)
    cols = array[:, :, x0:x1]
    rows = cols[:, ya, :] * (1.0 - wy)[None, :, None]
    rows += cols[:, yb, :] * wy[None, :, None]
    xa, xb = xa - x0, xb - x0
    out = rows[:, :, xa] * (1.0 - wx)[None, None, :]
    out += rows[:, :, xb] * wx[None, None, :]
    return out


def _low_density(hu: np.ndarray, threshold_hu: float, f: int) -> np.ndarray:
    low = hu < threshold_hu
    if f == 1:
        return low
    n, h, w = hu.shape
    count = np.zeros((n, h // f, w // f), dtype=np.uint8)
    as_u8 = low.view(np.uint8)
    for dy in range(f):
        for dx in range(f):
            count += as_u8[:, dy : (h // f) * f : f, dx : (w // f) * f : f]
    return count >= (f * f + 1) // 2


def _upsample(mask: np.ndarray, f: int, height: int, width: int) -> np.ndarray:
    if f == 1:
        return mask
    n, hh, ww = mask.shape
    block = np.empty((n, hh, f, ww * f), dtype=bool)
    block[...] = np.repeat(mask, f, axis=2)[:, :, None, :]
    up = block.reshape(n, hh * f, ww * f)
    if up.shape[1:] == (height, width):
        return up
    out = np.empty((n, height, width), dtype=bool)
    out[:, : hh * f, : ww * f] = up
    out[:, hh * f :, :] = out[:, hh * f - 1 : hh * f, :]
    out[:, :, ww * f :] = out[:, :, ww * f - 1 : ww * f]
    return out


def _shift_erode(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[:, 1:, :] &= mask[:, :-1, :]
    out[:, :-1, :] &= mask[:, 1:, :]
    out[:, :, 1:] &= mask[:, :, :-1]
    out[:, :, :-1] &= mask[:, :, 1:]
    out[:, 0, :] = False
    out[:, -1, :] = False
    out[:, :, 0] = False
    out[:, :, -1] = False
    return out


def _shift_dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[:, 1:, :] |= mask[:, :-1, :]
    out[:, :-1, :] |= mask[:, 1:, :]
    out[:, :, 1:] |= mask[:, :, :-1]
    out[:, :, :-1] |= mask[:, :, 1:]
    return out


def lung_and_infection_masks(hu: np.ndarray, config: MaskConfig = MaskConfig()) -> tuple[np.ndarray, np.ndarray]:
    f, min_pixels = _work_setup(hu.shape)
    lung = np.empty(hu.shape, dtype=bool)
    infection = np.empty(hu.shape, dtype=bool)
    for start in range(0, hu.shape[0], CHUNK_SLICES):
        chunk = hu[start : start + CHUNK_SLICES]
        low = _low_density(chunk, config.tissue_threshold_hu, f)
        chunk_lung = _upsample(_lung_from_low_density(low, min_pixels), f, hu.shape[1], hu.shape[2])
        candidates = chunk_lung & (chunk >= config.infection_threshold_hu)
        for _ in range(config.erosion_iterations):
            candidates = _shift_erode(candidates)
        for _ in range(config.dilation_iterations):
            candidates = _shift_dilate(candidates)
        if config.dilation_iterations:
            candidates &= chunk_lung
        lung[start : start + CHUNK_SLICES] = chunk_lung
        infection[start : start + CHUNK_SLICES] = candidates
    return lung, infection


def lung_boxes(mask: np.ndarray, margin_px: int) -> np.ndarray:
    mask = mask.astype(bool, copy=False)
    _, h, w = mask.shape
    rows = mask.any(axis=2)
    cols = mask.any(axis=1)
    has_lung = rows.any(axis=1)
    y_min = rows.argmax(axis=1)
    y_max = h - 1 - rows[:, ::-1].argmax(axis=1)
    x_min = cols.argmax(axis=1)
    x_max = w - 1 - cols[:, ::-1].argmax(axis=1)
    r = int(margin_px)
    boxes = np.stack([y_min + r, y_max - r + 1, x_min + r, x_max - r + 1], axis=1).astype(np.int32)
    valid = has_lung & (boxes[:, 1] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 2])
    boxes[~valid] = NO_BOX
    return boxes


def crop_resize(array: np.ndarray, boxes: np.ndarray, out_hw: tuple[int, int], mode: str) -> np.ndarray:
    resize = resize_bilinear if mode == "bilinear" else resize_nearest
    plain = np.all(boxes == NO_BOX, axis=1)
    out = np.empty((array.shape[0], *out_hw), dtype=np.float32 if mode == "bilinear" else array.dtype)
    if plain.any():
        out[plain] = resize(array[plain], out_hw)
    for i in np.flatnonzero(~plain):
        out[i] = resize(array[i : i + 1], out_hw, box=tuple(int(v) for v in boxes[i]))[0]
    return out


def network_inputs(hu: np.ndarray, config: PipelineConfig, input_config: ModelInputConfig) -> np.ndarray:
    size = int(input_config.size)
    if input_config.lung_crop or input_config.mask_channels:
        lung, infection = lung_and_infection_masks(hu, config.masks)
    images = window_normalize(hu, config.window.min_hu, config.window.max_hu)
    out = np.empty((hu.shape[0], input_config.channels, size, size), dtype=np.float32)
    if input_config.lung_crop:
        boxes = lung_boxes(lung, config.crop.margin_px)
        out[:, 0] = crop_resize(images, boxes, (size, size), "bilinear")
        if input_config.mask_channels:
            out[:, 1] = crop_resize(lung, boxes, (size, size), "nearest")
            out[:, 2] = crop_resize(infection, boxes, (size, size), "nearest")
    else:
        out[:, 0] = resize_bilinear(images, (size, size))
        if input_config.mask_channels:
            out[:, 1] = resize_nearest(lung, (size, size))
            out[:, 2] = resize_nearest(infection, (size, size))
    return out


def block_mean(hu: np.ndarray, factor: int) -> np.ndarray:
    n, height, width = hu.shape
    h, w = height // factor, width // factor
    src = hu[:, : h * factor, : w * factor]
    if factor == 1:
        return np.ascontiguousarray(src, dtype=np.int16)
    rows = src.reshape(n, h, factor, w * factor).astype(np.int32).sum(axis=2)
    total = rows.reshape(n, h, w, factor).sum(axis=3)
    return (total // (factor * factor)).astype(np.int16)


def whole_lung_figures(lung_mask: np.ndarray, infection_probability: np.ndarray, threshold: float,
                       spacing_mm: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``(infection mask [L, m, m] uint8, lung volume ml, burden %)`` as the vote computed them."""
    m_h, m_w = lung_mask.shape[1:]
    if infection_probability.shape[0]:
        infected = resize_nearest(infection_probability[:, 0] >= threshold, (m_h, m_w))
    else:
        infected = np.zeros(lung_mask.shape, bool)
    lung = lung_mask != 0
    voxels = int(np.count_nonzero(lung))
    volume_ml = voxels * float(np.prod(spacing_mm.astype(np.float64))) / 1000.0
    burden = 100.0 * np.count_nonzero(infected & lung) / voxels if voxels else 0.0
    return (infected & lung).astype(np.uint8), volume_ml, burden
