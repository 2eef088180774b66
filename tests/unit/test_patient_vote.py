"""Patient vote, lung volume and lesion burden against hand counts."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from covidct.errors import ConfigError, VolumeError
from covidct.preprocessing.config import VoteConfig
from covidct.preprocessing.patient_vote import lesion_burden_percent, lung_volume_ml, patient_vote


def test_exactly_thirty_percent_is_positive() -> None:
    p = np.array([0.9, 0.5, 0.7, 0.1, 0.2, 0.3, 0.0, 0.49, 0.2, 0.1])  # 3 of 10 >= 0.5
    result = patient_vote(p)
    assert result.positive is True
    assert (result.n_selected, result.n_positive) == (10, 3)
    assert result.positive_fraction == pytest.approx(0.3)
    assert result.threshold == pytest.approx(0.3)


def test_below_the_fraction_is_negative_and_column_input_works() -> None:
    p = np.array([[0.9], [0.6], [0.1], [0.2], [0.3], [0.0], [0.49], [0.2], [0.1], [0.4]], np.float32)
    result = patient_vote(p)  # 2 of 10
    assert result.positive is False and result.n_positive == 2
    assert patient_vote(p, VoteConfig(positive_fraction=0.10)).positive is True
    assert patient_vote(p, VoteConfig(slice_threshold=0.45)).n_positive == 3


@pytest.mark.parametrize("fraction", ["0.3", "0.1", "0.35"])
def test_verdict_matches_exact_rational_comparison(fraction: str) -> None:
    cfg = VoteConfig(positive_fraction=float(fraction))
    for n in range(1, 41):
        for k in range(n + 1):
            p = np.r_[np.full(k, 0.8), np.full(n - k, 0.2)]
            expected = Fraction(k, n) >= Fraction(fraction)
            assert patient_vote(p, cfg).positive is expected, (n, k)


def test_vote_errors_name_the_problem() -> None:
    with pytest.raises(VolumeError, match=r"expected \[K\] or \[K, 1\] with K >= 1"):
        patient_vote(np.array([]))
    with pytest.raises(VolumeError, match=r"1 of 2 probabilities are not finite"):
        patient_vote(np.array([0.5, np.nan]))
    with pytest.raises(VolumeError, match=r"range 0.2..1.5; expected values in \[0, 1\]"):
        patient_vote(np.array([0.2, 1.5]))
    with pytest.raises(ConfigError, match=r"VoteConfig.positive_fraction=1.5"):
        patient_vote(np.array([0.2]), VoteConfig(positive_fraction=1.5))


def test_lung_volume_in_ml() -> None:
    lung = np.zeros((2, 40, 50), dtype=bool)
    lung[0, :20, :25] = True  # 500 px
    lung[1, :10, :50] = True  # 500 px
    # 1000 px * 0.5 mm^2 * 2 mm = 1000 mm^3 = 1 ml
    assert lung_volume_ml(lung, 0.5, 2.0) == pytest.approx(1.0)
    assert lung_volume_ml(lung.astype(np.uint8), 0.25, 1.0) == pytest.approx(0.25)
    with pytest.raises(VolumeError, match=r"pixel_area_mm2=0.0; expected a finite value > 0"):
        lung_volume_ml(lung, 0.0, 2.0)


def test_lesion_burden_counts_infection_inside_the_lung_only() -> None:
    lung = np.zeros((1, 8, 8), dtype=bool)
    lung[0, :4, :4] = True  # 16 px
    infection = np.zeros_like(lung)
    infection[0, :2, :2] = True  # 4 px inside
    infection[0, 6:, 6:] = True  # 4 px outside the lung: ignored
    assert lesion_burden_percent(infection, lung) == pytest.approx(25.0)
    assert lesion_burden_percent(infection, np.zeros_like(lung)) == 0.0
    with pytest.raises(VolumeError, match=r"infection mask shape \(1, 8, 8\) differs from lung mask shape \(1, 4, 4\)"):
        lesion_burden_percent(infection, lung[:, :4, :4])
