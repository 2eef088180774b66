"""Every ``config.pbtxt`` of the source model repository against the code that serves it.

A renamed, added or dropped tensor fails here, not in a live server: the Python steps'
inputs are the step functions' parameters, their outputs the keys the functions return
(run on a real phantom), the ensemble's interface is :mod:`covidct.serving.tensors`.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from covidct.serving import source_repository
from covidct.serving import tensors as T
from covidct.serving.backend import BACKEND_NAME
from covidct.serving.step_model import build_step, step_name
from covidct.serving.steps import preprocess_step, vote_step
from covidct.export.pbtxt import get_parameter, input_specs, output_specs, read_config
from tests.conftest import bundle_modules
from covidct.export.validate import validate_repository
from covidct.preprocessing.config import PipelineConfig
from covidct.preprocessing.synthetic.phantom import make_phantom

REPOSITORY = source_repository()
MODELS = sorted(p.name for p in REPOSITORY.iterdir() if (p / "config.pbtxt").is_file())
STEP_FUNCTIONS = {"preprocess": preprocess_step, "vote": vote_step}
NUMPY_DTYPES = {
    "TYPE_INT16": np.int16, "TYPE_INT32": np.int32, "TYPE_UINT8": np.uint8,
    "TYPE_FP32": np.float32, "TYPE_STRING": np.object_,
}


def _config(model: str):
    return read_config(REPOSITORY / model)


def _tensor_parameters(function) -> list[str]:
    """Upper-case tensor names of a step function's parameters (settings and keyword-only ones excluded)."""
    settings = {"config", "model_versions", "model_card"}
    return [name.upper() for name, p in inspect.signature(function).parameters.items()
            if name not in settings and p.kind is not p.KEYWORD_ONLY]


@pytest.fixture(scope="module")
def step_outputs() -> dict[str, dict[str, np.ndarray]]:
    """What the steps return for a real phantom (networks replaced by fixed arrays)."""
    config = PipelineConfig()
    volume = make_phantom(num_slices=40, size=128, covid=True, seed=3).volume
    prepared = preprocess_step(volume.hu, np.asarray(volume.spacing_mm, np.float32), config)
    k = prepared[T.CLASSIFIER_INPUT].shape[0]
    n_lung, _, s, _ = prepared[T.SEGMENTER_INPUT].shape
    answer = vote_step(
        np.full((k, 1), 0.9, np.float32), np.full((n_lung, 1, s, s), 0.1, np.float32),
        prepared[T.LUNG_MASK], prepared[T.MASK_SPACING_MM], prepared[T.ASSESSMENT], config,
    )
    return {"preprocess": prepared, "vote": answer}


def test_source_repository_is_valid_and_complete() -> None:
    assert validate_repository(REPOSITORY) == []
    assert MODELS == ["classifier", T.ENSEMBLE, "preprocess", "segmenter", "vote"]


@pytest.mark.parametrize("model", ["preprocess", "vote"])
def test_python_step_configs_match_the_step_functions(model, step_outputs) -> None:
    config = _config(model)
    assert config.backend == BACKEND_NAME
    function = STEP_FUNCTIONS[step_name({"name": config.name, "parameters": {
        "step": {"string_value": get_parameter(config, "step", "")}}})]
    assert list(input_specs(config)) == _tensor_parameters(function)
    returned = step_outputs[model]
    assert set(output_specs(config)) == set(returned)
    for name, spec in output_specs(config).items():
        array = np.asarray(returned[name])
        assert array.dtype == NUMPY_DTYPES[spec.dtype], (model, name, array.dtype, spec.dtype)
        assert array.ndim == len(spec.dims), (model, name, array.shape, spec.dims)
        assert all(d < 0 or d == n for d, n in zip(spec.dims, array.shape)), (model, name, array.shape)


@pytest.mark.parametrize("model", ["classifier", "segmenter"])
def test_network_configs_have_one_input_and_one_output(model) -> None:
    config = _config(model)
    assert get_parameter(config, "step") == "network"
    expected = {"classifier": ([T.CLASSIFIER_INPUT], [T.PROBABILITY]),
                "segmenter": ([T.SEGMENTER_INPUT], [T.INFECTION_PROBABILITY])}[model]
    assert (list(input_specs(config)), list(output_specs(config))) == expected


def test_ensemble_interface_is_the_tensors_module() -> None:
    config = _config(T.ENSEMBLE)
    assert list(input_specs(config)) == list(T.ENSEMBLE_INPUTS)
    assert list(output_specs(config)) == list(T.ENSEMBLE_OUTPUTS)
    produced = set(T.ENSEMBLE_INPUTS)
    for step in config.ensemble_scheduling.step:
        member = _config(step.model_name)
        assert set(step.input_map) == set(input_specs(member)), step.model_name
        assert set(step.output_map) <= set(output_specs(member)), step.model_name
        assert set(step.input_map.values()) <= produced, f"{step.model_name} reads a tensor no earlier step wrote"
        produced |= set(step.output_map.values())
    assert set(T.ENSEMBLE_OUTPUTS) <= produced


def test_unknown_step_is_a_config_error(tmp_path) -> None:
    import json

    from covidct.errors import ConfigError

    args = {
        "model_config": json.dumps({"name": "odd", "parameters": {"step": {"string_value": "lung_select"}}}),
        "model_repository": str(tmp_path), "model_version": "1",
    }
    with pytest.raises(ConfigError, match=r"model 'odd': parameter 'step' is 'lung_select'; expected one of"):
        build_step(args)


def test_exactly_one_triton_python_model_class() -> None:
    root = source_repository().parent
    hits = [path for path in bundle_modules() if "class TritonPythonModel" in path.read_text(encoding="utf-8")]
    assert [p.relative_to(root).as_posix() for p in hits] == ["serving/backend/model.py"]
