"""The repository validator: real config.pbtxt files parsed with the Triton protobuf
schema; the source layout and generated repositories pass; broken ones (renamed tensor,
dtype mismatch, missing weights, ...) are rejected naming the model and the tensor."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from tritonclient.grpc import model_config_pb2 as mc

from covidct.errors import ExportError
from covidct.export.config import DEFAULT_SOURCE_REPOSITORY, OnnxExportConfig, RepositoryOptions
from covidct.export.pbtxt import read_config, write_config
from covidct.export.repository import build_repository
from covidct.export.validate import check_repository, validate_repository
from covidct.preprocessing.config import ModelInputConfig, PipelineConfig
from covidct.training.checkpoint import save_checkpoint
from covidct.training.registry import create_model

SIZE = 32


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("validate")
    inp = ModelInputConfig(size=SIZE)
    pipeline = PipelineConfig(classifier_input=inp, segmenter_input=inp)
    torch.manual_seed(0)
    c = save_checkpoint(root / "c", create_model("cnn6", input_size=SIZE), pipeline)
    s = save_checkpoint(root / "s", create_model("unet", input_size=SIZE), pipeline)
    options = RepositoryOptions(onnx=OnnxExportConfig(exporter="torchscript"))
    return {profile: build_repository(c, s, root / profile, profile, options=options)
            for profile in ("portable", "container")}


@pytest.fixture()
def portable_copy(generated, tmp_path) -> Path:
    return Path(shutil.copytree(generated["portable"], tmp_path / "repo"))


def edit(repo: Path, model: str, change) -> None:
    config = read_config(repo / model)
    change(config)
    write_config(config, repo / model)


def tensor(tensors, name: str):
    return next(t for t in tensors if t.name == name)


def test_source_layout_validates():
    """The source repository's Python models and runner models (no weights yet)."""
    assert validate_repository(DEFAULT_SOURCE_REPOSITORY) == []


@pytest.mark.parametrize("profile", ["portable", "container"])
def test_generated_repositories_validate(generated, profile):
    assert validate_repository(generated[profile]) == []
    check_repository(generated[profile])


def test_renamed_tensor_is_rejected(portable_copy):
    edit(portable_copy, "classifier", lambda c: setattr(tensor(c.input, "CLASSIFIER_INPUT"), "name", "CLASSIFIER_IN"))
    problems = validate_repository(portable_copy)
    assert any("model 'classifier': config input tensor 'CLASSIFIER_IN' is not an input of model.onnx" in p
               for p in problems), problems
    assert any("step 'classifier': input_map key 'CLASSIFIER_INPUT' is not an input of model 'classifier'" in p
               for p in problems), problems
    with pytest.raises(ExportError, match=r"model repository is invalid \(\d+ problem\(s\)\):\n  - .*CLASSIFIER_IN"):
        check_repository(portable_copy)


def test_dtype_mismatch_is_rejected(portable_copy):
    edit(portable_copy, "vote", lambda c: setattr(tensor(c.input, "PROBABILITY"), "data_type", mc.TYPE_FP16))
    problems = validate_repository(portable_copy)
    assert problems == [
        "ensemble 'covid_ct_pipeline' step 'vote' input 'PROBABILITY': ensemble tensor 'probability' is "
        "TYPE_FP32 [-1, 1] from ensemble 'covid_ct_pipeline' step 'classifier' output 'PROBABILITY', "
        "expected TYPE_FP16 [-1, 1]"
    ]


def test_incompatible_shape_is_rejected(portable_copy):
    def change(config):
        dims = tensor(config.input, "INFECTION_PROBABILITY").dims
        del dims[:]
        dims.extend([-1, 1, 64, 64])

    edit(portable_copy, "vote", change)
    problems = validate_repository(portable_copy)
    assert len(problems) == 1 and "tensor 'infection_probability' is TYPE_FP32 [-1, 1, 32, 32]" in problems[0]
    assert "expected TYPE_FP32 [-1, 1, 64, 64]" in problems[0]


def test_missing_weights_and_code_are_rejected(portable_copy, generated, tmp_path):
    (portable_copy / "classifier" / "1" / "model.onnx").unlink()
    (portable_copy / "segmenter" / "1" / "weights.pt").unlink()
    (portable_copy / "preprocess" / "1" / "pipeline_config.json").unlink()
    (portable_copy / "vote" / "1" / "pipeline_config.json").unlink()
    assert sorted(validate_repository(portable_copy)) == [
        "model 'classifier': classifier/1/model.onnx is missing (weights or code)",
        "model 'preprocess': preprocess/1/pipeline_config.json is missing (weights or code)",
        "model 'segmenter': segmenter/1/weights.pt is missing (weights or code)",
        "model 'vote': vote/1/pipeline_config.json is missing (weights or code)",
    ]
    container = Path(shutil.copytree(generated["container"], tmp_path / "container"))
    (container / "segmenter" / "1" / "model.onnx").unlink()
    assert validate_repository(container) == [
        "model 'segmenter': segmenter/1/model.onnx is missing (weights or code)"
    ]


def test_ensemble_wiring_problems(portable_copy):
    def change(config):
        steps = config.ensemble_scheduling.step
        steps[0].model_name = "lung_preparation"
        del steps[2].input_map["SEGMENTER_INPUT"]
        steps[3].output_map["VERDICT"] = "probability"

    edit(portable_copy, "covid_ct_pipeline", change)
    problems = validate_repository(portable_copy)
    expected = [
        "step 'lung_preparation': model 'lung_preparation' is not in the repository",
        "step 'segmenter': input 'SEGMENTER_INPUT' of model 'segmenter' is not mapped",
        "ensemble tensor 'probability' is produced twice",
        "ensemble tensor 'classifier_input' is produced by no step or ensemble input",
        "ensemble 'covid_ct_pipeline' output: ensemble tensor 'VERDICT' is produced by no step",
    ]
    for text in expected:
        assert any(text in p for p in problems), (text, problems)


def test_folder_level_problems(portable_copy, tmp_path):
    (portable_copy / "stray").mkdir()
    shutil.rmtree(portable_copy / "vote" / "1")
    (portable_copy / "preprocess" / "config.pbtxt").write_text("name: \"preprocess\"\nbatch_size: 3\n")
    edit(portable_copy, "segmenter", lambda c: setattr(c, "max_batch_size", 8))
    problems = validate_repository(portable_copy)
    for text in (
        "model 'stray': stray/config.pbtxt is missing",
        "model 'vote': no numeric version folder",
        "model 'preprocess': ",
        "not a valid Triton model configuration",
        "model 'segmenter': max_batch_size is 8",
    ):
        assert any(text in p for p in problems), (text, problems)
    assert validate_repository(tmp_path / "nowhere") == [f"{tmp_path / 'nowhere'}: model repository folder not found"]
