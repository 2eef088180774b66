"""Lung coverage: a clipped margin of the bases or apices is answered with ``partial_coverage``,
a real part of the lungs outside the scan is ``lungs_incomplete``.

Crops of known size (the removed fraction measured on the whole series' own segmentation)
of phantoms (always run) and of the sample series (``real_data``).
"""

from __future__ import annotations

import math
import re
from types import MappingProxyType

import numpy as np
import pytest

from covidct.errors import ConfigError, VolumeError
from covidct.preprocessing.assessment import WARNING_CODES, Assessment, assess
from covidct.preprocessing.config import AssessmentConfig, LungSegmentationConfig
from covidct.preprocessing.lung_coverage import lung_coverage
from covidct.preprocessing.lung_segmentation import segment_lungs
from covidct.preprocessing.synthetic.case_transforms import crop_slices
from covidct.preprocessing.synthetic.phantom import make_phantom
from covidct.preprocessing.synthetic.trust_cases import CoverageCrop, coverage_crops
from covidct.preprocessing.volume import CTVolume

CONFIG = AssessmentConfig()
LIMIT = CONFIG.max_missing_lung_fraction
SERIES = ("P002", "cap002", "normal002")
#: (slices, pixels, seed): 8.86 mm, 5.17 mm and 2.58 mm slices of the adult geometry.
PHANTOMS = ((35, 64, 0), (60, 128, 1), (120, 256, 2))
OTHER_END = MappingProxyType({"inferior": "superior", "superior": "inferior"})
WHERE = MappingProxyType({"inferior": r"below the first slice \(lung bases\)",
                          "superior": r"above the last slice \(lung apices\)"})
NUMBER = r"\d+(\.\d+)?(e-\d+)?"
#: lungs_incomplete with the lungs cut at one end only, or at both (each end's share named).
ONE_END = (r"^An estimated {n} % of the lungs lies {where}; expected at most 5 % \(the scan must cover the whole "
           r"lungs\)\.$")
BOTH_ENDS = (r"^An estimated {n} % of the lungs lies outside the scan \({n} % below the first slice \(lung bases\), "
             r"{n} % above the last slice \(lung apices\)\); expected at most 5 % \(the scan must cover the whole "
             r"lungs\)\.$")


def _assess(volume: CTVolume) -> Assessment:
    return assess(segment_lungs(volume.hu, volume.spacing_mm, LungSegmentationConfig()), volume.hu,
                  volume.spacing_mm, CONFIG)


def _check_crop(crop: CoverageCrop, result: Assessment, other_end: float = 0.0) -> None:
    """The crop got its expected answer; at the end not cut, at most ``other_end`` is estimated missing."""
    m = result.measurements
    context = (crop.name, crop.removed_fraction, result.reasons, result.warnings)
    other = m[f"missing_lung_fraction_{OTHER_END[crop.end]}"]
    assert 0.0 <= other <= other_end, context
    estimated = m[f"missing_lung_fraction_{crop.end}"]
    assert m["missing_lung_fraction"] == pytest.approx(estimated + other)
    if crop.assessable:
        assert crop.removed_fraction < 0.02, context
        assert result.assessable, context
        assert [w.code for w in result.warnings] == ["partial_coverage"], context
        assert 0.0 < estimated <= LIMIT, context
        assert m["missing_lung_ml"] > 0.0
    else:
        assert crop.removed_fraction >= 0.2, context
        assert "lungs_incomplete" in result.codes and not result.warnings, context
        assert estimated > LIMIT
        message = next(r.message for r in result.reasons if r.code == "lungs_incomplete")
        pattern = BOTH_ENDS if other > 0 else ONE_END.replace("{where}", WHERE[crop.end])
        assert re.match(pattern.replace("{n}", NUMBER), message), message


# --- the estimator on profiles of known shape ---------------------------------------------------


def _cone(slices: int, dz: float, slope: float) -> np.ndarray:
    """Lung area rising linearly from zero (``slope`` mm^2 per mm) over ``slices`` and back,
    with 5 lung-free slices at each end."""
    rise = slope * dz * np.arange(1, slices + 1)
    return np.concatenate([np.zeros(5), rise, rise[::-1], np.zeros(5)])


