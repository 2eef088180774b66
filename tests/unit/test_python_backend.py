"""The Triton-free parts of covidct.serving.step_model (StepModel itself runs in the
integration tests inside the real server)."""

from __future__ import annotations

import json

import numpy as np

from covidct.serving.step_model import (
    model_config,
    parse_model_versions,
    runner_step,
    string_parameter,
    version_dir,
)


def test_parse_model_versions_accepts_the_exporters_and_json_forms():
    text = "classifier=cnn6:1:sha256:0123abcd4567,segmenter=unet:1:sha256:89abcdef0123"
    assert parse_model_versions(text) == (
        "classifier=cnn6:1:sha256:0123abcd4567",
        "segmenter=unet:1:sha256:89abcdef0123",
    )
    assert parse_model_versions(' a=1 ; b=2 ') == ("a=1", "b=2")
    assert parse_model_versions(json.dumps(["x=1", "y=2"])) == ("x=1", "y=2")
    assert parse_model_versions("") == ()


def test_config_helpers_read_tritons_json_arguments(tmp_path):
    config = {"name": "vote", "parameters": {"model_versions": {"string_value": " c=1 "}}}
    args = {"model_config": json.dumps(config), "model_repository": str(tmp_path), "model_version": "3"}
    assert model_config(args) == config
    assert string_parameter(config, "model_versions") == "c=1"
    assert string_parameter(config, "missing", "fallback") == "fallback"
    assert version_dir(args) == tmp_path / "3"


def test_runner_step_maps_the_input_tensor_to_the_output_tensor():
    step = runner_step(lambda x: x * 2.0, "CLASSIFIER_INPUT", "PROBABILITY")
    out = step(classifier_input=np.array([[0.25]], np.float32))
    assert list(out) == ["PROBABILITY"]
    np.testing.assert_array_equal(out["PROBABILITY"], np.array([[0.5]], np.float32))
