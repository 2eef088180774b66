"""Missing slices: a gap with lung beside it is ``slice_gap`` (where and how large); a gap
outside the lungs leaves the answer and the whole-lung figures as they were."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from covidct.errors import TensorInputError
from covidct.serving.request_validation import validate_positions
from covidct.preprocessing.assessment import assess
from covidct.preprocessing.config import AssessmentConfig, LungSegmentationConfig
from covidct.preprocessing.lung_segmentation import segment_lungs
from covidct.preprocessing.slice_gaps import SliceGap, find_gaps, gaps_at_lung
from covidct.preprocessing.synthetic.phantom import make_phantom


def test_find_gaps_by_the_median_spacing():
    positions = np.array([0.0, 2.0, 4.0, 6.0, 26.0, 28.0, 30.9])
    gaps = find_gaps(positions, 2.0, 0.5)
    assert gaps == (SliceGap(3, 6.0, 26.0, 2.0),)
    assert gaps[0].width_mm == 20.0 and gaps[0].missing_slices == 9
    assert gaps[0].describe() == "between 6 and 26 mm (20 mm, about 9 slices of 2 mm)"
    assert find_gaps(positions, 2.0, 10.0) == ()
    assert find_gaps(np.array([5.0]), 2.0, 0.5) == ()
    area = np.array([0, 0, 0, 0, 0, 5.0, 5.0])
    assert gaps_at_lung(gaps, area) == ()  # slices 3 and 4 hold no lung
    area[4] = 1.0
    assert gaps_at_lung(gaps, area) == gaps


@pytest.fixture(scope="module")
def chest():
    volume = make_phantom(70, size=96, covid=False, seed=5).volume
    seg = segment_lungs(volume.hu, volume.spacing_mm, LungSegmentationConfig())
    return volume, seg


def _assess(volume, keep):
    hu = np.ascontiguousarray(volume.hu[keep])
    seg = segment_lungs(hu, volume.spacing_mm, LungSegmentationConfig())
    return assess(seg, hu, volume.spacing_mm, AssessmentConfig(), positions_mm=volume.positions_mm[keep])


def test_ten_missing_slices_inside_the_lungs_are_not_assessable(chest):
    volume, seg = chest
    middle = int(seg.lung_slices[len(seg.lung_slices) // 2])
    keep = np.r_[0:middle, middle + 10:volume.num_slices]
    result = _assess(volume, keep)
    assert not result.assessable
    gap = [r for r in result.reasons if r.code == "slice_gap"]
    z = volume.spacing_mm[0]
    start, end = volume.positions_mm[middle - 1], volume.positions_mm[middle + 10]
    assert len(gap) == 1
    where = f"between {start:.4g} and {end:.4g} mm ({end - start:.3g} mm, about 10 slices of {z:.3g} mm)"
    assert where in gap[0].message
    assert result.measurements["slice_gaps"] == 1.0
    assert result.measurements["largest_gap_mm"] == pytest.approx(11 * z)


def test_a_gap_outside_the_lungs_keeps_the_answer_and_the_figures(chest):
    volume, seg = chest
    first = int(seg.lung_slices[0])
    assert first >= 4, "the phantom must start below the lungs"
    keep = np.r_[0:1, 3:volume.num_slices]  # two slices missing below the lungs
    whole = assess(seg, volume.hu, volume.spacing_mm, AssessmentConfig(), positions_mm=volume.positions_mm)
    result = _assess(volume, keep)
    assert "slice_gap" not in {r.code for r in result.reasons}
    assert result.assessable == whole.assessable
    assert result.measurements["slice_gaps"] == 1.0
    assert result.measurements["lung_volume_ml"] == pytest.approx(whole.measurements["lung_volume_ml"], rel=0.01)
    assert result.measurements["lung_extent_mm"] == pytest.approx(whole.measurements["lung_extent_mm"])


def test_positions_tensor_is_validated():
    assert validate_positions(np.array([0, 2, 5], np.float32), 3).tolist() == [0.0, 2.0, 5.0]
    with pytest.raises(TensorInputError, match=r"SLICE_POSITIONS_MM: got float32 \[2\]; expected float32 \[3\]"):
        validate_positions(np.array([0, 2], np.float32), 3)
    with pytest.raises(TensorInputError, match=r"slices 0 and 1 are at 2 and 1 mm; expected strictly ascending"):
        validate_positions(np.array([2, 1, 5], np.float32), 3)
    with pytest.raises(TensorInputError, match=r"got dtype float64 \[3\]; expected float32"):
        validate_positions(np.array([0, 1, 2], np.float64), 3)


def test_drop_slices_keeps_positions_and_names(chest):
    from covidct.errors import ConfigError
    from covidct.preprocessing.synthetic.case_transforms import drop_slices

    volume, _ = chest
    named = dataclasses.replace(volume, source_names=tuple(f"IM{i:04d}" for i in range(volume.num_slices)))
    dropped = drop_slices(named, 20, 10)
    assert dropped.num_slices == volume.num_slices - 10
    assert np.array_equal(dropped.hu[20], volume.hu[30])
    assert dropped.positions_mm[20] - dropped.positions_mm[19] == pytest.approx(11 * volume.spacing_mm[0])
    assert dropped.source_names[19:21] == ("IM0019", "IM0030")
    with pytest.raises(ConfigError, match=r"drop_slices: start=0, count=3; expected 1 <= start"):
        drop_slices(volume, 0, 3)