def test_lungs_inside_the_scan_miss_nothing() -> None:
    cov = lung_coverage(_cone(30, 2.0, 200.0), 2.0)
    assert cov.missing_ml == 0.0 and cov.missing_fraction == 0.0
    assert cov.inferior.taper_mm == 0.0 and math.isnan(cov.inferior.slope_mm2_per_mm)
    assert cov.measured_ml == pytest.approx(2 * 200.0 * 2.0 * 2.0 * sum(range(1, 31)) / 1000.0)


def test_a_clipped_linear_taper_is_extrapolated_to_its_zero() -> None:
    dz, slope = 2.0, 200.0
    area = _cone(20, dz, slope)[5 + 3:]  # the lowest 3 lung slices cut: 1600 mm^2 on the first slice
    cov = lung_coverage(area, dz)
    assert cov.inferior.end_area_mm2 == pytest.approx(4 * slope * dz)
    assert cov.inferior.slope_mm2_per_mm == pytest.approx(slope)
    assert cov.inferior.taper_mm == pytest.approx(4 * dz)  # 1600 mm^2 / 200 mm^2 per mm = 8 mm
    assert cov.inferior.missing_ml == pytest.approx(0.5 * 1600.0 * 8.0 / 1000.0)
    assert cov.superior.missing_ml == 0.0
    assert cov.inferior_fraction == pytest.approx(cov.inferior.missing_ml / (cov.measured_ml + cov.missing_ml))
    # the same slices 4 mm apart: half the slope per mm, twice the taper in mm
    wider = lung_coverage(area, 2 * dz)
    assert wider.inferior.taper_mm == pytest.approx(2 * cov.inferior.taper_mm)
    assert wider.inferior_fraction == pytest.approx(cov.inferior_fraction)


def test_only_the_outermost_fit_window_is_fitted() -> None:
    dz = 2.0
    near = 300.0 + 100.0 * dz * np.arange(11)  # 20 mm: 11 slices at 2 mm, 100 mm^2 per mm
    far = np.full(40, 3000.0)  # a step beyond the window must not change the slope
    cov = lung_coverage(np.concatenate([near, far, np.zeros(3)]), dz)
    assert cov.inferior.slope_mm2_per_mm == pytest.approx(100.0)
    assert cov.inferior.taper_mm == pytest.approx(3.0)
    longer = lung_coverage(np.concatenate([near, far, np.zeros(3)]), dz, AssessmentConfig(coverage_fit_mm=40.0))
    assert longer.inferior.slope_mm2_per_mm < 90.0  # 40 mm take in 10 slices of the plateau


@pytest.mark.parametrize("shape", ["flat", "rising_outward"])
def test_a_cut_through_the_middle_gets_the_flattest_plausible_taper(shape: str) -> None:
    peak = 25000.0
    body = {"flat": np.full(60, peak), "rising_outward": np.linspace(peak, 0.8 * peak, 60)}[shape]
    area = np.concatenate([body, np.linspace(0.8 * peak, 0.0, 40)])  # cut at the bottom, whole at the top
    cov = lung_coverage(area, 2.0)
    assert cov.inferior.taper_mm == pytest.approx(CONFIG.max_taper_mm)  # 120 mm from the largest area
    assert cov.inferior.missing_ml == pytest.approx(0.5 * peak * CONFIG.max_taper_mm / 1000.0)
    assert cov.superior.missing_ml == 0.0
    assert cov.missing_fraction > 0.25


def test_one_slice_of_lung_gets_the_flattest_taper_at_both_ends() -> None:
    cov = lung_coverage(np.array([0.0, 20000.0, 0.0])[1:2], 2.0)
    assert math.isnan(cov.inferior.slope_mm2_per_mm)
    assert cov.inferior.taper_mm == cov.superior.taper_mm == pytest.approx(CONFIG.max_taper_mm)
    assert cov.missing_fraction == pytest.approx(2 * 1200.0 / (40.0 + 2 * 1200.0))


def test_no_lung_has_no_fraction() -> None:
    cov = lung_coverage(np.zeros(20), 2.0)
    assert cov.missing_ml == 0.0 and cov.measured_ml == 0.0
    assert math.isnan(cov.missing_fraction) and math.isnan(cov.measurements()["missing_lung_fraction_inferior"])


