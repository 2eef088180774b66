"""HU windowing and stack resizing against hand values and torch's interpolate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from covidct.errors import ConfigError, VolumeError
from covidct.preprocessing.config import WindowConfig
from covidct.preprocessing.hu_window import window_normalize
from covidct.preprocessing.slice_resize import resize_bilinear, resize_images, resize_masks, resize_nearest


def _torch_resize(stack: np.ndarray, out_hw: tuple[int, int], mode: str) -> np.ndarray:
    t = torch.from_numpy(np.asarray(stack, dtype=np.float32))[:, None]
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(t, size=out_hw, mode=mode, **kwargs)[:, 0].numpy()


def test_window_maps_hu_linearly_and_clips() -> None:
    hu = np.array([[[-1100, -1000, -300, 400, 500, -650]]], dtype=np.int16)
    out = window_normalize(hu, WindowConfig(min_hu=-1000.0, max_hu=400.0))
    expected = np.array([[[0.0, 0.0, 0.5, 1.0, 1.0, 0.25]]], dtype=np.float32)
    assert out.dtype == np.float32 and out.shape == hu.shape
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_window_other_window_and_input_untouched() -> None:
    hu = np.array([[[0, 50, 100]]], dtype=np.int16)
    copy = hu.copy()
    out = window_normalize(hu, WindowConfig(min_hu=0.0, max_hu=200.0))
    np.testing.assert_allclose(out, [[[0.0, 0.25, 0.5]]], atol=1e-6)
    np.testing.assert_array_equal(hu, copy)


def test_window_rejects_empty_window() -> None:
    with pytest.raises(ConfigError, match=r"min_hu=400.0, max_hu=-1000.0"):
        window_normalize(np.zeros((1, 2, 2), np.int16), WindowConfig(min_hu=400.0, max_hu=-1000.0))


def test_window_rejects_non_numeric() -> None:
    with pytest.raises(VolumeError, match=r"dtype <U1"):
        window_normalize(np.array([["a"]]))


@pytest.mark.parametrize("in_hw,out_hw", [((40, 30), (17, 23)), ((16, 16), (40, 40)), ((64, 48), (64, 48))])
def test_bilinear_matches_torch_half_pixel(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    stack = rng.normal(size=(3, *in_hw)).astype(np.float32)
    out = resize_bilinear(stack, out_hw)
    assert out.dtype == np.float32 and out.shape == (3, *out_hw)
    np.testing.assert_allclose(out, _torch_resize(stack, out_hw, "bilinear"), atol=1e-5)


@pytest.mark.parametrize("in_hw,out_hw", [((40, 30), (17, 23)), ((10, 10), (35, 35))])
def test_nearest_matches_torch_nearest_exact(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
    rng = np.random.default_rng(2)
    masks = rng.random((2, *in_hw)) > 0.5
    out = resize_nearest(masks, out_hw)
    assert out.dtype == bool
    np.testing.assert_array_equal(out, _torch_resize(masks, out_hw, "nearest-exact") > 0.5)


def test_box_resamples_the_sub_rectangle_only() -> None:
    rng = np.random.default_rng(3)
    stack = rng.normal(size=(2, 50, 60)).astype(np.float32)
    box = (5, 37, 12, 50)
    expected = _torch_resize(stack[:, 5:37, 12:50], (50, 60), "bilinear")
    np.testing.assert_allclose(resize_bilinear(stack, (50, 60), box=box), expected, atol=1e-5)
    nearest = resize_nearest(stack, (20, 20), box=box)
    np.testing.assert_array_equal(nearest, _torch_resize(stack[:, 5:37, 12:50], (20, 20), "nearest-exact"))


def test_square_helpers_and_constant_image() -> None:
    stack = np.full((2, 31, 47), 0.75, dtype=np.float32)
    out = resize_images(stack, 20)
    assert out.shape == (2, 20, 20)
    np.testing.assert_allclose(out, 0.75, atol=1e-6)
    masks = np.zeros((1, 8, 8), dtype=np.uint8)
    masks[0, :4] = 1  # top half
    small = resize_masks(masks, 4)
    assert small.dtype == np.uint8
    np.testing.assert_array_equal(small[0], np.repeat([[1], [1], [0], [0]], 4, axis=1))


def test_resize_errors_name_the_problem() -> None:
    with pytest.raises(VolumeError, match=r"\[N, H, W\]; got shape \(4, 4\)"):
        resize_bilinear(np.zeros((4, 4)), (2, 2))
    with pytest.raises(VolumeError, match=r"box \(y0, y1, x0, x1\)=\(3, 3, 0, 4\)"):
        resize_bilinear(np.zeros((1, 4, 4)), (2, 2), box=(3, 3, 0, 4))
    with pytest.raises(VolumeError, match=r"output size \(0, 2\)"):
        resize_nearest(np.zeros((1, 4, 4)), (0, 2))
