"""Model repository generation (both profiles), the CLI, and failure without leftovers.

Real checkpoints (cnn6 + unet at 32 px), real exports and ONNX Runtime; the generated
repositories are checked file by file and with the validator.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as mc

from covidct.errors import CheckpointError, ExportError
from covidct.export.__main__ import main
from covidct.export.config import DEFAULT_SOURCE_REPOSITORY, OnnxExportConfig, RepositoryOptions
from covidct.export.onnx_export import onnx_metadata
from covidct.export.pbtxt import get_parameter, input_specs, output_specs, read_config
from covidct.export.repository import STEPS, build_repository, generate_repository
from covidct.serving.runners import OnnxRuntimeRunner, RunnerSettings
from covidct.export.validate import validate_repository
from covidct.preprocessing.config import ModelInputConfig, PipelineConfig, WindowConfig
from covidct.training.checkpoint import save_checkpoint
from covidct.training.model_card import ModelCard, load_model_card
from covidct.training.registry import create_model

SIZE = 32
FAST = RepositoryOptions(onnx=OnnxExportConfig(exporter="torchscript"))
PYTHON_MODELS = ("preprocess", "vote", "classifier", "segmenter")


def pipeline(**changes) -> PipelineConfig:
    inp = ModelInputConfig(size=SIZE)
    return replace(PipelineConfig(classifier_input=inp, segmenter_input=inp), **changes)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    return {
        "classifier": save_checkpoint(root / "cnn6", create_model("cnn6", input_size=SIZE), pipeline()),
        "segmenter": save_checkpoint(root / "unet", create_model("unet", input_size=SIZE), pipeline()),
    }


@pytest.fixture(scope="module")
def portable(checkpoints, tmp_path_factory):
    """Portable repository with the default (dynamo) exporter, as the demo builds it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    steps: list[str] = []
    try:
        out = tmp_path_factory.mktemp("portable") / "repo"
        report = generate_repository(checkpoints["classifier"], checkpoints["segmenter"], out, "portable",
                                     progress=steps.append)
    finally:
        torch.set_num_threads(threads)
    assert steps == list(STEPS)
    return report


