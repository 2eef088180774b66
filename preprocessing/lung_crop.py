"""Paper 003's lung bounding-box crop.

Paper 003 crops every CT slice to the region near the lungs before classification:

1. from the slice's lung mask take the bounding box of the lung pixels,
   ``(x_min, y_min) .. (x_max, y_max)``;
2. crop the image to ``(x_min + r, y_min + r) .. (x_max - r, y_max - r)`` with
   ``r = CropConfig.margin_px`` (5 px): the box is *shrunk* by ``r`` on every side;
3. resize the crop back to the original resolution with bilinear interpolation.

Per slice (axis order ``[N, H, W]``), vectorised box search. Decisions where the paper is
silent:

* A slice without lung pixels, or whose shrunk box is empty (lung narrower than
  ``2 r + 1`` px), is not cropped: returned unchanged (only resized when an output size
  other than ``H x W`` is asked for).
* ``out_hw`` lets a caller crop and resize to the network size in ONE interpolation
  (:mod:`covidct.preprocessing.model_inputs` does this) instead of resizing back to ``H x W`` and
  then again to the network size: fewer operations and one blur instead of two. With
  ``out_hw=None`` the result is the paper's (same size as the input).
* Masks that must stay aligned with the cropped images (mask channels, the lung mask
  of the vote) go through :func:`crop_resize` with the same boxes and ``"nearest"``.
"""

from __future__ import annotations

import numpy as np
import torch

from covidct.errors import ConfigError, VolumeError
from covidct.preprocessing.config import CropConfig
from covidct.preprocessing.devices import ArrayLike, as_tensor, like, to_numpy
from covidct.preprocessing.slice_resize import resize_bilinear, resize_nearest

#: Box rows of slices that are not cropped.
NO_BOX = (-1, -1, -1, -1)


def lung_boxes(lung: ArrayLike, margin_px: int = CropConfig.margin_px) -> ArrayLike:
    """Shrunk lung bounding boxes, int32 ``[N, 4]`` as ``(y0, y1, x0, x1)`` (end exclusive).

    Rows equal :data:`NO_BOX` (-1) for slices without lung or with an empty shrunk box.
    numpy for a numpy mask, else a tensor on the mask's device.
    """
    mask = as_tensor(lung)
    if mask.ndim != 3:
        raise VolumeError(f"lung_boxes: lung mask must be [N, H, W]; got shape {tuple(mask.shape)}")
    if int(margin_px) != margin_px or margin_px < 0:
        raise ConfigError(f"CropConfig.margin_px={margin_px!r}; expected an integer >= 0 (pixels)")
    mask = mask != 0
    _, h, w = mask.shape
    row_has = mask.any(dim=2)  # [N, H]
    has_lung = row_has.any(dim=1)
    rows = row_has.to(torch.uint8)  # argmax takes no bool
    cols = mask.any(dim=1).to(torch.uint8)  # [N, W]
    y_min = rows.argmax(dim=1)
    y_max = h - 1 - rows.flip(1).argmax(dim=1)
    x_min = cols.argmax(dim=1)
    x_max = w - 1 - cols.flip(1).argmax(dim=1)
    r = int(margin_px)
    boxes = torch.stack([y_min + r, y_max - r + 1, x_min + r, x_max - r + 1], dim=1).to(torch.int32)
    valid = has_lung & (boxes[:, 1] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 2])
    boxes[~valid] = torch.tensor(NO_BOX, dtype=torch.int32, device=boxes.device)
    return like(boxes, lung)


def crop_resize(
    stack: ArrayLike, boxes: ArrayLike, out_hw: tuple[int, int] | None = None, mode: str = "bilinear"
) -> ArrayLike:
    """Crop every slice of ``[N, H, W]`` to its box and resize it to ``out_hw`` (default ``H x W``).

    Args:
        stack: images (float, ``mode="bilinear"``, result float32) or masks
            (``mode="nearest"``, dtype kept), ``[N, H, W]``; numpy or a tensor on any device.
        boxes: int ``[N, 4]`` from :func:`lung_boxes`; :data:`NO_BOX` rows are not cropped.
        out_hw: output (rows, columns) in pixels.
        mode: ``"bilinear"`` or ``"nearest"``.
    """
    array = as_tensor(stack)
    if array.ndim != 3:
        raise VolumeError(f"crop_resize: stack must be [N, H, W]; got shape {tuple(array.shape)}")
    box_rows = to_numpy(boxes)
    if box_rows.shape != (array.shape[0], 4):
        raise VolumeError(
            f"crop_resize: boxes have shape {box_rows.shape}; expected ({array.shape[0]}, 4), one per slice"
        )
    if mode not in ("bilinear", "nearest"):
        raise ConfigError(f"crop_resize: mode={mode!r}; expected 'bilinear' or 'nearest'")
    resize = resize_bilinear if mode == "bilinear" else resize_nearest
    oh, ow = (array.shape[1], array.shape[2]) if out_hw is None else out_hw
    plain = np.all(box_rows == NO_BOX, axis=1)
    out_dtype = torch.float32 if mode == "bilinear" else array.dtype
    out = torch.empty((array.shape[0], oh, ow), dtype=out_dtype, device=array.device)
    if plain.any():
        index = torch.from_numpy(np.flatnonzero(plain)).to(array.device)
        out[index] = resize(array.index_select(0, index), (oh, ow))
    for i in np.flatnonzero(~plain):
        out[i] = resize(array[i : i + 1], (oh, ow), box=tuple(int(v) for v in box_rows[i]))[0]
    return like(out, stack)


def crop_to_lung(
    images: ArrayLike,
    lung: ArrayLike,
    config: CropConfig = CropConfig(),
    out_hw: tuple[int, int] | None = None,
) -> ArrayLike:
    """Paper 003's crop of images ``[N, H, W]`` to their lung boxes, resized back (bilinear).

    Args:
        images: ``[N, H, W]`` images (e.g. windowed float32).
        lung: bool ``[N, H, W]`` lung masks of the same slices.
        config: ``margin_px`` by which the lung bounding box is shrunk.
        out_hw: output size; ``None`` (default) is the input size, as in the paper.

    Returns:
        float32 ``[N, *out_hw]``; slices without lung are only resized (unchanged at
        the input size).
    """
    shape, mask_shape = tuple(images.shape), tuple(lung.shape)
    if shape != mask_shape:
        raise VolumeError(f"crop_to_lung: images shape {shape} differs from lung mask shape {mask_shape}")
    return crop_resize(images, lung_boxes(lung, config.margin_px), out_hw, "bilinear")
