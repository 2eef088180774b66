"""In-plane resampling of slice stacks ``[N, H, W]``: the index tables, and the host-side nearest resize.

The served and trained numerics resize with torch on the instance's device
(:mod:`covidct.preprocessing.slice_resize`: bilinear for images, nearest for masks); both they and
this module take their sampling positions from :func:`linear_axis_weights` and
:func:`nearest_axis_index`. :func:`resize_nearest` here is numpy-only, for callers that
must not need torch (the client upsamples the returned masks to the series' grid for
overlays and DICOM SEG with it); it equals ``slice_resize.resize_nearest`` exactly.

Sampling convention: pixel centres are aligned ("half-pixel" convention, the one of
``torch.nn.functional.interpolate(..., align_corners=False)`` without antialiasing and
of OpenCV): output pixel ``o`` of an axis resized from ``n`` to ``m`` samples the input
at ``(o + 0.5) * n / m - 0.5``, clamped to the edge. Nearest takes input index
``floor((o + 0.5) * n / m)`` (torch ``"nearest-exact"``).

Both accept an optional source ``box = (y0, y1, x0, x1)`` (pixels, end exclusive):
only that sub-rectangle is resampled to the output size, which is how the lung crop
(:mod:`covidct.preprocessing.lung_crop`) crops and resizes in one interpolation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from covidct.errors import VolumeError

Box = tuple[int, int, int, int]


def check_stack(stack: Any, what: str) -> tuple[int, ...]:
    """The shape of ``stack`` (numpy array or tensor) after checking it is ``[N, H, W]`` with H, W >= 1."""
    shape = tuple(int(d) for d in getattr(stack, "shape", np.shape(stack)))
    if len(shape) != 3 or min(shape[1:], default=0) < 1:
        raise VolumeError(f"{what}: expected a slice stack [N, H, W]; got shape {shape}")
    return shape


def check_out(out_hw: tuple[int, int], what: str) -> tuple[int, int]:
    oh, ow = (int(v) for v in out_hw)
    if oh < 1 or ow < 1:
        raise VolumeError(f"{what}: output size {out_hw!r}; expected positive (H, W) pixels")
    return oh, ow


def check_box(box: Box | None, h: int, w: int, what: str) -> Box:
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


def resize_nearest(stack: np.ndarray, out_hw: tuple[int, int], box: Box | None = None) -> np.ndarray:
    """Nearest-neighbour in-plane resize of a numpy ``[N, H, W]`` (masks, labels); keeps the dtype."""
    array = np.asarray(stack)
    check_stack(array, "resize_nearest")
    oh, ow = check_out(out_hw, "resize_nearest")
    y0, y1, x0, x1 = check_box(box, array.shape[1], array.shape[2], "resize_nearest")
    yi = nearest_axis_index(y0, y1, oh)
    xi = nearest_axis_index(x0, x1, ow)
    return array[:, yi[:, None], xi[None, :]]
