"""Every registered network: forward/backward at a small input, shapes, no NaN, sizes."""

from __future__ import annotations

import json

import pytest
import torch

from covidct.errors import ConfigError
from covidct.training.registry import ModelConfig, create_model, default_config, list_models, resolve_config

# (min, max) parameters in millions at the registered defaults
PARAM_RANGE_M = {
    "cnn6": (0.01, 1.0),
    "resnet50v2": (20.0, 27.0),
    "resnet50v2_fpn": (24.0, 40.0),
    "efficientnet_b4": (15.0, 20.0),
    "attention_unet": (1.0, 40.0),
    "unet": (0.05, 0.75),  # under 3 MB of float32
    "fcn8s": (2.0, 140.0),
    "efficientnet_lite0": (3.0, 4.0),  # the shipped classifier: about 13.7 MB of float32
    "unet_lite0": (3.0, 4.0),  # the shipped segmenter: about 14 MB of float32
}


def test_registry_lists_the_papers_networks():
    assert set(list_models()) == set(PARAM_RANGE_M)
    assert list_models("segmentation") == ["attention_unet", "fcn8s", "unet", "unet_lite0"]


@pytest.mark.parametrize("name", sorted(PARAM_RANGE_M))
def test_forward_backward_small_input(name):
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = create_model(name, input_size=64)
    cfg = model.model_config
    assert cfg.name == name and cfg.input_size == 64
    params = sum(p.numel() for p in model.parameters()) / 1e6
    lo, hi = PARAM_RANGE_M[name]
    assert lo <= params <= hi, f"{name}: {params:.2f} M parameters"
    x = torch.rand(2, cfg.in_channels, 64, 64)
    out = model(x)
    if cfg.task == "classification":
        assert out.shape == (2, cfg.num_outputs)
    else:
        assert out.shape == (2, 1, 64, 64)
    assert torch.isfinite(out).all()
    out.float().square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_light_unet_under_3_mb():
    model = create_model("unet")
    assert sum(p.numel() for p in model.parameters()) * 4 < 3 * 1024 * 1024


def test_cnn6_with_mask_channels():
    model = create_model("cnn6", input_size=64, in_channels=3)
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 1)


def test_model_config_json_round_trip(tmp_path):
    cfg = resolve_config("resnet50v2_fpn", input_size=128, head_channels=64)
    path = cfg.save(tmp_path)
    assert ModelConfig.load(path) == cfg
    assert json.loads(path.read_text())["extra"]["head_channels"] == 64


def test_unknown_option_and_model_are_config_errors():
    with pytest.raises(ConfigError, match="has no option 'depthh'"):
        create_model("unet", depthh=3)
    with pytest.raises(ConfigError, match="unknown model 'vgg99'"):
        default_config("vgg99")
    with pytest.raises(ConfigError, match="num_outputs of a segmenter must be 1"):
        create_model("unet", num_outputs=2)
