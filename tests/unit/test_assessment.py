"""Plausibility checks: adult chests pass, everything else is refused with the right reason."""

from __future__ import annotations

import json

import numpy as np
import pytest

from covidct.errors import ConfigError, VolumeError
from covidct.preprocessing.assessment import REASON_CODES, WARNING_CODES, Assessment, Reason, assess
from covidct.preprocessing.config import PIPELINE_CONFIG_VERSION, AssessmentConfig, PipelineConfig
from covidct.preprocessing.lung_segmentation import segment_lungs
from covidct.preprocessing.synthetic.phantom import make_phantom

SERIES = ("P002", "cap002", "normal002")


def _assess(hu: np.ndarray, spacing: tuple[float, float, float]) -> Assessment:
    return assess(segment_lungs(hu, spacing), hu, spacing)


def test_reason_codes_are_fixed() -> None:
    assert REASON_CODES == ("no_body", "no_lungs", "lungs_incomplete", "too_few_lung_slices",
                            "implausible_lung_volume", "hu_calibration", "implausible_spacing", "orientation",
                            "slice_gap")
    assert WARNING_CODES == ("partial_coverage",)
    assert Assessment(reasons=()).assessable
    assert not Assessment(reasons=(Reason("no_body", "x"),)).assessable


@pytest.mark.parametrize(("num_slices", "size", "seed", "covid"),
                         [(35, 64, 0, True), (60, 128, 1, False), (120, 256, 2, True), (40, 512, 3, True)])
def test_phantoms_are_assessable(num_slices: int, size: int, seed: int, covid: bool) -> None:
    volume = make_phantom(num_slices=num_slices, size=size, seed=seed, covid=covid).volume
    result = _assess(volume.hu, volume.spacing_mm)
    assert result.reasons == (), result.reasons
    assert 3000.0 <= result.measurements["lung_volume_ml"] <= 7500.0
    assert result.measurements["air_hu"] == pytest.approx(-1000.0, abs=20.0)


@pytest.fixture(scope="module")
def chest() -> tuple[np.ndarray, tuple[float, float, float]]:
    volume = make_phantom(num_slices=80, size=128, seed=4).volume
    return volume.hu, volume.spacing_mm


def _shift(hu: np.ndarray, delta: int) -> np.ndarray:
    return np.clip(hu.astype(np.int32) + delta, -32768, 32767).astype(np.int16)


