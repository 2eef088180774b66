"""In-plane resizing of slice stacks ``[N, H, W]`` with torch, on the tensors' device.

Two kernels, both separable and computed with two gathers per axis (no loop over
slices, no spline prefilter), sampling as :mod:`covidct.preprocessing.resize` defines it
(half-pixel centres, the convention of ``torch.nn.functional.interpolate(...,
align_corners=False)`` without antialiasing and of OpenCV; nearest is torch's
``"nearest-exact"``):

* bilinear for images (:func:`resize_bilinear`, :func:`resize_images`), float32 out;
* nearest neighbour for masks (:func:`resize_nearest`, :func:`resize_masks`), dtype kept.

Both accept an optional source ``box = (y0, y1, x0, x1)`` (pixels, end exclusive): only
that sub-rectangle is resampled to the output size (the lung crop,
:mod:`covidct.preprocessing.lung_crop`, crops and resizes in one interpolation). numpy stacks in,
numpy stacks out; tensors stay tensors on their device.
"""

from __future__ import annotations

import torch

from covidct.preprocessing.devices import ArrayLike, as_tensor, like
from covidct.preprocessing.resize import Box, check_box, check_out, check_stack, linear_axis_weights, nearest_axis_index


def _bilinear(x: torch.Tensor, out_hw: tuple[int, int], box: tuple[int, int, int, int]) -> torch.Tensor:
    oh, ow = out_hw
    y0, y1, x0, x1 = box
    if x.dtype != torch.float32:
        x = x.float()
    if box == (0, oh, 0, ow) and tuple(x.shape[1:]) == (oh, ow):
        return x.clone()
    ya, yb, wy = (torch.from_numpy(v).to(x.device) for v in linear_axis_weights(y0, y1, oh))
    xa, xb, wx = (torch.from_numpy(v).to(x.device) for v in linear_axis_weights(x0, x1, ow))
    # Rows first: [N, oh, W] restricted to the box columns, then columns.
    cols = x[:, :, x0:x1]
    rows = cols.index_select(1, ya) * (1.0 - wy)[None, :, None]
    rows += cols.index_select(1, yb) * wy[None, :, None]
    out = rows.index_select(2, xa - x0) * (1.0 - wx)[None, None, :]
    out += rows.index_select(2, xb - x0) * wx[None, None, :]
    return out


def _nearest(x: torch.Tensor, out_hw: tuple[int, int], box: tuple[int, int, int, int]) -> torch.Tensor:
    y0, y1, x0, x1 = box
    yi = torch.from_numpy(nearest_axis_index(y0, y1, out_hw[0])).to(x.device)
    xi = torch.from_numpy(nearest_axis_index(x0, x1, out_hw[1])).to(x.device)
    return x.index_select(1, yi).index_select(2, xi)


def resize_bilinear(stack: ArrayLike, out_hw: tuple[int, int], box: Box | None = None) -> ArrayLike:
    """Bilinear in-plane resize of ``[N, H, W]`` (optionally of ``box`` only) to float32 ``[N, *out_hw]``."""
    _, h, w = check_stack(stack, "resize_bilinear")
    size = check_out(out_hw, "resize_bilinear")
    region = check_box(box, h, w, "resize_bilinear")
    return like(_bilinear(as_tensor(stack), size, region), stack)


def resize_nearest(stack: ArrayLike, out_hw: tuple[int, int], box: Box | None = None) -> ArrayLike:
    """Nearest-neighbour in-plane resize of ``[N, H, W]`` (masks, labels); keeps the dtype."""
    _, h, w = check_stack(stack, "resize_nearest")
    size = check_out(out_hw, "resize_nearest")
    region = check_box(box, h, w, "resize_nearest")
    return like(_nearest(as_tensor(stack), size, region), stack)


def resize_images(images: ArrayLike, size: int) -> ArrayLike:
    """Bilinear resize of an image stack ``[N, H, W]`` to float32 ``[N, size, size]``."""
    return resize_bilinear(images, (size, size))


def resize_masks(masks: ArrayLike, size: int) -> ArrayLike:
    """Nearest-neighbour resize of a mask stack ``[N, H, W]`` to ``[N, size, size]``."""
    return resize_nearest(masks, (size, size))