def test_bad_profiles_and_spacings_are_errors() -> None:
    with pytest.raises(VolumeError, match=r"lung_coverage: lung_area_mm2 has shape \(2, 3\); expected \[N\] finite"):
        lung_coverage(np.ones((2, 3)), 2.0)
    with pytest.raises(VolumeError, match=r"lung_area_mm2 has shape \(3,\); expected \[N\] finite areas >= 0 mm\^2"):
        lung_coverage(np.array([1.0, -1.0, 0.0]), 2.0)
    with pytest.raises(VolumeError, match=r"lung_area_mm2 has shape \(0,\)"):
        lung_coverage(np.array([]), 2.0)
    with pytest.raises(VolumeError, match=r"slice_spacing_mm=nan; expected a finite spacing > 0 mm"):
        lung_coverage(np.ones(4), float("nan"))


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("max_missing_lung_fraction", 1.5, r"\[0.0, 1.0\]"), ("coverage_fit_mm", 0.5, r"\[1.0, 200.0\]"),
    ("max_taper_mm", 0.0, r"\[1.0, 1000.0\]")])
def test_config_validation_names_the_coverage_field(name: str, value: float, expected: str) -> None:
    with pytest.raises(ConfigError, match=rf"AssessmentConfig.{name}={value}; expected a number in {expected}"):
        AssessmentConfig(**{name: value})


def test_warning_codes() -> None:
    assert WARNING_CODES == ("partial_coverage",)


# --- phantoms: complete, clipped by one or two slices, 20 % missing --------------------------------


@pytest.fixture(scope="module", params=PHANTOMS, ids=lambda p: f"{p[0]}x{p[1]}")
def phantom_crops(request):  # type: ignore[no-untyped-def]
    num_slices, size, seed = request.param
    volume = make_phantom(num_slices=num_slices, size=size, seed=seed, covid=seed % 2 == 0).volume
    seg = segment_lungs(volume.hu, volume.spacing_mm, LungSegmentationConfig())
    return volume, assess(seg, volume.hu, volume.spacing_mm, CONFIG), coverage_crops(volume, seg.lung_area_mm2)


def test_whole_phantom_is_complete(phantom_crops) -> None:  # type: ignore[no-untyped-def]
    _, whole, _ = phantom_crops
    assert whole.assessable and whole.warnings == (), (whole.reasons, whole.warnings)
    for key in ("missing_lung_fraction_inferior", "missing_lung_fraction_superior", "missing_lung_fraction",
                "missing_lung_ml"):
        assert whole.measurements[key] == 0.0, key


def test_phantom_crops_get_their_answer(phantom_crops) -> None:  # type: ignore[no-untyped-def]
    volume, _, crops = phantom_crops
    assert [c.name for c in crops] == ["inferior_1_slice", "inferior_2_slice", "inferior_20pct",
                                       "superior_1_slice", "superior_2_slice", "superior_20pct"]
    for crop in crops:
        _check_crop(crop, _assess(crop.volume))


def test_both_ends_cut_name_both(phantom_crops) -> None:  # type: ignore[no-untyped-def]
    volume, _, _ = phantom_crops
    result = _assess(crop_slices(volume, 0.3, 0.7))
    message = next(r.message for r in result.reasons if r.code == "lungs_incomplete")
    assert re.match(BOTH_ENDS.replace("{n}", NUMBER), message), message
    m = result.measurements
    assert m["missing_lung_fraction"] == pytest.approx(
        m["missing_lung_fraction_inferior"] + m["missing_lung_fraction_superior"])


