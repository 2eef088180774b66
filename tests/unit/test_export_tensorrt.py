"""TensorRT engine build: everything up to the build is tested here (profile shapes,
trtexec argv, configuration, the unavailable-TensorRT error); the build and the FP16
parity need TensorRT and a GPU (``@pytest.mark.tensorrt``, skipped where absent)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from covidct.errors import ExportError, TensorRTUnavailableError
from covidct.export.config import SliceProfile, TensorRTBuildConfig
from covidct.export.pbtxt import TensorSpec
from covidct.export.tensorrt_build import (
    build_engine,
    check_engine_parity,
    main,
    onnx_input_spec,
    profile_shapes,
    require_tensorrt,
    trtexec_argv,
)

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
NO_TRT_REASON = "TensorRT is not installed (its PyPI packages download from NVIDIA's own index)"


def tiny_onnx(path: Path, dims=("slices", 1, 16, 16)) -> Path:
    """A real ONNX file: CLASSIFIER_INPUT [slices,1,16,16] -> sigmoid(mean) [slices,1]."""
    x = helper.make_tensor_value_info("CLASSIFIER_INPUT", TensorProto.FLOAT, list(dims))
    y = helper.make_tensor_value_info("PROBABILITY", TensorProto.FLOAT, [dims[0], 1])
    axes = helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3])
    nodes = [
        helper.make_node("ReduceMean", ["CLASSIFIER_INPUT", "axes"], ["mean"], keepdims=0),
        helper.make_node("Unsqueeze", ["mean", "one"], ["mean2"]),
        helper.make_node("Sigmoid", ["mean2"], ["PROBABILITY"]),
    ]
    one = helper.make_tensor("one", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(nodes, "tiny", [x], [y], initializer=[axes, one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def test_profile_shapes_from_onnx_input(tmp_path):
    spec = onnx_input_spec(tiny_onnx(tmp_path / "m.onnx"))
    assert spec == TensorSpec("CLASSIFIER_INPUT", "TYPE_FP32", (-1, 1, 16, 16))
    shapes = profile_shapes(spec, SliceProfile(1, 128, 1024))
    assert (shapes.min, shapes.opt, shapes.max) == ((1, 1, 16, 16), (128, 1, 16, 16), (1024, 1, 16, 16))
    assert shapes.trtexec_flags() == [
        "--minShapes=CLASSIFIER_INPUT:1x1x16x16",
        "--optShapes=CLASSIFIER_INPUT:128x1x16x16",
        "--maxShapes=CLASSIFIER_INPUT:1024x1x16x16",
    ]


def test_profile_needs_fixed_channel_and_size():
    spec = TensorSpec("SEGMENTER_INPUT", "TYPE_FP32", (-1, 1, -1, -1))
    dynamic = r"SEGMENTER_INPUT TYPE_FP32 \[-1, 1, -1, -1\]: only the slice axis may be dynamic"
    with pytest.raises(ExportError, match=dynamic):
        profile_shapes(spec, SliceProfile())


def test_trtexec_argv_matches_the_api_build_settings(tmp_path):
    spec = TensorSpec("SEGMENTER_INPUT", "TYPE_FP32", (-1, 1, 256, 256))
    config = TensorRTBuildConfig(profile=SliceProfile(1, 64, 512), workspace_mib=2048, timing_cache="t.cache",
                                 optimization_level=4)
    argv = trtexec_argv("seg.onnx", "seg.plan", profile_shapes(spec, config.profile), config)
    assert argv == [
        "trtexec", "--onnx=seg.onnx", "--saveEngine=seg.plan", "--fp16",
        "--minShapes=SEGMENTER_INPUT:1x1x256x256",
        "--optShapes=SEGMENTER_INPUT:64x1x256x256",
        "--maxShapes=SEGMENTER_INPUT:512x1x256x256",
        "--memPoolSize=workspace:2048M", "--timingCacheFile=t.cache",
        "--builderOptimizationLevel=4", "--skipInference",
    ]
    no_cache = trtexec_argv("a.onnx", "a.plan", profile_shapes(spec, SliceProfile()),
                            TensorRTBuildConfig(fp16=False, timing_cache=None))
    assert "--fp16" not in no_cache and not any(a.startswith("--timingCacheFile") for a in no_cache)


def test_cli_prints_trtexec_command(tmp_path, capsys):
    onnx_path = tiny_onnx(tmp_path / "c.onnx")
    assert main([str(onnx_path), str(tmp_path / "c.plan"), "--opt", "32", "--max", "256", "--print-trtexec"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("trtexec --onnx=") and "--maxShapes=CLASSIFIER_INPUT:256x1x16x16" in line


def test_build_config_validation():
    with pytest.raises(ExportError, match=r"1 <= min_slices <= opt_slices <= max_slices; got 1 / 2048 / 1024"):
        SliceProfile(1, 2048, 1024)
    with pytest.raises(ExportError, match="workspace_mib must be >= 1; got 0"):
        TensorRTBuildConfig(workspace_mib=0)
    with pytest.raises(ExportError, match="optimization_level must be in 0..5; got 7"):
        TensorRTBuildConfig(optimization_level=7)


def test_onnx_input_spec_of_a_corrupt_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07 not a protobuf \xff\xfe")
    with pytest.raises(ExportError, match=r"bad\.onnx: cannot read ONNX file"):
        onnx_input_spec(bad)


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_missing_tensorrt_gives_a_clear_error(tmp_path):
    unavailable = r"TensorRT is not importable here.*NVIDIA's TensorRT or Triton container"
    with pytest.raises(TensorRTUnavailableError, match=unavailable):
        require_tensorrt()
    with pytest.raises(TensorRTUnavailableError, match="trtexec_argv"):
        build_engine(tiny_onnx(tmp_path / "m.onnx"), tmp_path / "m.plan")
    assert not (tmp_path / "m.plan").exists()
    assert main([str(tmp_path / "m.onnx"), str(tmp_path / "m.plan")]) == 2


@pytest.mark.tensorrt
@pytest.mark.skipif(not HAS_TENSORRT, reason=NO_TRT_REASON)
def test_build_fp16_engine_and_parity(tmp_path):  # pragma: no cover - needs TensorRT + GPU
    onnx_path = tiny_onnx(tmp_path / "m.onnx")
    config = TensorRTBuildConfig(profile=SliceProfile(1, 8, 32), workspace_mib=256, timing_cache="cache.bin")
    plan = build_engine(onnx_path, tmp_path / "m.plan", config)
    assert plan.stat().st_size > 0 and (tmp_path / "cache.bin").stat().st_size > 0
    report = check_engine_parity(plan, onnx_path, "PROBABILITY", batch_sizes=(1, 3, 32))
    assert report.max_abs_error <= 2e-2
    assert np.isfinite(report.max_abs_error)
