"""HU slices -> network input: window, optional lung crop, resize, optional mask channels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from covidct.errors import VolumeError
from covidct.preprocessing.config import ModelInputConfig, PipelineConfig, WindowConfig
from covidct.preprocessing.hu_window import window_normalize
from covidct.preprocessing.model_inputs import classifier_inputs, network_inputs, segmenter_inputs


def _resize(stack: np.ndarray, size: int, mode: str) -> np.ndarray:
    t = torch.from_numpy(np.asarray(stack, dtype=np.float32))[:, None]
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(t, size=(size, size), mode=mode, **kwargs)[:, 0].numpy()


def _slices() -> tuple[np.ndarray, np.ndarray]:
    """Two 96x96 slices: soft-tissue body, one rectangular lung (-850 HU) with a GGO patch."""
    hu = np.full((2, 96, 96), -1000, dtype=np.int16)
    hu[:, 8:88, 8:88] = 40
    lung = np.zeros((2, 96, 96), dtype=bool)
    lung[0, 20:70, 15:60] = True
    lung[1, 30:50, 40:80] = True
    hu[lung] = -850
    hu[0, 30:40, 20:30] = -500  # 10x10 ground glass inside lung 0
    return hu, lung


def _window(hu: np.ndarray) -> np.ndarray:
    return np.clip((hu.astype(np.float64) + 1000.0) / 1400.0, 0.0, 1.0)


def test_default_classifier_input_is_windowed_and_resized() -> None:
    hu, _ = _slices()
    cfg = PipelineConfig()
    out = classifier_inputs(hu, cfg)
    assert out.dtype == np.float32 and out.shape == (2, 1, 224, 224)
    np.testing.assert_allclose(out[:, 0], _resize(_window(hu), 224, "bilinear"), atol=1e-5)
    seg = segmenter_inputs(hu, cfg)
    assert seg.shape == (2, 1, 256, 256)


def test_mask_channels_hold_lung_and_infection() -> None:
    hu, lung = _slices()
    cfg = PipelineConfig(classifier_input=ModelInputConfig(size=48, mask_channels=True))
    out = classifier_inputs(hu, cfg)
    assert out.shape == (2, 3, 48, 48)
    np.testing.assert_array_equal(out[:, 1], _resize(lung, 48, "nearest-exact"))
    infection = np.zeros_like(lung)
    infection[0, 30:40, 20:30] = True
    infection[0, [30, 30, 39, 39], [20, 29, 20, 29]] = False  # corners lost by the cross opening
    np.testing.assert_array_equal(out[:, 2], _resize(infection, 48, "nearest-exact"))
    assert set(np.unique(out[:, 1:])) <= {0.0, 1.0}


def test_lung_crop_uses_the_shrunk_lung_box() -> None:
    hu, _ = _slices()
    cfg = PipelineConfig(classifier_input=ModelInputConfig(size=64, lung_crop=True, mask_channels=True))
    out = classifier_inputs(hu, cfg)
    win = _window(hu)
    # lung 0: rows 20..69, cols 15..59 -> shrunk by 5: rows 25..64, cols 20..54
    np.testing.assert_allclose(out[0, 0], _resize(win[None, 0, 25:65, 20:55], 64, "bilinear")[0], atol=1e-5)
    np.testing.assert_allclose(out[1, 0], _resize(win[None, 1, 35:45, 45:75], 64, "bilinear")[0], atol=1e-5)
    # The lung channel of a box inside the lung is all lung.
    assert out[:, 1].min() == 1.0


def test_precomputed_masks_give_the_same_input() -> None:
    hu, lung = _slices()
    cfg = PipelineConfig(classifier_input=ModelInputConfig(size=32, mask_channels=True))
    infection = np.zeros_like(lung)
    out = network_inputs(hu, cfg, cfg.classifier_input, masks=(lung, infection))
    np.testing.assert_array_equal(out[:, 1], _resize(lung, 32, "nearest-exact"))
    assert not out[:, 2].any()
    with pytest.raises(VolumeError, match=r"masks have shapes \(2, 96, 96\), \(1, 96, 96\); expected \(2, 96, 96\)"):
        network_inputs(hu, cfg, cfg.classifier_input, masks=(lung, infection[:1]))


def test_window_setting_travels_with_the_config() -> None:
    hu, _ = _slices()
    cfg = PipelineConfig(window=WindowConfig(min_hu=-1000.0, max_hu=0.0), classifier_input=ModelInputConfig(size=96))
    out = classifier_inputs(hu, cfg)
    np.testing.assert_allclose(out[:, 0], np.clip((hu + 1000.0) / 1000.0, 0, 1), atol=1e-6)


def test_model_input_errors_name_the_problem() -> None:
    with pytest.raises(VolumeError, match=r"non-empty \[K, H, W\] stack; got shape \(0, 8, 8\)"):
        classifier_inputs(np.zeros((0, 8, 8), np.int16), PipelineConfig())
    with pytest.raises(VolumeError, match=r"input size 0"):
        network_inputs(np.zeros((1, 8, 8), np.int16), PipelineConfig(), ModelInputConfig(size=0))


def test_precomputed_windowed_slices_give_the_same_input() -> None:
    hu, _ = _slices()
    cfg = PipelineConfig(classifier_input=ModelInputConfig(size=16, mask_channels=True))
    windowed = window_normalize(hu, cfg.window)
    np.testing.assert_array_equal(
        classifier_inputs(hu, cfg, windowed=windowed), classifier_inputs(hu, cfg)
    )


def test_windowed_slices_of_another_shape_are_refused() -> None:
    hu, _ = _slices()
    with pytest.raises(VolumeError, match=r"windowed slices have shape \(1, 4, 4\); expected"):
        segmenter_inputs(hu, PipelineConfig(), windowed=np.zeros((1, 4, 4), np.float32))
