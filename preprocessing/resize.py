"""Resizing of slice stacks ``[N, H, W]`` in-plane (the slice axis is never touched).

Two kernels, both separable and computed with two gathers per axis (no Python loop
over slices, no scipy spline prefilter):

* bilinear for images (:func:`resize_bilinear`, :func:`resize_images`);
* nearest neighbour for masks (:func:`resize_nearest`, :func:`resize_masks`).

Sampling convention: pixel centres are aligned ("half-pixel" convention, the one of
``torch.nn.functional.interpolate(..., align_corners=False)`` without antialiasing and
of OpenCV): output pixel ``o`` of an axis resized from ``n`` to ``m`` samples the input
at ``(o + 0.5) * n / m - 0.5``, clamped to the edge. Nearest takes input index
``floor((o + 0.5) * n / m)`` (torch ``"nearest-exact"``).

Both accept an optional source ``box = (y0, y1, x0, x1)`` (pixels, end exclusive):
only that sub-rectangle is resampled to the output size, which is how the lung crop
(:mod:`preprocessing.lung_crop`) crops and resizes in one interpolation.
"""

from __future__ import annotations

import numpy as np

from covidct.errors import VolumeError

Box = tuple[int, int, int, int]


def _check_stack(stack: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(stack)
    if array.ndim != 3 or min(array.shape[1:], default=0) < 1:
        raise VolumeError(f"{what}: expected a slice stack [N, H, W]; got shape {array.shape}")
    return array


def _check_out(out_hw: tuple[int, int], what: str) -> tuple[int, int]:
    oh, ow = (int(v) for v in out_hw)
    if oh < 1 or ow < 1:
        raise VolumeError(f"{what}: output size {out_hw!r}; expected positive (H, W) pixels")
    return oh, ow


def _check_box(box: Box | None, h: int, w: int, what: str) -> Box:
    if box is None:
        return 0, h, 0, w
    y0, y1, x0, x1 = (int(v) for v in box)
    if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
        raise VolumeError(
            f"{what}: box (y0, y1, x0, x1)={box!r} is not a non-empty region of a {h}x{w} slice"
        )
    return y0, y1, x0, x1


def linear_axis_weights(start: int, stop: int, out_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices and weights of linear interpolation from input ``[start, stop)`` to ``out_len``.

    Returns ``(i0, i1, w1)``: output ``o`` = ``(1 - w1[o]) * x[i0[o]] + w1[o] * x[i1[o]]``.
    """
    n = stop - start
    src = (np.arange(out_len, dtype=np.float64) + 0.5) * (n / out_len) - 0.5
    src = np.clip(src, 0.0, n - 1)
    i0 = np.floor(src).astype(np.intp)
    w1 = (src - i0).astype(np.float32)
    i1 = np.minimum(i0 + 1, n - 1)
    return i0 + start, i1 + start, w1


def nearest_axis_index(start: int, stop: int, out_len: int) -> np.ndarray:
    """Input index of every output pixel for nearest-neighbour resizing of ``[start, stop)``."""
    n = stop - start
    idx = np.floor((np.arange(out_len, dtype=np.float64) + 0.5) * (n / out_len)).astype(np.intp)
    return np.minimum(idx, n - 1) + start


def resize_bilinear(stack: np.ndarray, out_hw: tuple[int, int], box: Box | None = None) -> np.ndarray:
    """Bilinear in-plane resize of ``[N, H, W]`` (optionally of ``box`` only) to ``[N, *out_hw]``.

    The result is float32 (inputs of other dtypes are converted).
    """
    array = _check_stack(stack, "resize_bilinear")
    oh, ow = _check_out(out_hw, "resize_bilinear")
    y0, y1, x0, x1 = _check_box(box, array.shape[1], array.shape[2], "resize_bilinear")
    if array.dtype != np.float32:
        array = array.astype(np.float32)
    if (y0, y1, x0, x1) == (0, oh, 0, ow) and array.shape[1:] == (oh, ow):
        return array.copy()
    ya, yb, wy = linear_axis_weights(y0, y1, oh)
    xa, xb, wx = linear_axis_weights(x0, x1, ow)
    # Rows first: [N, oh, W] (restricted to the box columns), then columns.
    cols = array[:, :, x0:x1]
    rows = cols[:, ya, :] * (1.0 - wy)[None, :, None]
    rows += cols[:, yb, :] * wy[None, :, None]
    xa, xb = xa - x0, xb - x0
    out = rows[:, :, xa] * (1.0 - wx)[None, None, :]
    out += rows[:, :, xb] * wx[None, None, :]
    return out


def resize_nearest(stack: np.ndarray, out_hw: tuple[int, int], box: Box | None = None) -> np.ndarray:
    """Nearest-neighbour in-plane resize of ``[N, H, W]`` (masks, labels); keeps the dtype."""
    array = _check_stack(stack, "resize_nearest")
    oh, ow = _check_out(out_hw, "resize_nearest")
    y0, y1, x0, x1 = _check_box(box, array.shape[1], array.shape[2], "resize_nearest")
    yi = nearest_axis_index(y0, y1, oh)
    xi = nearest_axis_index(x0, x1, ow)
    return array[:, yi[:, None], xi[None, :]]


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of an image stack ``[N, H, W]`` to float32 ``[N, size, size]``."""
    return resize_bilinear(images, (size, size))


def resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of a mask stack ``[N, H, W]`` to ``[N, size, size]``."""
    return resize_nearest(masks, (size, size))
