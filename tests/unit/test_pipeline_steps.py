"""The Triton models' step functions and the in-process reference chain."""

from __future__ import annotations

import json

import numpy as np
import pytest

from covidct.errors import ConfigError, TensorInputError
from covidct.serving import tensors as T
from covidct.serving.steps import preprocess_step, run_pipeline_reference, vote_step
from covidct.preprocessing.config import ModelInputConfig, PipelineConfig, SelectionConfig
from covidct.preprocessing.synthetic.case_transforms import all_air, rotate_in_plane
from covidct.preprocessing.synthetic.phantom import make_phantom

CONFIG = PipelineConfig(classifier_input=ModelInputConfig(size=64), segmenter_input=ModelInputConfig(size=64))


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(num_slices=48, size=128, covid=True, seed=5)


@pytest.fixture(scope="module")
def prepared(phantom):
    volume = phantom.volume
    return preprocess_step(volume.hu, np.asarray(volume.spacing_mm, np.float32), CONFIG)


def _assessment(reasons=()) -> np.ndarray:
    document = {"assessable": not reasons, "reasons": [{"code": c, "message": f"{c}."} for c in reasons],
                "measurements": {}}
    return np.array([json.dumps(document).encode()], dtype=np.object_)


def test_preprocess_outputs_cover_the_whole_lung(phantom, prepared) -> None:
    n = phantom.volume.hu.shape[0]
    lung_slices, selected = prepared[T.LUNG_SLICES], prepared[T.SELECTED_INDICES]
    assert lung_slices.dtype == np.int32 and selected.dtype == np.int32
    # every slice of the phantom's true lungs holds lung in the mask (apex and base too)
    truth = np.flatnonzero(phantom.lung_mask.reshape(n, -1).sum(axis=1) > 0.02 * phantom.lung_mask[0].size)
    assert set(truth.tolist()) <= set(lung_slices.tolist())
    assert set(selected.tolist()) < set(lung_slices.tolist())  # the classifier sees a subset
    assert prepared[T.CLASSIFIER_INPUT].shape == (len(selected), 1, 64, 64)
    assert prepared[T.SEGMENTER_INPUT].shape == (len(lung_slices), 1, 64, 64)
    mask = prepared[T.LUNG_MASK]
    assert mask.dtype == np.uint8 and mask.shape[0] == len(lung_slices) and set(np.unique(mask)) == {0, 1, 2}
    assert prepared[T.MASK_SPACING_MM].dtype == np.float32
    assessment = json.loads(prepared[T.ASSESSMENT][0])
    assert assessment["assessable"] and assessment["reasons"] == []


def test_network_inputs_equal_model_inputs_of_the_chosen_slices(phantom, prepared) -> None:
    from covidct.preprocessing.model_inputs import classifier_inputs, segmenter_inputs

    hu = phantom.volume.hu
    selected, lung_slices = prepared[T.SELECTED_INDICES], prepared[T.LUNG_SLICES]
    np.testing.assert_array_equal(prepared[T.CLASSIFIER_INPUT], classifier_inputs(hu[selected], CONFIG))
    np.testing.assert_array_equal(prepared[T.SEGMENTER_INPUT], segmenter_inputs(hu[lung_slices], CONFIG))


def test_preprocess_in_chunks_equals_one_pass(phantom, prepared) -> None:
    volume = phantom.volume
    one = preprocess_step(volume.hu, np.asarray(volume.spacing_mm, np.float32), CONFIG, chunk_slices=1000)
    for name in prepared:
        if prepared[name].dtype == np.object_:
            assert list(prepared[name]) == list(one[name])
        else:
            np.testing.assert_array_equal(prepared[name], one[name])


def test_paper002_selection_is_available_by_name(phantom) -> None:
    volume = phantom.volume
    config = PipelineConfig(selection=SelectionConfig(rule="paper002"),
                            classifier_input=ModelInputConfig(size=32), segmenter_input=ModelInputConfig(size=32))
    out = preprocess_step(volume.hu, np.asarray(volume.spacing_mm, np.float32), config)
    from covidct.preprocessing.slice_selection import select_open_lung_slices

    expected = select_open_lung_slices(volume.hu, config.selection).indices
    np.testing.assert_array_equal(out[T.SELECTED_INDICES], expected)


def test_preprocess_refuses_a_cropped_segmenter_and_a_zero_chunk(phantom) -> None:
    volume = phantom.volume
    spacing = np.asarray(volume.spacing_mm, np.float32)
    cropped = PipelineConfig(segmenter_input=ModelInputConfig(size=64, lung_crop=True))
    with pytest.raises(ConfigError, match=r"segmenter_input.lung_crop=True is not supported"):
        preprocess_step(volume.hu, spacing, cropped)
    with pytest.raises(ConfigError, match=r"chunk_slices must be >= 1; got 0"):
        preprocess_step(volume.hu, spacing, CONFIG, chunk_slices=0)


def test_no_lungs_gives_empty_inputs_and_reasons(phantom) -> None:
    air = all_air(phantom.volume)
    out = preprocess_step(air.hu, np.asarray(air.spacing_mm, np.float32), CONFIG)
    assert out[T.CLASSIFIER_INPUT].shape == (0, 1, 64, 64) and out[T.SEGMENTER_INPUT].shape == (0, 1, 64, 64)
    assert out[T.LUNG_MASK].shape[0] == 0
    assessment = json.loads(out[T.ASSESSMENT][0])
    assert not assessment["assessable"] and assessment["reasons"]


