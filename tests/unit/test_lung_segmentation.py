"""3-D lung segmentation of whole series: phantom ground truth, real series, edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from covidct.errors import ConfigError, VolumeError
from covidct.preprocessing.config import LungSegmentationConfig
from covidct.preprocessing.lung_segmentation import segment_lungs
from covidct.preprocessing.mask_grid import block_mean, fill_slices, reduction_factor
from covidct.preprocessing.synthetic.phantom import make_phantom

SERIES = ("P002", "cap002", "normal002")


def _reduce(mask: np.ndarray, factor: int) -> np.ndarray:
    """Fraction of each ``factor x factor`` block of a bool ``[N, H, W]`` mask that is set."""
    n, h, w = mask.shape
    hh, ww = h // factor, w // factor
    return mask[:, : hh * factor, : ww * factor].reshape(n, hh, factor, ww, factor).mean(axis=(2, 4))


def test_block_mean_and_reduction_factor() -> None:
    hu = np.arange(2 * 8 * 8, dtype=np.int16).reshape(2, 8, 8)
    expected = hu.reshape(2, 2, 4, 2, 4).astype(np.float64).mean(axis=(2, 4))
    np.testing.assert_array_equal(block_mean(hu, 4), np.floor(expected).astype(np.int16))
    assert block_mean(hu, 1).dtype == np.int16
    assert reduction_factor(512, 512, 128) == 4
    assert reduction_factor(256, 256, 128) == 2
    assert reduction_factor(64, 64, 128) == 1
    assert block_mean(np.zeros((1, 10, 9), np.int16), 4).shape == (1, 2, 2)  # trailing pixels dropped


def test_fill_slices_fills_2d_holes_only() -> None:
    mask = np.zeros((2, 7, 7), dtype=bool)
    mask[0, 1:6, 1:6] = True
    mask[0, 3, 3] = False  # a hole
    mask[1, 0:3, 0:3] = True
    mask[1, 1, 1] = False  # a hole touching nothing but the ring
    mask[1, 3:7, 3] = True  # an open U: no hole
    filled = fill_slices(mask)
    assert filled[0, 3, 3] and filled[1, 1, 1]
    assert filled.sum() == mask.sum() + 2


@pytest.mark.parametrize(("num_slices", "size", "seed"), [(35, 64, 0), (60, 128, 1), (120, 256, 2), (40, 512, 3)])
def test_phantom_lungs_match_the_exact_mask(num_slices: int, size: int, seed: int) -> None:
    phantom = make_phantom(num_slices=num_slices, size=size, seed=seed)
    volume = phantom.volume
    seg = segment_lungs(volume.hu, volume.spacing_mm)
    assert seg.labels.dtype == np.uint8 and seg.labels.shape[0] == num_slices
    assert seg.labels.shape[1] == size // seg.factor
    assert seg.spacing_mm == pytest.approx((volume.spacing_mm[0], volume.spacing_mm[1] * seg.factor,
                                            volume.spacing_mm[2] * seg.factor))
    truth = _reduce(phantom.lung_mask, seg.factor) >= 0.5
    airway = phantom.airway_mask
    if airway is None:  # phantoms without the field: exclude the air inside the exact lung mask
        airway = phantom.lung_mask & (volume.hu < -950)
    keep = ~(_reduce(airway, seg.factor) > 0)
    ours = seg.lung & keep
    truth &= keep
    dice = 2 * np.count_nonzero(ours & truth) / (np.count_nonzero(ours) + np.count_nonzero(truth))
    assert dice >= 0.95, f"Dice {dice:.3f}"
    # The trachea and main bronchi are removed: none of the trachea's grid pixels (upper
    # half of the airway's slices) is lung; of the whole tree, only the ends of the main
    # bronchi inside the lungs may be (partial volume on the reduced grid).
    airway_grid = _reduce(airway, seg.factor) >= 0.5
    airway_slices = np.flatnonzero(airway_grid.any(axis=(1, 2)))
    upper = airway_slices[airway_slices.size // 2:]
    assert not (seg.lung[upper] & airway_grid[upper]).any()
    assert np.count_nonzero(seg.lung & airway_grid) <= 0.2 * np.count_nonzero(airway_grid)
    # Right lung (label 1) at smaller column indices (patient right = image left).
    cols = np.arange(seg.labels.shape[2])
    right_col = (np.count_nonzero(seg.labels == 1, axis=(0, 1)) @ cols) / np.count_nonzero(seg.labels == 1)
    left_col = (np.count_nonzero(seg.labels == 2, axis=(0, 1)) @ cols) / np.count_nonzero(seg.labels == 2)
    assert right_col < seg.labels.shape[2] / 2 < left_col
    assert seg.lung_volume_ml == pytest.approx(seg.right_volume_ml + seg.left_volume_ml)
    assert seg.lung_area_mm2.shape == (num_slices,)
    np.testing.assert_array_equal(seg.lung_slices, np.flatnonzero(seg.lung_area_mm2 > 0))


@pytest.mark.parametrize("hu", [
    np.full((5, 64, 64), -1000, np.int16),
    np.zeros((5, 64, 64), np.int16),
    np.random.default_rng(0).integers(-1024, 3072, size=(6, 96, 96)).astype(np.int16),
    np.full((1, 32, 32), 40, np.int16),
], ids=["all_air", "all_water", "noise", "one_slice"])
def test_content_never_raises(hu: np.ndarray) -> None:
    seg = segment_lungs(hu, (2.0, 0.7, 0.7))
    assert seg.lung_volume_ml == 0.0
    assert seg.lung_slices.size == 0 and seg.lung_slices.dtype == np.int32


def test_input_errors_name_the_problem() -> None:
    with pytest.raises(VolumeError, match=r"non-empty \[N, H, W\] stack; got shape \(64, 64\)"):
        segment_lungs(np.zeros((64, 64), np.int16), (1.0, 1.0, 1.0))
    with pytest.raises(VolumeError, match=r"spacing_mm=\(0.0, 1.0, 1.0\); expected three finite positive"):
        segment_lungs(np.zeros((2, 64, 64), np.int16), (0.0, 1.0, 1.0))
    with pytest.raises(VolumeError, match=r"dtype bool; expected int16"):
        segment_lungs(np.zeros((2, 64, 64), bool), (1.0, 1.0, 1.0))
    with pytest.raises(ConfigError, match=r"LungSegmentationConfig.mask_size=4; expected an integer in \[8, 1024\]"):
        LungSegmentationConfig(mask_size=4)
    with pytest.raises(ConfigError, match=r"lung_threshold_range_hu=\(-300.0, -600.0\)"):
        LungSegmentationConfig(lung_threshold_range_hu=(-300.0, -600.0))


@pytest.fixture(scope="module")
def real_segmentations(real_data_dir):  # type: ignore[no-untyped-def]
    from covidct.preprocessing.io.series_reader import read_series

    out = {}
    for name in SERIES:
        volume = read_series(real_data_dir / name)
        out[name] = (volume, segment_lungs(volume.hu, volume.spacing_mm))
    return out


@pytest.mark.real_data
@pytest.mark.parametrize("name", SERIES)
def test_real_series_lungs_without_trachea(real_segmentations, name: str) -> None:  # type: ignore[no-untyped-def]
    volume, seg = real_segmentations[name]
    assert 3000.0 <= seg.lung_volume_ml <= 7500.0
    assert seg.right_volume_ml > 0.3 * seg.lung_volume_ml and seg.left_volume_ml > 0.3 * seg.lung_volume_ml
    assert seg.airway_volume_ml > 5.0 and not seg.airway_leaked
    # The dark trachea at the midline of the top lung-bearing slices is not lung: per slice,
    # the dark component of tracheal size nearest the body's centre column.
    v = block_mean(volume.hu, seg.factor)
    _, dy, dx = seg.spacing_mm
    found = 0
    for z in seg.lung_slices[-8:]:
        labels, count = ndimage.label((v[z] < -900) & seg.body[z])
        best, best_offset = 0, 25.0  # mm
        for index in range(1, count + 1):
            rows, cols = np.nonzero(labels == index)
            offset = abs(cols.mean() - seg.body_centre_px[1]) * dx
            if 50.0 <= rows.size * dy * dx <= 600.0 and offset < best_offset:
                best, best_offset = index, offset
        if best:
            found += 1
            assert not seg.lung[z][labels == best].any(), f"slice {z}: trachea inside the lung mask"
    assert found >= 3
