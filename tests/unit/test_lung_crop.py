"""Paper 003's lung bounding-box crop on hand-built masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from covidct.errors import ConfigError, VolumeError
from covidct.preprocessing.config import CropConfig
from covidct.preprocessing.lung_crop import NO_BOX, crop_resize, crop_to_lung, lung_boxes


def _bilinear(image: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(image.astype(np.float32))[None, None]
    return F.interpolate(t, size=out_hw, mode="bilinear", align_corners=False)[0, 0].numpy()


def _masks() -> np.ndarray:
    lung = np.zeros((3, 64, 80), dtype=bool)
    lung[0, 10:30, 20:50] = True  # rows 10..29, columns 20..49
    lung[0, 40:45, 60:62] = True  # a second piece: bbox grows to rows 10..44, cols 20..61
    # slice 1: no lung; slice 2: a lung 8 px wide, shrunk by 5 px on both sides -> empty
    lung[2, 5:50, 30:38] = True
    return lung


def test_boxes_are_shrunk_by_the_margin() -> None:
    boxes = lung_boxes(_masks(), margin_px=5)
    assert boxes.dtype == np.int32 and boxes.shape == (3, 4)
    # (y_min + r, y_max - r + 1, x_min + r, x_max - r + 1), end exclusive
    np.testing.assert_array_equal(boxes[0], [15, 40, 25, 57])
    np.testing.assert_array_equal(boxes[1], NO_BOX)
    np.testing.assert_array_equal(boxes[2], NO_BOX)
    np.testing.assert_array_equal(lung_boxes(_masks(), margin_px=0)[2], [5, 50, 30, 38])


def test_crop_resizes_the_box_back_and_leaves_other_slices() -> None:
    rng = np.random.default_rng(0)
    images = rng.random((3, 64, 80)).astype(np.float32)
    out = crop_to_lung(images, _masks(), CropConfig(margin_px=5))
    assert out.dtype == np.float32 and out.shape == images.shape
    np.testing.assert_allclose(out[0], _bilinear(images[0, 15:40, 25:57], (64, 80)), atol=1e-5)
    np.testing.assert_array_equal(out[1], images[1])
    np.testing.assert_array_equal(out[2], images[2])


def test_crop_to_another_size_in_one_step() -> None:
    rng = np.random.default_rng(1)
    images = rng.random((3, 64, 80)).astype(np.float32)
    out = crop_to_lung(images, _masks(), CropConfig(margin_px=5), out_hw=(32, 32))
    assert out.shape == (3, 32, 32)
    np.testing.assert_allclose(out[0], _bilinear(images[0, 15:40, 25:57], (32, 32)), atol=1e-5)
    np.testing.assert_allclose(out[1], _bilinear(images[1], (32, 32)), atol=1e-5)


def test_masks_follow_the_same_boxes_nearest() -> None:
    lung = _masks()
    boxes = lung_boxes(lung, 5)
    inside = np.zeros_like(lung)
    inside[0, 15:40, 25:57] = True  # exactly the box of slice 0
    out = crop_resize(inside, boxes, (16, 16), "nearest")
    assert out.dtype == bool
    assert out[0].all() and not out[1].any()


def test_crop_errors_name_the_problem() -> None:
    with pytest.raises(ConfigError, match=r"margin_px=-1"):
        lung_boxes(_masks(), margin_px=-1)
    with pytest.raises(VolumeError, match=r"images shape \(3, 64, 64\) differs from lung mask shape"):
        crop_to_lung(np.zeros((3, 64, 64), np.float32), _masks())
    with pytest.raises(VolumeError, match=r"boxes have shape \(2, 4\); expected \(3, 4\)"):
        crop_resize(np.zeros((3, 8, 8)), np.zeros((2, 4), np.int32))
    with pytest.raises(ConfigError, match=r"mode='cubic'"):
        crop_resize(np.zeros((1, 8, 8)), np.full((1, 4), -1), mode="cubic")