def test_coverage_crops_cut_where_they_say() -> None:
    phantom = make_phantom(num_slices=40, size=64, covid=False, seed=1)
    area = phantom.lung_mask.sum(axis=(1, 2)).astype(np.float64)  # exact lung, pixels: any unit works
    lung = np.flatnonzero(area)
    crops = {c.name: c for c in coverage_crops(phantom.volume, area)}
    hu = phantom.volume.hu
    assert np.array_equal(crops["inferior_1_slice"].volume.hu, hu[lung[0] + 1:])
    assert np.array_equal(crops["superior_2_slice"].volume.hu, hu[:lung[-1] - 1])
    assert crops["inferior_2_slice"].removed_fraction == pytest.approx(area[lung[0]: lung[0] + 2].sum() / area.sum())
    for end in ("inferior", "superior"):
        crop = crops[f"{end}_20pct"]
        kept = crop.volume.num_slices
        assert crop.removed_fraction >= 0.2 and crop.expected_code == "lungs_incomplete" and not crop.assessable
        # the smallest such crop: one slice more would remove less than 20 %
        start, stop = (hu.shape[0] - kept, hu.shape[0]) if end == "inferior" else (0, kept)
        one_more = area[start - 1: stop] if end == "inferior" else area[start: stop + 1]
        assert 1.0 - one_more.sum() / area.sum() < 0.2
    with pytest.raises(ConfigError, match=r"coverage_crops: lung_area_mm2 has shape \(39,\) with lung on 0 slices; "
                                          r"expected \[40\] areas >= 0 mm\^2 with lung on more than 2 slices"):
        coverage_crops(phantom.volume, area[1:])
    with pytest.raises(ConfigError, match=r"coverage_crops: removed_fraction=1.0; expected a number in \(0, 1\)"):
        coverage_crops(phantom.volume, area, removed_fraction=1.0)
    with pytest.raises(ConfigError, match=r"coverage_crops: clipped_slices=\(0,\); expected integers >= 1"):
        coverage_crops(phantom.volume, area, clipped_slices=(0,))


# --- the sample series --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_series(real_data_dir):  # type: ignore[no-untyped-def]
    from covidct.preprocessing.io.series_reader import read_series

    out = {}
    for name in SERIES:
        volume = read_series(real_data_dir / name)
        seg = segment_lungs(volume.hu, volume.spacing_mm, LungSegmentationConfig())
        out[name] = (volume, seg, assess(seg, volume.hu, volume.spacing_mm, CONFIG))
    return out


@pytest.mark.real_data
@pytest.mark.parametrize("name", SERIES)
def test_whole_real_series_are_answered(real_series, name: str) -> None:  # type: ignore[no-untyped-def]
    _, _, result = real_series[name]
    m = result.measurements
    assert result.assessable, result.reasons
    assert m["missing_lung_fraction_superior"] == 0.0
    if name == "cap002":  # its lowest slice still shows lung bases: a clipped margin
        assert m["first_slice_area_fraction"] > 0.05
        assert [w.code for w in result.warnings] == ["partial_coverage"]
        assert 0.0 < m["missing_lung_fraction_inferior"] < 0.01
        assert re.match(
            r"^The lungs reach the end of the scan: an estimated 0\.\d+ % of the lungs \(\d+(\.\d+)? ml\) lies below "
            r"the first slice \(lung bases\); expected at most 5 %, so the answer stands\.$",
            result.warnings[0].message)
    else:
        assert result.warnings == () and m["missing_lung_fraction"] == 0.0


@pytest.mark.real_data
@pytest.mark.parametrize("name", SERIES)
def test_real_series_crops_get_their_answer(real_series, name: str) -> None:  # type: ignore[no-untyped-def]
    volume, seg, _ = real_series[name]
    crops = coverage_crops(volume, seg.lung_area_mm2)
    assert len(crops) == 6
    other_end = 0.01 if name == "cap002" else 0.0  # cap002's lowest slice already shows lung
    for crop in crops:
        _check_crop(crop, _assess(crop.volume), other_end)


@pytest.mark.real_data
def test_bases_clipped_beyond_a_tenth_of_the_largest_area_are_answered(real_series) -> None:  # type: ignore[no-untyped-def]
    """cap002 without its lowest 3 slices: the first slice holds more than 10 % of the largest
    lung area (refused by an end-slice rule), yet only a few mm of the bases are outside."""
    volume, seg, _ = real_series["cap002"]
    crop = next(c for c in coverage_crops(volume, seg.lung_area_mm2, clipped_slices=(3,))
                if c.name == "inferior_3_slice")
    result = _assess(crop.volume)
    assert result.measurements["first_slice_area_fraction"] > 0.1
    assert result.assessable and [w.code for w in result.warnings] == ["partial_coverage"]
    assert result.measurements["missing_lung_fraction"] < 0.01
