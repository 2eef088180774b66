"""The Triton models' step functions and the in-process reference chain."""

from __future__ import annotations

import numpy as np
import pytest

from covidct.errors import ConfigError, TensorInputError
from preprocessing.config import ModelInputConfig, PipelineConfig
from covidct.serving.steps import (
    lung_select_step,
    preprocess_step,
    run_pipeline_reference,
    vote_step,
)
from preprocessing.volume import CTVolume

SIZE = 128
SPACING = (2.0, 1.5, 1.5)
RADII = [0, 3, 7, 12, 17, 20, 20, 17, 12, 7, 3, 0]  # lungs closed at both ends


def _chest() -> tuple[np.ndarray, np.ndarray]:
    """HU volume [12, 128, 128] with two disc lungs whose radius follows RADII; true lung mask."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    body = (yy - 64) ** 2 + (xx - 64) ** 2 <= 56**2
    hu = np.full((len(RADII), SIZE, SIZE), -1000, dtype=np.int16)
    truth = np.zeros(hu.shape, dtype=bool)
    for i, r in enumerate(RADII):
        hu[i][body] = 40
        if r:
            truth[i] = ((yy - 72) ** 2 + (xx - 40) ** 2 <= r**2) | ((yy - 72) ** 2 + (xx - 88) ** 2 <= r**2)
            hu[i][truth[i]] = -860
    return hu, truth


def _volume() -> tuple[CTVolume, np.ndarray]:
    hu, truth = _chest()
    volume = CTVolume(
        hu=hu, spacing_mm=SPACING, positions_mm=np.arange(len(RADII)) * SPACING[0],
        series_key="test", source_format="array",
    )
    return volume, truth


def test_lung_select_step_outputs() -> None:
    hu, _ = _chest()
    out = lung_select_step(hu, PipelineConfig())
    assert set(out) == {"SELECTED_INDICES", "SELECTED_HU", "DARK_COUNTS"}
    assert out["SELECTED_INDICES"].dtype == np.int32 and out["DARK_COUNTS"].dtype == np.int32
    assert out["DARK_COUNTS"].shape == (len(RADII),)
    idx = out["SELECTED_INDICES"]
    assert 0 not in idx and len(RADII) - 1 not in idx
    assert {5, 6} <= set(idx.tolist())
    np.testing.assert_array_equal(out["SELECTED_HU"], hu[idx])
    assert out["SELECTED_HU"].dtype == np.int16


def test_preprocess_step_outputs_and_pixel_area() -> None:
    hu, truth = _chest()
    cfg = PipelineConfig(
        classifier_input=ModelInputConfig(size=64, mask_channels=True),
        segmenter_input=ModelInputConfig(size=32),
    )
    out = preprocess_step(hu[4:8], np.array(SPACING, np.float32), cfg)
    assert out["CLASSIFIER_INPUT"].shape == (4, 3, 64, 64) and out["CLASSIFIER_INPUT"].dtype == np.float32
    assert out["SEGMENTER_INPUT"].shape == (4, 1, 32, 32) and out["SEGMENTER_INPUT"].dtype == np.float32
    assert out["LUNG_MASK"].shape == (4, 32, 32) and out["LUNG_MASK"].dtype == np.uint8
    area = out["PIXEL_AREA_MM2"]
    assert area.dtype == np.float32 and area.shape == (1,)
    assert area[0] == pytest.approx((1.5 * 128 / 32) ** 2)  # 36 mm^2 per mask pixel
    # The resized mask covers the true lung area within a few percent.
    true_mm2 = truth[4:8].sum() * 1.5 * 1.5
    assert out["LUNG_MASK"].sum() * area[0] == pytest.approx(true_mm2, rel=0.08)


def test_preprocess_step_refuses_a_cropped_segmenter() -> None:
    cfg = PipelineConfig(segmenter_input=ModelInputConfig(size=32, lung_crop=True))
    with pytest.raises(ConfigError, match=r"segmenter_input.lung_crop=True is not supported"):
        preprocess_step(np.zeros((1, 32, 32), np.int16), np.ones(3, np.float32), cfg)


def _vote_inputs() -> dict[str, np.ndarray]:
    lung = np.zeros((4, 8, 8), dtype=np.uint8)
    lung[:, :4, :] = 1  # 32 px per slice, 128 in all
    infection = np.zeros((4, 1, 8, 8), dtype=np.float32)
    infection[0, 0, :2, :4] = 0.9  # 8 px infected inside the lung
    infection[1, 0, 0, :4] = 0.5  # 4 px: exactly 0.5 counts
    infection[2, 0, 6:, :] = 0.99  # outside the lung: ignored
    infection[3, 0, :4, :] = 0.49  # below 0.5
    return {
        "probability": np.array([[0.9], [0.1], [0.6], [0.2]], np.float32),
        "selected_indices": np.array([3, 4, 5, 6], np.int32),
        "lung_mask": lung,
        "infection_probability": infection,
        "pixel_area_mm2": np.array([2.5], np.float32),
        "spacing_mm": np.array([2.0, 0.7, 0.7], np.float32),
    }


def test_vote_step_outputs() -> None:
    out = vote_step(**_vote_inputs(), config=PipelineConfig(), model_versions=["classifier=cnn6:1:sha256:ab"])
    expected_dtypes = {
        "VERDICT": np.int32, "POSITIVE_FRACTION": np.float32, "VOTE_THRESHOLD": np.float32,
        "SLICE_PROBABILITIES": np.float32, "SELECTED_INDICES": np.int32,
        "LESION_BURDEN_PCT": np.float32, "LUNG_VOLUME_ML": np.float32, "MODEL_VERSIONS": np.object_,
    }
    assert {k: v.dtype.type for k, v in out.items()} == expected_dtypes
    assert out["VERDICT"].tolist() == [1]  # 2 of 4 slices >= 0.5 -> 50 % >= 30 %
    assert out["POSITIVE_FRACTION"][0] == pytest.approx(0.5)
    assert out["VOTE_THRESHOLD"][0] == pytest.approx(0.3)
    np.testing.assert_allclose(out["SLICE_PROBABILITIES"], [0.9, 0.1, 0.6, 0.2])
    assert out["SELECTED_INDICES"].tolist() == [3, 4, 5, 6]
    assert out["LESION_BURDEN_PCT"][0] == pytest.approx(100 * 12 / 128)
    assert out["LUNG_VOLUME_ML"][0] == pytest.approx(128 * 2.5 * 2.0 / 1000)
    assert out["MODEL_VERSIONS"].tolist() == [b"classifier=cnn6:1:sha256:ab"]
    assert all(out[k].shape == (1,) for k in ("VERDICT", "POSITIVE_FRACTION", "LESION_BURDEN_PCT", "LUNG_VOLUME_ML"))


def test_vote_step_refuses_inconsistent_tensors() -> None:
    cfg = PipelineConfig()
    bad = _vote_inputs() | {"selected_indices": np.array([3, 4, 5], np.int32)}
    with pytest.raises(TensorInputError, match=r"slice counts differ: PROBABILITY has 4, SELECTED_INDICES has 3"):
        vote_step(**bad, config=cfg)
    bad = _vote_inputs() | {"probability": np.zeros((4, 1), np.float64)}
    with pytest.raises(TensorInputError, match=r"PROBABILITY: got dtype float64 \[4, 1\]; expected float32 \[-1, 1\]"):
        vote_step(**bad, config=cfg)
    bad = _vote_inputs() | {"infection_probability": np.zeros((4, 1, 16, 16), np.float32)}
    with pytest.raises(TensorInputError, match=r"INFECTION_PROBABILITY: got slices \[16, 16\]; expected \[8, 8\]"):
        vote_step(**bad, config=cfg)
    bad = _vote_inputs() | {"pixel_area_mm2": np.array([0.0], np.float32)}
    with pytest.raises(TensorInputError, match=r"PIXEL_AREA_MM2: got \[0.0\]"):
        vote_step(**bad, config=cfg)


def test_reference_chain_verdicts_and_lung_volume() -> None:
    volume, truth = _volume()
    cfg = PipelineConfig(classifier_input=ModelInputConfig(size=32), segmenter_input=ModelInputConfig(size=64))
    seen: dict[str, tuple[int, ...]] = {}

    def classify(x: np.ndarray) -> np.ndarray:
        seen["classifier"] = x.shape
        return np.full((x.shape[0], 1), 0.8, np.float32)

    def segment(x: np.ndarray) -> np.ndarray:
        seen["segmenter"] = x.shape
        return np.zeros((x.shape[0], 1, x.shape[2], x.shape[3]), np.float32)

    out = run_pipeline_reference(volume, classify, segment, cfg, ["classifier=x:1"])
    k = len(out["SELECTED_INDICES"])
    assert seen == {"classifier": (k, 1, 32, 32), "segmenter": (k, 1, 64, 64)}
    assert out["VERDICT"].tolist() == [1] and out["POSITIVE_FRACTION"][0] == 1.0
    assert out["LESION_BURDEN_PCT"][0] == 0.0
    true_ml = truth[out["SELECTED_INDICES"]].sum() * 1.5 * 1.5 * 2.0 / 1000
    assert out["LUNG_VOLUME_ML"][0] == pytest.approx(true_ml, rel=0.08)
    negative = run_pipeline_reference(
        volume, lambda x: np.full((x.shape[0], 1), 0.2, np.float32), segment, cfg
    )
    assert negative["VERDICT"].tolist() == [0] and negative["MODEL_VERSIONS"].shape == (0,)


def test_preprocess_step_in_chunks_equals_one_pass() -> None:
    hu, _ = _chest()
    cfg = PipelineConfig(
        classifier_input=ModelInputConfig(size=64, mask_channels=True),
        segmenter_input=ModelInputConfig(size=32),
    )
    spacing = np.array(SPACING, np.float32)
    one_pass = preprocess_step(hu, spacing, cfg, chunk_slices=len(hu))
    for chunk in (1, 5):  # 12 slices: equal chunks and a ragged last chunk
        chunked = preprocess_step(hu, spacing, cfg, chunk_slices=chunk)
        assert set(chunked) == set(one_pass)
        for name, value in one_pass.items():
            np.testing.assert_array_equal(chunked[name], value, err_msg=name)
            assert chunked[name].dtype == value.dtype


def test_preprocess_step_refuses_a_zero_chunk() -> None:
    hu, _ = _chest()
    with pytest.raises(ConfigError, match="chunk_slices must be >= 1; got 0"):
        preprocess_step(hu, np.array(SPACING, np.float32), PipelineConfig(), chunk_slices=0)