CASES = {
    "hu_plus_1024": (lambda hu, sp: (_shift(hu, 1024), sp), "hu_calibration"),
    "hu_minus_1024": (lambda hu, sp: (_shift(hu, -1024), sp), "hu_calibration"),
    "all_air": (lambda hu, sp: (np.full_like(hu, -1000), sp), "no_body"),
    "uniform_noise": (lambda hu, sp: (np.random.default_rng(1).integers(-1024, 3072, hu.shape).astype(np.int16), sp),
                      "hu_calibration"),
    "neck_only": (lambda hu, sp: (hu[int(0.85 * len(hu)):], sp), "lungs_incomplete"),
    "base_only": (lambda hu, sp: (hu[: int(0.4 * len(hu))], sp), "lungs_incomplete"),
    "rotated_90": (lambda hu, sp: (np.ascontiguousarray(np.rot90(hu, axes=(1, 2))), sp), "orientation"),
    "flipped_front_back": (lambda hu, sp: (np.ascontiguousarray(hu[:, ::-1, :]), sp), "orientation"),
    "pixel_spacing_100mm": (lambda hu, sp: (hu, (sp[0], 100.0, 100.0)), "implausible_spacing"),
    "slice_spacing_1e9mm": (lambda hu, sp: (hu, (1e9, sp[1], sp[2])), "implausible_spacing"),
    "slice_spacing_0.01mm": (lambda hu, sp: (hu, (0.01, sp[1], sp[2])), "implausible_spacing"),
    "one_slice": (lambda hu, sp: (hu[len(hu) // 2: len(hu) // 2 + 1], sp), "no_body"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_phantom_transforms_are_refused_with_the_reason(chest, case: str) -> None:  # type: ignore[no-untyped-def]
    transform, code = CASES[case]
    hu, spacing = transform(*chest)
    result = _assess(hu, spacing)
    assert not result.assessable
    assert code in result.codes, result.reasons
    assert set(result.codes) <= set(REASON_CODES)
    for reason in result.reasons:
        assert reason.message.endswith(".") and "expected" in reason.message


def test_trust_cases_are_refused() -> None:
    trust_cases = pytest.importorskip("covidct.preprocessing.synthetic.trust_cases").trust_cases
    for case in trust_cases():
        volume = case.volume
        result = _assess(volume.hu, volume.spacing_mm)
        assert set(result.codes) & set(case.expected_reasons), (case.name, result.codes)


def test_messages_state_value_and_range(chest) -> None:  # type: ignore[no-untyped-def]
    hu, spacing = chest
    result = _assess(hu, (spacing[0], 100.0, 100.0))
    assert result.reasons[0] == Reason(
        "implausible_spacing", "The pixel spacing y is 100 mm; expected 0.2 to 6.0 mm.")
    assert result.measurements["pixel_spacing_y_mm"] == 100.0
    air = _assess(_shift(hu, 1024), spacing)
    assert any(r.code == "hu_calibration" and "expected -1100.0 to -900.0 HU" in r.message for r in air.reasons)
    with pytest.raises(VolumeError, match=r"assess: hu has shape \(3, 128, 128\); the segmentation was computed on"):
        assess(segment_lungs(hu, spacing), hu[:3], spacing)


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"AssessmentConfig.lung_volume_ml=\(5000.0, 1000.0\); expected \(low"):
        AssessmentConfig(lung_volume_ml=(5000.0, 1000.0))
    with pytest.raises(ConfigError, match=r"AssessmentConfig.min_lung_slices=0; expected an integer in \[1, 10000\]"):
        AssessmentConfig(min_lung_slices=0)
    with pytest.raises(ConfigError, match=r"max_missing_lung_fraction=2.0; expected a number in \[0.0, 1.0\]"):
        AssessmentConfig(max_missing_lung_fraction=2.0)


def test_version_1_pipeline_config_loads_with_defaults(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = PipelineConfig().to_dict()
    for key in ("lung_segmentation", "assessment"):
        data.pop(key)
    for key in ("rule", "min_lung_area_fraction"):
        data["selection"].pop(key)
    data["version"] = 1
    path = tmp_path / "pipeline_config.json"
    path.write_text(json.dumps(data))
    loaded = PipelineConfig.load(path)
    assert loaded.version == PIPELINE_CONFIG_VERSION == 3
    assert loaded.assessment == AssessmentConfig()
    assert loaded.selection.rule == "paper002"  # version 1 selected by paper 002's rule
    assert PipelineConfig.from_dict(json.loads(PipelineConfig().to_json())) == PipelineConfig()


def test_version_2_pipeline_config_migrates_the_coverage_and_gap_settings() -> None:
    data = json.loads(PipelineConfig().to_json())
    data["version"] = 2
    data["assessment"].pop("gap_tolerance")
    for key in ("coverage_fit_mm", "max_taper_mm", "max_missing_lung_fraction"):
        data["assessment"].pop(key)
    data["assessment"]["max_end_area_fraction"] = 0.1  # the end-slice rule version 3 replaced
    data["reader"]["gap_tolerance"] = 0.8  # gap detection moved from the reader to the assessment
    loaded = PipelineConfig.from_dict(data)
    assert loaded.version == 3
    assert loaded.assessment.gap_tolerance == 0.8
    assert loaded.assessment.max_missing_lung_fraction == AssessmentConfig().max_missing_lung_fraction
    data["version"] = 3
    with pytest.raises(ConfigError, match="max_end_area_fraction"):
        PipelineConfig.from_dict(data)


@pytest.fixture(scope="module")
def real_volumes(real_data_dir):  # type: ignore[no-untyped-def]
    from covidct.preprocessing.io.series_reader import read_series

    return {name: read_series(real_data_dir / name) for name in SERIES}


@pytest.mark.real_data
@pytest.mark.parametrize("name", SERIES)
def test_real_series_are_assessable(real_volumes, name: str) -> None:  # type: ignore[no-untyped-def]
    volume = real_volumes[name]
    result = _assess(volume.hu, volume.spacing_mm)
    assert result.reasons == (), result.reasons
    assert 3000.0 <= result.measurements["lung_volume_ml"] <= 7500.0


@pytest.mark.real_data
@pytest.mark.parametrize(("case", "code"), [("neck_only", "lungs_incomplete"), ("base_only", "lungs_incomplete"),
                                            ("rotated_90", "orientation"), ("flipped_front_back", "orientation"),
                                            ("hu_minus_1024", "hu_calibration")])
def test_real_series_transforms_are_refused(real_volumes, case: str, code: str) -> None:  # type: ignore[no-untyped-def]
    volume = real_volumes["P002"]
    hu, spacing = CASES[case][0](volume.hu, volume.spacing_mm)
    result = _assess(hu, spacing)
    assert code in result.codes, result.reasons
