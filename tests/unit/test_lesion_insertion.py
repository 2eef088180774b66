"""Lesion insertion into normal lungs: a negative phantom (always) and normal002 (real)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from covidct.errors import ConfigError, VolumeError
from covidct.preprocessing.synthetic.lesion_insertion import insert_lesions
from covidct.preprocessing.synthetic.phantom import Phantom, make_phantom
from covidct.preprocessing.io.series_reader import read_series
from covidct.preprocessing.volume import CTVolume

#: Border voxels mix 80 % lesion with 20 % of the original (down to -1024 HU); noise on top.
GROUND_GLASS_FLOOR_HU = -780
CONSOLIDATION_CEILING_HU = 110


def _check_insertion(original: CTVolume, result: Phantom) -> None:
    hu, lesion = result.volume.hu, result.lesion_mask
    assert hu.dtype == np.int16 and hu.shape == original.hu.shape
    assert lesion.any()
    assert not (lesion & ~result.lung_mask).any()
    assert np.array_equal(hu[~lesion], original.hu[~lesion])
    assert np.array_equal(result.slice_labels, lesion.any(axis=(1, 2)).astype(np.uint8))
    values = hu[lesion].astype(float)
    tail_low, tail_high = np.percentile(values, [0.1, 99.9])  # single voxels carry noise
    assert tail_low >= GROUND_GLASS_FLOOR_HU and tail_high <= CONSOLIDATION_CEILING_HU
    low, high = np.percentile(values, [1, 99])
    assert low >= -720 and high <= 80
    assert ((values >= -700) & (values <= -300)).mean() > 0.3
    assert result.volume.spacing_mm == original.spacing_mm
    np.testing.assert_array_equal(result.volume.positions_mm, original.positions_mm)
    half = hu.shape[2] // 2
    assert lesion[:, :, :half].any() and lesion[:, :, half:].any()  # bilateral


@pytest.fixture(scope="module")
def negative() -> Phantom:
    return make_phantom(num_slices=60, size=128, covid=False, seed=7, spacing_mm=(2.0, 2.8, 2.8))


def test_insertion_into_negative_phantom(negative: Phantom) -> None:
    before = negative.volume.hu.copy()
    result = insert_lesions(negative.volume, lung_mask=negative.lung_mask, seed=0, n_lesions=(4, 6))
    _check_insertion(negative.volume, result)
    assert np.array_equal(negative.volume.hu, before)  # input untouched
    assert result.lung_mask is negative.lung_mask or np.array_equal(result.lung_mask, negative.lung_mask)


def test_insertion_is_seeded(negative: Phantom) -> None:
    a = insert_lesions(negative.volume, lung_mask=negative.lung_mask, seed=3)
    b = insert_lesions(negative.volume, lung_mask=negative.lung_mask, seed=3)
    c = insert_lesions(negative.volume, lung_mask=negative.lung_mask, seed=4)
    assert np.array_equal(a.volume.hu, b.volume.hu) and np.array_equal(a.lesion_mask, b.lesion_mask)
    assert not np.array_equal(a.lesion_mask, c.lesion_mask)


def test_insertion_computes_a_lung_mask_when_none_is_given(negative: Phantom) -> None:
    result = insert_lesions(negative.volume, seed=1)
    _check_insertion(negative.volume, result)
    # The threshold mask finds the phantom's lungs (airways and vessels aside).
    overlap = (result.lung_mask & negative.lung_mask).sum() / negative.lung_mask.sum()
    assert overlap > 0.9


def test_zero_lesions_changes_nothing(negative: Phantom) -> None:
    result = insert_lesions(negative.volume, lung_mask=negative.lung_mask, n_lesions=(0, 0))
    assert not result.lesion_mask.any() and not result.slice_labels.any()
    assert np.array_equal(result.volume.hu, negative.volume.hu)


def test_insertion_errors(negative: Phantom) -> None:
    with pytest.raises(VolumeError, match="lung mask of series .* is empty"):
        insert_lesions(negative.volume, lung_mask=np.zeros_like(negative.lung_mask))
    with pytest.raises(VolumeError, match=r"lung_mask is bool \(59, 128, 128\)"):
        insert_lesions(negative.volume, lung_mask=negative.lung_mask[1:])
    with pytest.raises(ConfigError, match=r"radius_mm=\(30.0, 10.0\)"):
        insert_lesions(negative.volume, lung_mask=negative.lung_mask, radius_mm=(30.0, 10.0))
    with pytest.raises(VolumeError, match="expected a CTVolume"):
        insert_lesions(negative.volume.hu)  # type: ignore[arg-type]


@pytest.mark.real_data
def test_insertion_into_real_normal_series(real_data_dir: Path) -> None:
    volume = read_series(real_data_dir / "normal002")
    result = insert_lesions(volume, seed=0)
    _check_insertion(volume, result)
    # Lesions sit on open-lung slices, inside real dark lung.
    assert result.slice_labels.sum() >= 10
    assert np.median(volume.hu[result.lesion_mask]) < -700
