"""Paper 000's lung and infection-candidate masks on hand-built slices."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from covidct.errors import ConfigError, VolumeError
from covidct.preprocessing.config import MaskConfig
from covidct.preprocessing.lung_masks import infection_mask, lung_and_infection_masks, lung_mask

CROSS = ndimage.generate_binary_structure(2, 1)


def _disc(size: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def _chest(size: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One axial slice: air outside, soft-tissue body, two lungs, a trachea, a vessel, GGO."""
    s = size / 128
    body = _disc(size, 64 * s, 64 * s, 55 * s)
    left = _disc(size, 64 * s, 40 * s, 18 * s)
    right = _disc(size, 64 * s, 88 * s, 18 * s)
    trachea = _disc(size, 40 * s, 64 * s, 3 * s)
    vessel = np.zeros((size, size), bool)
    vessel[int(60 * s), int(36 * s) : int(44 * s)] = True  # 1 px thick line inside the left lung
    ggo = np.zeros((size, size), bool)
    ggo[int(58 * s) : int(58 * s) + 8, int(84 * s) : int(84 * s) + 8] = True  # 8x8 patch, right lung
    hu = np.full((size, size), -1000, dtype=np.int16)
    hu[body] = 40
    hu[left | right] = -860
    hu[trachea] = -1000
    hu[vessel] = 30
    hu[ggo] = -550
    return hu, {"lung": left | right, "trachea": trachea, "vessel": vessel, "ggo": ggo, "body": body}


def test_lung_is_enclosed_low_density_filled_without_trachea() -> None:
    hu, parts = _chest(128)
    lung, infection = lung_and_infection_masks(hu[None])
    assert lung.dtype == bool and lung.shape == (1, 128, 128)
    # Vessel and GGO lie inside the lungs: filled in; trachea and outside air are not lung.
    np.testing.assert_array_equal(lung[0], parts["lung"])
    # Candidates >= -700 HU inside the lung: the vessel line and the GGO square; the
    # opening (erode 1, dilate 1, cross) removes the 1-px line and the square's corners.
    candidates = parts["lung"] & (hu >= -700)
    expected = ndimage.binary_opening(candidates, structure=CROSS) & parts["lung"]
    np.testing.assert_array_equal(infection[0], expected)
    assert not infection[0][parts["vessel"]].any()
    assert infection[0].sum() == 64 - 4


def test_slices_are_independent_and_empty_slices_stay_empty() -> None:
    hu, parts = _chest(128)
    body_only = np.where(parts["body"], 40, -1000).astype(np.int16)
    stack = np.stack([hu, body_only, np.full_like(hu, -1000)])
    lung = lung_mask(stack)
    np.testing.assert_array_equal(lung[0], parts["lung"])
    assert not lung[1].any() and not lung[2].any()
    # Same per-slice result in another order: no coupling across slices.
    np.testing.assert_array_equal(lung_mask(stack[::-1])[::-1], lung)


def test_air_touching_the_edge_is_not_lung() -> None:
    hu, parts = _chest(128)
    hu[60:68, :64] = -1000  # a channel of air from the left edge into the left lung
    lung = lung_mask(hu[None])[0]
    assert not lung[parts["lung"] & (np.arange(128)[None, :] < 64)].any()
    np.testing.assert_array_equal(lung[:, 64:], parts["lung"][:, 64:])


def test_512_slices_are_analysed_on_blocks_within_two_pixels() -> None:
    hu, parts = _chest(512)
    lung, infection = lung_and_infection_masks(hu[None])
    truth = parts["lung"]
    inner = ndimage.binary_erosion(truth, iterations=2)
    outer = ndimage.binary_dilation(truth, iterations=2)
    assert np.all(lung[0][inner]) and not np.any(lung[0] & ~outer)
    assert abs(int(lung.sum()) - int(truth.sum())) < 0.02 * truth.sum()
    # The GGO patch (8x8 pixels) is found; no rim along the lung border survives the opening.
    assert infection[0][parts["ggo"]].mean() > 0.9
    assert not np.any(infection[0] & ~ndimage.binary_dilation(parts["ggo"] | parts["vessel"]))


def test_erosion_only_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    hu = rng.integers(-1000, 100, size=(3, 40, 40)).astype(np.int16)
    lung = rng.random((3, 40, 40)) > 0.2
    cfg = MaskConfig(erosion_iterations=2, dilation_iterations=0)
    out = infection_mask(hu, lung, cfg)
    for i in range(3):
        expected = ndimage.binary_erosion(lung[i] & (hu[i] >= -700), structure=CROSS, iterations=2)
        np.testing.assert_array_equal(out[i], expected)


def test_mask_errors_name_the_problem() -> None:
    with pytest.raises(ConfigError, match=r"infection_threshold_hu=-200.0 must be below"):
        lung_mask(np.zeros((1, 8, 8), np.int16), MaskConfig(infection_threshold_hu=-200.0))
    with pytest.raises(VolumeError, match=r"\[N, H, W\] with H, W >= 3; got shape \(8, 8\)"):
        lung_mask(np.zeros((8, 8), np.int16))
    with pytest.raises(VolumeError, match=r"lung mask shape \(1, 8, 4\) differs"):
        infection_mask(np.zeros((1, 8, 8), np.int16), np.zeros((1, 8, 4), bool))
