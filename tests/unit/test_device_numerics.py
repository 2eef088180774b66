"""The torch per-slice numerics equal the numpy implementation they replaced, on every device.

Oracle: ``tests/numpy_reference.py``. Integer and bool outputs must be equal, floats
within 1e-5. Each test runs on the CPU and, where torch sees CUDA, on the GPU (skipped
with the reason otherwise); numpy in must give numpy out, tensors stay on their device.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from covidct.serving import tensors as T
from covidct.serving.steps import preprocess_step, vote_step
from covidct.preprocessing.config import MaskConfig, ModelInputConfig, PipelineConfig
from covidct.preprocessing.devices import as_tensor, to_numpy
from covidct.preprocessing.hu_window import window_normalize
from covidct.preprocessing.lung_crop import crop_resize, lung_boxes
from covidct.preprocessing.lung_masks import lung_and_infection_masks
from covidct.preprocessing.mask_grid import block_mean
from covidct.preprocessing.model_inputs import network_inputs
from covidct.preprocessing.patient_vote import lesion_burden_percent, lung_volume_ml, patient_vote
from covidct.preprocessing.slice_resize import resize_bilinear, resize_nearest
from covidct.preprocessing.synthetic.phantom import make_phantom
from tests import numpy_reference as ref

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device on this machine"),
    ]),
]
INPUT_CONFIGS = [
    ModelInputConfig(size=64, mask_channels=True),
    ModelInputConfig(size=224, lung_crop=True),
    ModelInputConfig(size=100, lung_crop=True, mask_channels=True),
    ModelInputConfig(size=512),
]


@pytest.fixture(scope="module")
def phantom_hu() -> np.ndarray:
    return make_phantom(num_slices=24, size=512, covid=True, seed=11).volume.hu


@pytest.fixture(scope="module")
def real_hu(real_data_dir: Path) -> np.ndarray:
    from covidct.preprocessing.io.series_reader import read_series

    hu = read_series(real_data_dir / "P002").hu
    return hu[np.linspace(0, hu.shape[0] - 1, 24).round().astype(int)]


def _on(device: str, array: np.ndarray) -> torch.Tensor:
    return as_tensor(array, device)


def _check_kind(result, device: str) -> np.ndarray:
    assert isinstance(result, torch.Tensor) and result.device.type == device
    return to_numpy(result)


@pytest.mark.parametrize("device", DEVICES)
def test_window_equals_numpy(phantom_hu: np.ndarray, device: str) -> None:
    expected = ref.window_normalize(phantom_hu, -1000.0, 400.0)
    np.testing.assert_array_equal(window_normalize(phantom_hu), expected)
    np.testing.assert_array_equal(_check_kind(window_normalize(_on(device, phantom_hu)), device), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("in_hw,out_hw,box", [
    ((512, 512), (64, 64), None), ((40, 30), (17, 23), None), ((16, 16), (40, 40), None),
    ((64, 48), (64, 48), None), ((100, 90), (50, 60), (10, 70, 5, 88)),
])
def test_resize_equals_numpy(device: str, in_hw, out_hw, box) -> None:
    rng = np.random.default_rng(0)
    images = rng.random((3, *in_hw), dtype=np.float32)
    masks = rng.random((3, *in_hw)) > 0.5
    expected = ref.resize_bilinear(images, out_hw, box)
    np.testing.assert_allclose(resize_bilinear(images, out_hw, box), expected, atol=1e-5, rtol=0)
    got = _check_kind(resize_bilinear(_on(device, images), out_hw, box), device)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(
        _check_kind(resize_nearest(_on(device, masks), out_hw, box), device), ref.resize_nearest(masks, out_hw, box)
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("crop", [None, (slice(None), slice(0, 511), slice(0, 509)), "x1.5"])
def test_paper000_masks_equal_numpy(phantom_hu: np.ndarray, device: str, crop) -> None:
    # 512 (work factor 2), odd sizes (leftover rows/columns), 768 (work factor 3).
    if crop == "x1.5":
        hu = np.repeat(np.repeat(phantom_hu[:, ::2, ::2], 3, axis=1), 3, axis=2)
    else:
        hu = phantom_hu if crop is None else phantom_hu[crop]
    config = MaskConfig()
    expected = ref.lung_and_infection_masks(hu, config)
    assert expected[0].any() and expected[1].any()
    for got, want in zip(lung_and_infection_masks(hu, config), expected):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(lung_and_infection_masks(_on(device, hu), config), expected):
        np.testing.assert_array_equal(_check_kind(got, device), want)


@pytest.mark.parametrize("device", DEVICES)
def test_lung_crop_equals_numpy(phantom_hu: np.ndarray, device: str) -> None:
    lung, _ = ref.lung_and_infection_masks(phantom_hu)
    boxes = ref.lung_boxes(lung, 5)
    assert (boxes != -1).any() and (boxes == -1).any()
    np.testing.assert_array_equal(_check_kind(lung_boxes(_on(device, lung), 5), device), boxes)
    images = ref.window_normalize(phantom_hu, -1000.0, 400.0)
    got = _check_kind(crop_resize(_on(device, images), boxes, (96, 96), "bilinear"), device)
    np.testing.assert_allclose(got, ref.crop_resize(images, boxes, (96, 96), "bilinear"), atol=1e-5, rtol=0)
    got = _check_kind(crop_resize(_on(device, lung), boxes, (96, 96), "nearest"), device)
    np.testing.assert_array_equal(got, ref.crop_resize(lung, boxes, (96, 96), "nearest"))


def _check_inputs(hu: np.ndarray, device: str) -> None:
    config = PipelineConfig()
    for input_config in INPUT_CONFIGS:
        expected = ref.network_inputs(hu, config, input_config)
        np.testing.assert_allclose(network_inputs(hu, config, input_config), expected, atol=1e-5, rtol=0)
        got = _check_kind(network_inputs(_on(device, hu), config, input_config), device)
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0, err_msg=str(input_config))


@pytest.mark.parametrize("device", DEVICES)
def test_network_inputs_equal_numpy(phantom_hu: np.ndarray, device: str) -> None:
    _check_inputs(phantom_hu, device)


@pytest.mark.parametrize("device", DEVICES)
def test_block_mean_equals_numpy(phantom_hu: np.ndarray, device: str) -> None:
    extremes = np.random.default_rng(1).integers(-32768, 32768, (3, 101, 103)).astype(np.int16)
    for hu in (phantom_hu[:, :509, :510], extremes):
        for factor in (1, 2, 3, 4, 5):
            expected = ref.block_mean(hu, factor)
            np.testing.assert_array_equal(block_mean(hu, factor), expected)
            np.testing.assert_array_equal(_check_kind(block_mean(_on(device, hu), factor), device), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_vote_and_burden_equal_numpy(device: str) -> None:
    rng = np.random.default_rng(2)
    probabilities = rng.random((37, 1)).astype(np.float32)
    vote = patient_vote(_on(device, probabilities))
    assert vote.n_positive == int(np.count_nonzero(probabilities >= 0.5)) and vote.n_selected == 37
    lung = rng.random((9, 32, 32)) > 0.3
    infection = rng.random((9, 32, 32)) > 0.7
    assert lung_volume_ml(_on(device, lung), 0.5, 2.0) == pytest.approx(np.count_nonzero(lung) * 1e-3)
    expected = 100.0 * np.count_nonzero(infection & lung) / np.count_nonzero(lung)
    assert lesion_burden_percent(_on(device, infection), _on(device, lung)) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_served_steps_equal_numpy_and_each_other(device: str) -> None:
    """preprocess_step and vote_step on tensors of ``device`` == on numpy == the numpy oracle."""
    config = dataclasses.replace(PipelineConfig(), classifier_input=ModelInputConfig(size=64, mask_channels=True))
    volume = make_phantom(num_slices=40, size=256, covid=True, seed=4).volume
    spacing = np.asarray(volume.spacing_mm, np.float32)
    on_host = preprocess_step(volume.hu, spacing, config)
    on_device = preprocess_step(_on(device, volume.hu), spacing, config, device=device)
    for name, value in on_host.items():
        assert isinstance(value, np.ndarray), name
        got = on_device[name]
        if name in (T.CLASSIFIER_INPUT, T.SEGMENTER_INPUT):
            got = _check_kind(got, device)
        if value.dtype == np.object_:
            assert list(got) == list(value), name
        else:
            np.testing.assert_array_equal(got, value, err_msg=name)
    hu = volume.hu
    selected = hu[on_host[T.SELECTED_INDICES]]
    np.testing.assert_allclose(
        on_host[T.CLASSIFIER_INPUT], ref.network_inputs(selected, config, config.classifier_input), atol=1e-5, rtol=0
    )
    np.testing.assert_allclose(
        on_host[T.SEGMENTER_INPUT], ref.network_inputs(hu[on_host[T.LUNG_SLICES]], config, config.segmenter_input),
        atol=1e-5, rtol=0,
    )
    k, lung_count = on_host[T.SELECTED_INDICES].size, on_host[T.LUNG_SLICES].size
    assert k and lung_count
    rng = np.random.default_rng(5)
    probability = rng.random((k, 1)).astype(np.float32)
    seg = config.segmenter_input.size
    infection = rng.random((lung_count, 1, seg, seg)).astype(np.float32)
    args = (on_host[T.LUNG_MASK], on_host[T.MASK_SPACING_MM], on_host[T.ASSESSMENT], config)
    host_answer = vote_step(probability, infection, *args)
    device_answer = vote_step(_on(device, probability), _on(device, infection), *args, device=device)
    mask, volume_ml, burden = ref.whole_lung_figures(
        on_host[T.LUNG_MASK], infection, config.vote.infection_threshold, on_host[T.MASK_SPACING_MM]
    )
    assert mask.any()
    for answer in (host_answer, device_answer):
        np.testing.assert_array_equal(to_numpy(answer[T.INFECTION_MASK]), mask)
        assert float(answer[T.LUNG_VOLUME_ML][0]) == pytest.approx(volume_ml, rel=1e-6)
        assert float(answer[T.LESION_BURDEN_PCT][0]) == pytest.approx(burden, rel=1e-6)
        np.testing.assert_array_equal(to_numpy(answer[T.SLICE_PROBABILITIES]), probability[:, 0])
        assert answer[T.VERDICT][0] == host_answer[T.VERDICT][0]
    _check_kind(device_answer[T.INFECTION_MASK], device)


@pytest.mark.real_data
@pytest.mark.parametrize("device", DEVICES)
def test_real_series_numerics_equal_numpy(real_hu: np.ndarray, device: str) -> None:
    np.testing.assert_array_equal(
        _check_kind(window_normalize(_on(device, real_hu)), device), ref.window_normalize(real_hu, -1000.0, 400.0)
    )
    for got, want in zip(lung_and_infection_masks(_on(device, real_hu)), ref.lung_and_infection_masks(real_hu)):
        np.testing.assert_array_equal(_check_kind(got, device), want)
    np.testing.assert_array_equal(_check_kind(block_mean(_on(device, real_hu), 4), device), ref.block_mean(real_hu, 4))
    _check_inputs(real_hu, device)


def test_numpy_in_numpy_out_and_typed_errors() -> None:
    assert isinstance(window_normalize(np.zeros((1, 4, 4), np.int16)), np.ndarray)
    with pytest.raises(Exception, match=r"window_normalize: hu: dtype <U1; expected integer, float or bool"):
        window_normalize(np.array([["a"]]))
    with pytest.raises(Exception, match=r"lung masks: hu has dtype bool; expected integer or float HU"):
        lung_and_infection_masks(np.zeros((1, 8, 8), bool))