def test_vote_whole_lung_volume_burden_and_verdict(prepared) -> None:
    lung = prepared[T.LUNG_MASK]
    n_lung, m = lung.shape[0], lung.shape[1]
    k = prepared[T.CLASSIFIER_INPUT].shape[0]
    infection = np.zeros((n_lung, 1, 64, 64), np.float32)
    infection[:, :, :32, :] = 0.9  # the anterior half of every slice
    out = vote_step(np.full((k, 1), 0.8, np.float32), infection, lung, prepared[T.MASK_SPACING_MM],
                    prepared[T.ASSESSMENT], CONFIG, ("classifier=x:1:sha256:0",), '{"classifier": {"demo": true}}')
    assert int(out[T.VERDICT][0]) == T.VERDICT_POSITIVE
    voxel_ml = float(np.prod(prepared[T.MASK_SPACING_MM].astype(np.float64))) / 1000
    assert float(out[T.LUNG_VOLUME_ML][0]) == pytest.approx(np.count_nonzero(lung) * voxel_ml, rel=1e-5)
    anterior = np.count_nonzero(lung[:, : m // 2]) / np.count_nonzero(lung)
    assert float(out[T.LESION_BURDEN_PCT][0]) == pytest.approx(100 * anterior, abs=0.5)
    assert out[T.INFECTION_MASK].shape == lung.shape and not out[T.INFECTION_MASK][lung == 0].any()
    assert json.loads(out[T.MODEL_CARD][0]) == {"classifier": {"demo": True}}
    assert [v.decode() for v in out[T.MODEL_VERSIONS]] == ["classifier=x:1:sha256:0"]


def test_vote_answers_not_assessable_whatever_the_probabilities(prepared) -> None:
    lung = prepared[T.LUNG_MASK]
    k = prepared[T.CLASSIFIER_INPUT].shape[0]
    infection = np.full((lung.shape[0], 1, 64, 64), 0.9, np.float32)
    out = vote_step(np.ones((k, 1), np.float32), infection, lung, prepared[T.MASK_SPACING_MM],
                    _assessment(["orientation"]), CONFIG)
    assert int(out[T.VERDICT][0]) == T.VERDICT_NOT_ASSESSABLE
    assert [r["code"] for r in json.loads(out[T.ASSESSMENT][0])["reasons"]] == ["orientation"]
    empty = vote_step(np.zeros((0, 1), np.float32), np.zeros((0, 1, 64, 64), np.float32),
                      np.zeros((0, 32, 32), np.uint8), np.ones(3, np.float32), _assessment(), CONFIG)
    assert int(empty[T.VERDICT][0]) == T.VERDICT_NOT_ASSESSABLE
    assert float(empty[T.LUNG_VOLUME_ML][0]) == 0.0
    assert [r["code"] for r in json.loads(empty[T.ASSESSMENT][0])["reasons"]] == ["too_few_lung_slices"]


def test_vote_refuses_inconsistent_tensors(prepared) -> None:
    lung = prepared[T.LUNG_MASK]
    k = prepared[T.CLASSIFIER_INPUT].shape[0]
    good = dict(probability=np.full((k, 1), 0.5, np.float32),
                infection_probability=np.zeros((lung.shape[0], 1, 64, 64), np.float32),
                lung_mask=lung, mask_spacing_mm=prepared[T.MASK_SPACING_MM], assessment=_assessment(), config=CONFIG)
    differ = r"slice counts differ: INFECTION_PROBABILITY has 1, LUNG_MASK has \d+; expected 1"
    with pytest.raises(TensorInputError, match=differ):
        vote_step(**{**good, "infection_probability": np.zeros((1, 1, 64, 64), np.float32)})
    with pytest.raises(TensorInputError, match=r"PROBABILITY: .*expected .*\[0, 1\]"):
        vote_step(**{**good, "probability": np.full((k, 1), 1.5, np.float32)})
    with pytest.raises(TensorInputError, match=r"ASSESSMENT: not UTF-8 JSON"):
        vote_step(**{**good, "assessment": np.array([b"{nope"], dtype=np.object_)})
    with pytest.raises(TensorInputError, match=r"MASK_SPACING_MM: got \[1\.0, 0\.0, 1\.0\]; expected three finite"):
        vote_step(**{**good, "mask_spacing_mm": np.array([1, 0, 1], np.float32)})


def test_reference_chain_answers(phantom) -> None:
    def oracle(x: np.ndarray) -> np.ndarray:
        return np.full((x.shape[0], 1), 0.9, np.float32)

    def segment(x: np.ndarray) -> np.ndarray:
        return np.zeros((x.shape[0], 1, *x.shape[2:]), np.float32)

    out = run_pipeline_reference(phantom.volume, oracle, segment, CONFIG)
    assert list(out) == list(T.ENSEMBLE_OUTPUTS)
    assert int(out[T.VERDICT][0]) == T.VERDICT_POSITIVE
    assert 3000 <= float(out[T.LUNG_VOLUME_ML][0]) <= 7500
    turned = run_pipeline_reference(rotate_in_plane(phantom.volume, 1), oracle, segment, CONFIG)
    assert int(turned[T.VERDICT][0]) == T.VERDICT_NOT_ASSESSABLE
    assert "orientation" in {r["code"] for r in json.loads(turned[T.ASSESSMENT][0])["reasons"]}