@pytest.fixture(scope="module")
def container(checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("container") / "repo"
    return generate_repository(checkpoints["classifier"], checkpoints["segmenter"], out, "container", options=FAST)


def sha12(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_portable_repository_layout(portable, checkpoints):
    repo = portable.path
    assert validate_repository(repo) == []
    assert leftovers(repo.parent) == []
    deployed = PipelineConfig.load(checkpoints["classifier"])
    for model in PYTHON_MODELS:
        assert PipelineConfig.load(repo / model / "1") == deployed
    for model, (inp, out) in {"classifier": ("CLASSIFIER_INPUT", "PROBABILITY"),
                              "segmenter": ("SEGMENTER_INPUT", "INFECTION_PROBABILITY")}.items():
        version = repo / model / "1"
        assert {p.name for p in version.iterdir()} >= {"model.onnx", "weights.pt", "model_config.json",
                                                       "model_card.json"}
        config = read_config(repo / model)
        assert config.backend == read_config(DEFAULT_SOURCE_REPOSITORY / model).backend
        assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
        assert input_specs(config)[inp].dims == (-1, 1, SIZE, SIZE)
        expected_out = (-1, 1) if model == "classifier" else (-1, 1, SIZE, SIZE)
        assert output_specs(config)[out].dims == expected_out
        assert {"weights.pt", "model_card.json"} <= set(get_parameter(config, "required_files").split(","))
    versions = get_parameter(read_config(repo / "vote"), "model_versions")
    assert versions == (
        f"classifier=cnn6:1:sha256:{sha12(checkpoints['classifier'] / 'weights.pt')},"
        f"segmenter=unet:1:sha256:{sha12(checkpoints['segmenter'] / 'weights.pt')}"
    )
    assert ",".join(portable.model_versions) == versions
    assert [r.model for r in portable.rows] == ["classifier", "segmenter"]
    assert all(r.parity_error is not None and r.parity_error <= 1e-4 for r in portable.rows)


def test_model_cards_travel_into_the_repository(portable, container, checkpoints):
    """Each runner's card beside its weights and inside its ONNX file; both cards in the
    vote model's model_cards.json, which the validator requires."""
    cards = {role: load_model_card(checkpoints[role]) for role in ("classifier", "segmenter")}
    for report in (portable, container):
        repo = report.path
        for role, card in cards.items():
            assert load_model_card(repo / role / "1") == card
            meta = onnx_metadata(repo / role / "1" / "model.onnx")
            assert ModelCard.from_dict(json.loads(meta["model_card"])) == card
        document = json.loads((repo / "vote" / "1" / "model_cards.json").read_text())
        assert document == {role: card.to_dict() for role, card in cards.items()}
        assert "model_cards.json" in get_parameter(read_config(repo / "vote"), "required_files").split(",")
    assert cards["classifier"].demo and cards["classifier"].training_data.source_kind == "none"
    broken = portable.path.parent / "broken"
    shutil.copytree(portable.path, broken)
    (broken / "vote" / "1" / "model_cards.json").unlink()
    assert validate_repository(broken) == [
        "model 'vote': vote/1/model_cards.json is missing (weights or code)"]


def test_checkpoint_without_model_card_is_not_exported(checkpoints, tmp_path):
    no_card = tmp_path / "no_card"
    shutil.copytree(checkpoints["segmenter"], no_card)
    (no_card / "model_card.json").unlink()
    with pytest.raises(CheckpointError, match=r"no_card/model_card\.json: checkpoint has no model card; retrain it "
                                              r"with `python -m covidct.training train`"):
        build_repository(checkpoints["classifier"], no_card, tmp_path / "repo", options=FAST)
    stale = tmp_path / "stale"
    shutil.copytree(checkpoints["classifier"], stale)
    torch.save(create_model("cnn6", input_size=SIZE).state_dict(), stale / "weights.pt")
    with pytest.raises(CheckpointError, match=r"stale/model_card\.json: the card describes weights sha256"):
        build_repository(stale, checkpoints["segmenter"], tmp_path / "repo", options=FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no_card", "stale"]


def test_portable_runner_reads_its_generated_config(portable):
    """The classifier's runner, configured from the generated config.pbtxt in Triton's
    JSON form, runs the exported ONNX file."""
    config = read_config(portable.path / "classifier")
    settings = RunnerSettings.from_model_config(json_format.MessageToDict(config, preserving_proto_field_name=True))
    assert settings.input_dims == (-1, 1, SIZE, SIZE) and settings.chunk_slices == 64
    runner = OnnxRuntimeRunner(portable.path / "classifier" / "1" / settings.onnx_file, settings)
    y = runner(np.random.default_rng(0).random((3, 1, SIZE, SIZE), dtype=np.float32))
    assert y.shape == (3, 1) and np.all((y >= 0) & (y <= 1))


def test_container_repository(container):
    repo = container.path
    assert validate_repository(repo) == []
    for model, inp in (("classifier", "CLASSIFIER_INPUT"), ("segmenter", "SEGMENTER_INPUT")):
        version = repo / model / "1"
        assert not (version / "model.py").exists() and (version / "model.onnx").is_file()
        config = read_config(repo / model)
        assert config.platform == "onnxruntime_onnx" and config.backend == ""
        assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
        accel = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
        assert accel.name == "tensorrt" and accel.parameters["precision_mode"] == "FP16"
        assert accel.parameters["trt_profile_max_shapes"] == f"{inp}:1024x1x{SIZE}x{SIZE}"
        warmup = config.model_warmup[0]
        assert list(warmup.inputs[inp].dims) == [128, 1, SIZE, SIZE] and warmup.inputs[inp].random_data
        text = (repo / model / "config.pbtxt").read_text()
        assert "No dynamic_batching" in text
    # the Python pre/post-processing models are unchanged apart from their settings
    assert read_config(repo / "preprocess").backend == read_config(DEFAULT_SOURCE_REPOSITORY / "preprocess").backend
    assert [r.format for r in container.rows] == ["onnx + TRT EP", "onnx + TRT EP"]


def test_container_repository_with_plans(checkpoints, tmp_path):
    plans = {}
    for model in ("classifier", "segmenter"):
        plans[model] = tmp_path / f"{model}.plan"
        plans[model].write_bytes(b"serialized engine built elsewhere")
    report = generate_repository(checkpoints["classifier"], checkpoints["segmenter"], tmp_path / "repo",
                                 "container", plans=plans, options=FAST)
    assert validate_repository(report.path) == []
    for model in plans:
        config = read_config(report.path / model)
        assert config.platform == "tensorrt_plan" and config.default_model_filename == "model.plan"
        assert (report.path / model / "1" / "model.plan").read_bytes() == plans[model].read_bytes()
        assert not (report.path / model / "1" / "model.onnx").exists()
        assert not config.optimization.execution_accelerators.gpu_execution_accelerator
    assert all(r.parity_error is None and "TensorRT unavailable" in r.note for r in report.rows), report.rows


def test_portable_gpu_instances(checkpoints, tmp_path):
    report = generate_repository(checkpoints["classifier"], checkpoints["segmenter"], tmp_path / "repo",
                                 options=replace(FAST, gpu=True))
    for model in ("preprocess", "classifier", "segmenter", "vote"):
        config = read_config(report.path / model)
        assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU, model
        # Inputs are handed over where they lie, so GPU tensors stay on the GPU between steps.
        assert get_parameter(config, "FORCE_CPU_ONLY_INPUT_TENSORS") == "no", model
    assert {r.precision for r in report.rows} == {"FP16 (torch)"}
    cpu = generate_repository(checkpoints["classifier"], checkpoints["segmenter"], tmp_path / "cpu", options=FAST)
    assert get_parameter(read_config(cpu.path / "preprocess"), "FORCE_CPU_ONLY_INPUT_TENSORS") is None
    assert get_parameter(read_config(cpu.path / "preprocess"), "intra_op_threads") == "1"


def test_existing_output_is_kept_unless_overwrite(checkpoints, tmp_path):
    out = tmp_path / "repo"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ExportError, match=r"repo: folder exists and is not empty \(use overwrite"):
        build_repository(checkpoints["classifier"], checkpoints["segmenter"], out, options=FAST)
    assert (out / "keep.txt").read_text() == "x"
    path = build_repository(checkpoints["classifier"], checkpoints["segmenter"], out,
                            options=replace(FAST, overwrite=True))
    assert path == out and not (out / "keep.txt").exists() and validate_repository(out) == []
    assert leftovers(tmp_path) == []


def test_incompatible_segmenter_pipeline_leaves_nothing(checkpoints, tmp_path):
    other = save_checkpoint(tmp_path / "unet_other_window", create_model("unet", input_size=SIZE),
                            pipeline(window=WindowConfig(min_hu=-1200.0, max_hu=600.0)))
    with pytest.raises(CheckpointError,
                       match=r"unet_other_window/pipeline_config\.json: window .* differs from the deployed"):
        build_repository(checkpoints["classifier"], other, tmp_path / "repo", options=FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet_other_window"]


def test_wrong_task_and_corrupt_weights_leave_nothing(checkpoints, tmp_path):
    with pytest.raises(CheckpointError, match="network 'unet' is a segmentation network; the classifier needs"):
        build_repository(checkpoints["segmenter"], checkpoints["segmenter"], tmp_path / "repo", options=FAST)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(checkpoints["classifier"], corrupt)
    (corrupt / "weights.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match=r"corrupt/weights\.pt: cannot read weights"):
        build_repository(corrupt, checkpoints["segmenter"], tmp_path / "repo", options=FAST)
    with pytest.raises(CheckpointError, match="checkpoint lacks model_config.json"):
        (corrupt / "model_config.json").unlink()
        build_repository(corrupt, checkpoints["segmenter"], tmp_path / "repo", options=FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt"]


def test_failure_after_export_removes_the_temporary_repository(checkpoints, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(DEFAULT_SOURCE_REPOSITORY, source, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.rmtree(source / "vote")
    out_parent = tmp_path / "out"
    with pytest.raises(ExportError, match=r"lacks model 'vote'"):
        build_repository(checkpoints["classifier"], checkpoints["segmenter"], out_parent / "repo",
                         options=FAST, source=source)
    assert list(out_parent.iterdir()) == []


def test_argument_errors(checkpoints, tmp_path):
    c, s = checkpoints["classifier"], checkpoints["segmenter"]
    with pytest.raises(ExportError, match="unknown profile 'edge'"):
        build_repository(c, s, tmp_path / "r", profile="edge")
    with pytest.raises(ExportError, match="plans are served by the container profile only"):
        build_repository(c, s, tmp_path / "r", plans={"classifier": tmp_path})
    with pytest.raises(ExportError, match=r"missing\.plan: TensorRT plan for classifier not found"):
        build_repository(c, s, tmp_path / "r", "container", plans={"classifier": tmp_path / "missing.plan"})
    with pytest.raises(ExportError, match=r"plans given for unknown models \['vote'\]"):
        build_repository(c, s, tmp_path / "r", "container", plans={"vote": tmp_path})
    assert list(tmp_path.iterdir()) == []


def test_cli_summary_and_errors(checkpoints, tmp_path, capsys):
    c, s = str(checkpoints["classifier"]), str(checkpoints["segmenter"])
    out = tmp_path / "repo"
    rc = main(["--classifier", c, "--segmenter", s, "--profile", "container", "--out", str(out),
               "--exporter", "torchscript", "--slices", "1", "64", "512"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    lines = captured.out.splitlines()
    assert lines[0].split() == ["model", "network", "format", "precision", "size", "parity", "|err|", "note"]
    assert lines[2].startswith("classifier") and "cnn6" in lines[2] and "FP16 (TensorRT)" in lines[2]
    assert "export" in captured.err  # the tqdm bar
    assert "model card classifier: cnn6 (classification): no training data recorded; DEMO - no recorded " \
           "training data, not for clinical use" in lines
    config = read_config(out / "segmenter")
    accel = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accel.parameters["trt_profile_opt_shapes"] == f"SEGMENTER_INPUT:64x1x{SIZE}x{SIZE}"
    rc = main(["--classifier", s, "--segmenter", s, "--out", str(tmp_path / "bad")])
    assert rc == 2
    assert "error: " in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    with pytest.raises(SystemExit):
        main(["--classifier", c, "--segmenter", s, "--out", str(tmp_path / "x"), "--plan", "classifier"])
    assert json.loads((out / "vote" / "1" / "pipeline_config.json").read_text())["classifier_input"]["size"] == SIZE
