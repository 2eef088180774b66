"""The reduced in-plane grid of the 3-D lung mask: block averaging, bounding boxes, hole fill.

Arrays are ``[N, h, w]`` (slices, rows, columns); HU as int16 on input, the grid as
int16 block means.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from covidct.preprocessing.devices import ArrayLike, as_tensor, like

#: Per-slice (2-D, 4-connected) structuring element for 3-D arrays.
STRUCT_2D = np.zeros((3, 3, 3), dtype=bool)
STRUCT_2D[1] = ndimage.generate_binary_structure(2, 1)
#: Slices summed per block-averaging chunk (keeps the int32 sums in cache).
REDUCE_CHUNK = 8


def reduction_factor(height: int, width: int, mask_size: int) -> int:
    """In-plane integer reduction that brings ``min(H, W)`` to about ``mask_size`` (>= 1)."""
    return max(1, int(round(min(height, width) / mask_size)))


def block_mean(hu: ArrayLike, factor: int) -> ArrayLike:
    """int16 ``[N, H // factor, W // factor]``: mean HU of each ``factor x factor`` block (floor).

    torch on the input's device (numpy in, numpy out): the one step of the 3-D lung mask
    that reads the full-resolution volume.
    """
    values = as_tensor(hu)
    n, height, width = values.shape
    h, w = height // factor, width // factor
    src = values[:, : h * factor, : w * factor]
    if factor == 1:
        return like(src.to(torch.int16).contiguous(), hu)
    out = torch.empty((n, h, w), dtype=torch.int16, device=values.device)
    for i in range(0, n, REDUCE_CHUNK):
        # Rows of each block first (contiguous rows, int32), then its columns; floor division.
        rows = src[i : i + REDUCE_CHUNK].reshape(-1, h, factor, w * factor)
        acc = rows[:, :, 0, :].to(torch.int32)
        for k in range(1, factor):
            acc += rows[:, :, k, :]
        acc = acc.reshape(-1, h, w, factor)
        total = acc[..., 0].clone()
        for k in range(1, factor):
            total += acc[..., k]
        out[i : i + REDUCE_CHUNK] = torch.div(total, factor * factor, rounding_mode="floor")
    return like(out, hu)


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, slice, slice] | None:
    """Slices of the bounding box of a bool ``[N, h, w]`` mask, grown in-plane by ``margin``; None if empty."""
    z = np.flatnonzero(mask.any(axis=(1, 2)))
    if z.size == 0:
        return None
    plane = mask[z[0]: z[-1] + 1].any(axis=0)
    r = np.flatnonzero(plane.any(axis=1))
    c = np.flatnonzero(plane.any(axis=0))
    h, w = plane.shape
    return (slice(int(z[0]), int(z[-1]) + 1),
            slice(max(0, int(r[0]) - margin), min(h, int(r[-1]) + 1 + margin)),
            slice(max(0, int(c[0]) - margin), min(w, int(c[-1]) + 1 + margin)))


def fill_slices(mask: np.ndarray) -> np.ndarray:
    """bool ``[N, h, w]``: ``mask`` with its 2-D holes filled, slice by slice.

    Works on the mask's bounding box grown by one pixel (the ring outside it is
    background connected to the box border, so holes are found as in the whole slice).
    """
    out = mask.copy()
    box = bounding_box(mask, margin=1)
    if box is None:
        return out
    sub = mask[box]
    labels, count = ndimage.label(~sub, STRUCT_2D)
    border = np.concatenate([labels[:, 0, :].ravel(), labels[:, -1, :].ravel(),
                             labels[:, :, 0].ravel(), labels[:, :, -1].ravel()])
    inside = np.ones(count + 1, dtype=bool)
    inside[border] = False
    inside[0] = True
    out[box] = inside[labels]
    return out
