"""The runners behind the portable classifier/segmenter models: settings from the
Triton config JSON, chunking, input checks, ONNX Runtime vs the torch runner.

The GPU path (CUDA, CUDA graphs) cannot run here; its CPU-testable parts are tested:
bucket choice, chunking, dtype handling, loading from a version folder, DLPack input,
and the same runner class on the CPU in float32 and float16.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from covidct.errors import CheckpointError, ExportError, TensorInputError
from covidct.export.onnx_export import export_checkpoint
from covidct.serving.runners import (
    OnnxRuntimeRunner,
    RunnerSettings,
    TorchHalfRunner,
    bucket_for,
    check_input_shape,
    chunk_slices,
    create_runner,
    empty_output_shape,
    graph_buckets,
)
from covidct.preprocessing.config import ModelInputConfig, PipelineConfig
from covidct.training.checkpoint import save_checkpoint
from covidct.training.registry import create_model

SIZE = 32


def settings_for(kind: str, chunk: int = 2, threads: int = 1) -> RunnerSettings:
    if kind == "classifier":
        return RunnerSettings("CLASSIFIER_INPUT", "PROBABILITY", (-1, 1, SIZE, SIZE), (-1, 1), chunk, threads)
    return RunnerSettings("SEGMENTER_INPUT", "INFECTION_PROBABILITY", (-1, 1, SIZE, SIZE), (-1, 1, SIZE, SIZE),
                          chunk, threads)


@pytest.fixture(scope="module")
def version_dirs(tmp_path_factory) -> dict[str, Path]:
    """Version folders as the exporter lays them out: model.onnx + checkpoint files."""
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    root = tmp_path_factory.mktemp("runners")
    inp = ModelInputConfig(size=SIZE)
    pipeline = PipelineConfig(classifier_input=inp, segmenter_input=inp)
    dirs = {}
    try:
        for kind, name in (("classifier", "cnn6"), ("segmenter", "unet")):
            torch.manual_seed(0)
            ckpt = save_checkpoint(root / kind, create_model(name, input_size=SIZE), pipeline)
            export_checkpoint(ckpt, ckpt / "model.onnx")
            dirs[kind] = ckpt
    finally:
        torch.set_num_threads(threads)
    return dirs


def slices(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, SIZE, SIZE), dtype=np.float32)


def test_settings_from_triton_model_config_json():
    # the JSON form Triton hands to initialize(): dims as strings, parameters as objects
    config = {
        "name": "classifier",
        "input": [{"name": "CLASSIFIER_INPUT", "data_type": "TYPE_FP32", "dims": ["-1", "1", "224", "224"]}],
        "output": [{"name": "PROBABILITY", "data_type": "TYPE_FP32", "dims": ["-1", "1"]}],
        "parameters": {"chunk_slices": {"string_value": "32"}, "intra_op_threads": {"string_value": "2"},
                       "cuda_graphs": {"string_value": "false"}, "onnx_file": {"string_value": "net.onnx"}},
    }
    s = RunnerSettings.from_model_config(config)
    assert (s.input_name, s.output_name, s.input_dims, s.output_dims) == (
        "CLASSIFIER_INPUT", "PROBABILITY", (-1, 1, 224, 224), (-1, 1))
    assert (s.chunk_slices, s.intra_op_threads, s.cuda_graphs, s.onnx_file) == (32, 2, False, "net.onnx")
    config["parameters"] = {}
    d = RunnerSettings.from_model_config(config)
    assert (d.chunk_slices, d.intra_op_threads, d.cuda_graphs, d.onnx_file) == (64, 0, True, "model.onnx")
    config["parameters"] = {"chunk_slices": {"string_value": "many"}}
    with pytest.raises(ExportError, match="model 'classifier': parameter chunk_slices must be an integer; got 'many'"):
        RunnerSettings.from_model_config(config)
    config["output"] = []
    with pytest.raises(ExportError, match="needs one input and one output; config has 1 and 0"):
        RunnerSettings.from_model_config(config)


def test_chunks_and_cuda_graph_buckets():
    assert chunk_slices(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert chunk_slices(0, 64) == []
    assert chunk_slices(64, 64) == [slice(0, 64)]
    assert graph_buckets(64) == (1, 2, 4, 8, 16, 32, 64)
    assert graph_buckets(48) == (1, 2, 4, 8, 16, 32, 48)
    assert graph_buckets(1) == (1,)
    assert [bucket_for(n, graph_buckets(48)) for n in (1, 3, 33, 48)] == [1, 4, 48, 48]
    with pytest.raises(ExportError, match="49 slices exceed the largest CUDA-graph bucket 48"):
        bucket_for(49, graph_buckets(48))
    with pytest.raises(ExportError, match="chunk must be >= 1; got 0"):
        chunk_slices(3, 0)


def test_input_checks_name_the_tensor():
    dims = (-1, 1, SIZE, SIZE)
    check_input_shape((3, 1, SIZE, SIZE), np.float32, "X", dims)
    with pytest.raises(TensorInputError, match="tensor X: dtype float64 is not float32"):
        check_input_shape((3, 1, SIZE, SIZE), np.dtype("float64"), "X", dims)
    with pytest.raises(TensorInputError, match=r"tensor X: shape \[3, 32, 32\] has rank 3"):
        check_input_shape((3, SIZE, SIZE), np.float32, "X", dims)
    with pytest.raises(TensorInputError, match=r"tensor X: shape \[3, 1, 16, 32\] has 16 at axis 2"):
        check_input_shape((3, 1, 16, SIZE), np.float32, "X", dims)
    assert empty_output_shape((0, 1, 8, 8), (-1, 1, -1, -1)) == (0, 1, 8, 8)
    assert empty_output_shape((0, 1, 8, 8), (-1, 1)) == (0, 1)


@pytest.mark.parametrize("kind", ["classifier", "segmenter"])
def test_onnxruntime_runner_chunks_match_one_run(version_dirs, kind):
    d = version_dirs[kind]
    x = slices(5)
    chunked = OnnxRuntimeRunner(d / "model.onnx", settings_for(kind, chunk=2))(x)
    whole = OnnxRuntimeRunner(d / "model.onnx", settings_for(kind, chunk=64))(x)
    assert chunked.dtype == np.float32 and chunked.shape == ((5, 1) if kind == "classifier" else (5, 1, SIZE, SIZE))
    np.testing.assert_allclose(chunked, whole, atol=1e-6)
    assert np.all((chunked >= 0) & (chunked <= 1))
    empty = OnnxRuntimeRunner(d / "model.onnx", settings_for(kind))(slices(0))
    assert empty.shape[0] == 0 and empty.dtype == np.float32


def test_onnxruntime_runner_rejects_bad_input_and_files(version_dirs, tmp_path):
    runner = OnnxRuntimeRunner(version_dirs["classifier"] / "model.onnx", settings_for("classifier"))
    with pytest.raises(TensorInputError, match=r"tensor CLASSIFIER_INPUT: shape \[2, 1, 16, 16\] has 16 at axis 2"):
        runner(np.zeros((2, 1, 16, 16), np.float32))
    with pytest.raises(ExportError, match=r"nowhere\.onnx: ONNX file not found"):
        OnnxRuntimeRunner(tmp_path / "nowhere.onnx", settings_for("classifier"))
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not an onnx model")
    with pytest.raises(ExportError, match=r"corrupt\.onnx: ONNX Runtime cannot load the model"):
        OnnxRuntimeRunner(corrupt, settings_for("classifier"))
    with pytest.raises(ExportError, match=r"tensors \['CLASSIFIER_INPUT'\] -> \['PROBABILITY'\] do not match"):
        OnnxRuntimeRunner(version_dirs["classifier"] / "model.onnx", settings_for("segmenter"))


@pytest.mark.parametrize("dtype, atol", [("float32", 1e-5), ("float16", 2e-2)])
@pytest.mark.parametrize("kind", ["classifier", "segmenter"])
def test_torch_runner_on_cpu_matches_onnxruntime(version_dirs, kind, dtype, atol):
    d = version_dirs[kind]
    x = slices(5, seed=3)
    reference = OnnxRuntimeRunner(d / "model.onnx", settings_for(kind))(x)
    runner = TorchHalfRunner.from_version_dir(d, settings_for(kind, chunk=2), device="cpu", dtype=dtype)
    assert runner.use_graphs is False  # CUDA graphs only on a CUDA device
    assert runner.accepts_dlpack
    out = runner(x)
    assert out.dtype == np.float32 and out.shape == reference.shape
    np.testing.assert_allclose(out, reference, atol=atol)
    # DLPack input (how model.py hands over a pb_utils.Tensor) and torch tensors
    np.testing.assert_allclose(runner(torch.from_numpy(x).__dlpack__()), out, atol=1e-6)
    np.testing.assert_allclose(runner(torch.from_numpy(x)), out, atol=1e-6)
    assert runner(slices(0)).shape[0] == 0


def test_torch_runner_loading_errors(version_dirs, tmp_path):
    broken = tmp_path / "version"
    shutil.copytree(version_dirs["classifier"], broken)
    cfg = json.loads((broken / "model_config.json").read_text())
    cfg["input_size"] = 64
    (broken / "model_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"pipeline classifier_input is 32x32.*expects 64x64"):
        TorchHalfRunner.from_version_dir(broken, settings_for("classifier"), device="cpu", dtype="float32")
    with pytest.raises(ExportError, match="unknown torch dtype 'float12'"):
        TorchHalfRunner.from_version_dir(version_dirs["classifier"], settings_for("classifier"), "cpu", "float12")
    runner = TorchHalfRunner.from_version_dir(version_dirs["classifier"], settings_for("classifier"), "cpu", "float32")
    with pytest.raises(TensorInputError, match="tensor CLASSIFIER_INPUT: dtype float64 is not float32"):
        runner(torch.zeros((2, 1, SIZE, SIZE), dtype=torch.float64))


def test_create_runner_by_instance_kind(version_dirs):
    d = version_dirs["classifier"]
    for kind in ("CPU", "KIND_CPU"):
        assert isinstance(create_runner(kind, d, settings_for("classifier")), OnnxRuntimeRunner)
    with pytest.raises(ExportError, match="unsupported instance kind 'TPU'"):
        create_runner("TPU", d, settings_for("classifier"))
    if not torch.cuda.is_available():
        with pytest.raises((RuntimeError, AssertionError), match="(?i)cuda"):
            create_runner("GPU", d, settings_for("classifier"))
