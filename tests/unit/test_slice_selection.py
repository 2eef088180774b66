"""Paper 002's open-lung slice selection on hand-built dark-pixel counts."""

from __future__ import annotations

import numpy as np
import pytest

from covidct.errors import ConfigError, NoOpenLungError, VolumeError
from covidct.preprocessing.config import SelectionConfig
from covidct.preprocessing.slice_selection import dark_pixel_counts, scaled_region, select_open_lung_slices


def _volume_with_counts(counts: list[int], size: int = 512) -> np.ndarray:
    """Slices of 0 HU with exactly ``counts[i]`` pixels of -1000 HU inside the region."""
    hu = np.zeros((len(counts), size, size), dtype=np.int16)
    y0, y1 = 240 * size // 512, 340 * size // 512
    x0, x1 = 120 * size // 512, 370 * size // 512
    for i, c in enumerate(counts):
        region = hu[i, y0:y1, x0:x1].reshape(-1)  # a copy: region is not contiguous in hu
        region[:c] = -1000
        hu[i, y0:y1, x0:x1] = region.reshape(y1 - y0, x1 - x0)
    # Dark pixels outside the region never count.
    hu[:, : 200 * size // 512, :] = -1000
    hu[:, :, 400 * size // 512 :] = -1000
    return hu


def test_region_is_scaled_to_the_slice_size() -> None:
    assert scaled_region(512, 512) == (240, 340, 120, 370)
    assert scaled_region(256, 256) == (120, 170, 60, 185)
    assert scaled_region(512, 1024) == (240, 340, 240, 740)


def test_paper_example_threshold_and_strict_comparison() -> None:
    hu = _volume_with_counts([3030, 30, 2000, 2001, 1000])
    result = select_open_lung_slices(hu)
    np.testing.assert_array_equal(result.dark_counts, [3030, 30, 2000, 2001, 1000])
    assert result.dark_counts.dtype == np.int32
    assert result.threshold == pytest.approx(2000.0)  # (3030 - 30) / 1.5
    np.testing.assert_array_equal(result.indices, [0, 3])  # 2000 does not exceed 2000
    assert result.indices.dtype == np.int32


def test_dark_means_strictly_below_the_hu_threshold() -> None:
    hu = np.zeros((1, 512, 512), dtype=np.int16)
    hu[0, 250, 130:140] = -724  # not dark
    hu[0, 251, 130:133] = -725  # dark
    np.testing.assert_array_equal(dark_pixel_counts(hu), [3])
    np.testing.assert_array_equal(dark_pixel_counts(hu, SelectionConfig(dark_threshold_hu=-723.0)), [13])


def test_smaller_slices_use_the_scaled_region() -> None:
    hu = _volume_with_counts([900, 0, 300], size=256)
    result = select_open_lung_slices(hu)
    np.testing.assert_array_equal(result.dark_counts, [900, 0, 300])
    np.testing.assert_array_equal(result.indices, [0])  # threshold 600


def test_equal_counts_keep_every_slice() -> None:
    result = select_open_lung_slices(_volume_with_counts([500, 500, 500], size=128))
    assert result.threshold == 0.0
    np.testing.assert_array_equal(result.indices, [0, 1, 2])
    single = select_open_lung_slices(_volume_with_counts([7], size=128))
    np.testing.assert_array_equal(single.indices, [0])


def test_no_dark_pixel_anywhere_raises() -> None:
    with pytest.raises(NoOpenLungError, match=r"none of the 2 slices has a pixel below -724.0 HU"):
        select_open_lung_slices(_volume_with_counts([0, 0], size=128))


def test_selection_errors_name_the_problem() -> None:
    with pytest.raises(VolumeError, match=r"non-empty \[N, H, W\] stack; got shape \(512, 512\)"):
        select_open_lung_slices(np.zeros((512, 512), np.int16))
    with pytest.raises(ConfigError, match=r"divisor=0"):
        select_open_lung_slices(np.zeros((1, 64, 64), np.int16), SelectionConfig(divisor=0))
    with pytest.raises(ConfigError, match=r"region_x=\(300, 200\)"):
        scaled_region(512, 512, SelectionConfig(region_x=(300, 200)))


# ------------------------------------------------------------------ lung-area rule
def test_lung_area_rule_keeps_slices_at_the_fraction_of_the_maximum() -> None:
    from covidct.preprocessing.slice_selection import select_by_lung_area

    area = np.array([0.0, 100.0, 249.0, 250.0, 1000.0, 600.0, 0.0])
    indices = select_by_lung_area(area)
    np.testing.assert_array_equal(indices, [3, 4, 5])  # >= 0.25 x 1000 mm^2
    assert indices.dtype == np.int32
    np.testing.assert_array_equal(select_by_lung_area(area, SelectionConfig(min_lung_area_fraction=0.0)),
                                  np.arange(7))
    np.testing.assert_array_equal(select_by_lung_area(area, SelectionConfig(min_lung_area_fraction=1.0)), [4])


def test_lung_area_rule_errors_and_config() -> None:
    from covidct.preprocessing.slice_selection import select_by_lung_area

    assert SelectionConfig().rule == "lung_area" and SelectionConfig().min_lung_area_fraction == 0.25
    with pytest.raises(NoOpenLungError, match=r"none of the 3 slices holds lung"):
        select_by_lung_area(np.zeros(3))
    with pytest.raises(VolumeError, match=r"non-empty 1-D array of mm\^2; got float64 shape \(2, 2\)"):
        select_by_lung_area(np.ones((2, 2)))
    with pytest.raises(VolumeError, match=r"values outside \[0, inf\)"):
        select_by_lung_area(np.array([1.0, -2.0]))
    with pytest.raises(ConfigError, match=r"SelectionConfig.rule='middle'; expected one of \['lung_area', 'paper002"):
        SelectionConfig(rule="middle")
    with pytest.raises(ConfigError, match=r"SelectionConfig.min_lung_area_fraction=1.5; expected a number in"):
        SelectionConfig(min_lung_area_fraction=1.5)


@pytest.mark.real_data
def test_lung_area_rule_keeps_the_infected_slices_of_real_series(real_data_dir) -> None:  # type: ignore[no-untyped-def]
    import csv

    from covidct.preprocessing.io.series_reader import read_series
    from covidct.preprocessing.lung_segmentation import segment_lungs
    from covidct.preprocessing.slice_selection import select_by_lung_area

    with open(real_data_dir / "labels.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    total = kept_total = 0
    print("\nseries      slices  kept  infected kept  (paper002: kept, infected kept)")
    for name in ("P002", "cap002", "normal002"):
        volume = read_series(real_data_dir / name)
        n = volume.hu.shape[0]
        infected = np.zeros(n, dtype=bool)
        for row in rows:
            if row["patient"] == name and row["infected"] == "1":
                infected[int(row["slice_rank"])] = True
        kept = select_by_lung_area(segment_lungs(volume.hu, volume.spacing_mm).lung_area_mm2)
        paper = select_open_lung_slices(volume.hu).indices
        print(f"{name:10s} {n:7d} {kept.size:5d} {int(infected[kept].sum()):5d}/{int(infected.sum()):<5d}"
              f"  ({paper.size}, {int(infected[paper].sum())})")
        assert infected[kept].sum() >= 0.97 * infected.sum()
        assert kept.size < n
        total += n
        kept_total += kept.size
    assert kept_total <= 0.75 * total  # at least 25 % of all slices discarded
