"""ONNX export of every registered network: names, dynamic slice axis, metadata, parity.

Real torch exports (torch.export-based exporter, opset 18), real onnx.checker and real
ONNX Runtime. Networks at their smallest valid input size; weights and batch-norm
statistics are randomised so that outputs spread over (0, 1) and a parity check can fail.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from covidct.errors import CheckpointError, ExportError, ParityError
from covidct.export.config import OnnxExportConfig, ParityTolerance
from covidct.export.onnx_export import export_checkpoint, exported_specs, onnx_metadata
from covidct.export.parity import check_parity, compare_outputs, onnxruntime_function, random_inputs
from covidct.export.pbtxt import TensorSpec
from covidct.preprocessing.config import ModelInputConfig, PipelineConfig
from covidct.training.checkpoint import save_checkpoint
from covidct.training.model_card import FILENAME as CARD_FILENAME
from covidct.training.model_card import ModelCard, load_model_card
from covidct.training.registry import create_model, list_models

# Smallest input sizes the architectures accept (resnet: divisible by 64; attention
# U-Net depth 5 and FCN-8s: by 32).
SMALL_SIZE = {"cnn6": 32, "unet": 32, "fcn8s": 32, "attention_unet": 32, "efficientnet_b4": 32,
              "resnet50v2": 64, "resnet50v2_fpn": 64, "efficientnet_lite0": 32, "unet_lite0": 32}
FAST = ("cnn6", "unet")


@pytest.fixture(autouse=True)
def _two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    yield
    torch.set_num_threads(threads)


def spread_weights(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random BN statistics/affine and scaled-up weights: outputs far from 0.5."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(n, generator=gen) * 0.2)
        last = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1]
        last.weight.mul_(20.0)
    return model


def make_checkpoint(root: Path, name: str, size: int | None = None, **overrides) -> Path:
    size = size or SMALL_SIZE[name]
    model = spread_weights(create_model(name, input_size=size, **overrides))
    channels = model.model_config.in_channels
    inp = ModelInputConfig(size=size, mask_channels=channels == 3)
    pipeline = PipelineConfig(classifier_input=inp, segmenter_input=inp)
    return save_checkpoint(root / name, model, pipeline)


def check_export(ckpt: Path, out: Path, config: OnnxExportConfig = OnnxExportConfig()):
    result = export_checkpoint(ckpt, out, config=config)
    model_config = json.loads((ckpt / "model_config.json").read_text())
    size = model_config["input_size"]
    proto = onnx.load(str(out))
    assert [i.name for i in proto.graph.input] == [result.input.name]
    assert [o.name for o in proto.graph.output] == [result.output.name]
    dim0 = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.HasField("dim_value"), "slice axis must be dynamic"
    assert result.input.dims == (-1, model_config["in_channels"], size, size)
    assert result.parity.batch_sizes == (1, 3)
    assert result.parity.max_abs_error <= 1e-4
    assert result.size_bytes == out.stat().st_size
    # the pipeline config travels beside the file and inside it
    beside = PipelineConfig.load(out.parent)
    assert beside == PipelineConfig.load(ckpt)
    meta = onnx_metadata(out)
    assert PipelineConfig.from_dict(json.loads(meta["pipeline_config"])) == beside
    assert json.loads(meta["model_config"])["name"] == model_config["name"]
    assert len(meta["weights_sha256"]) == 64
    # so does the model card
    card = load_model_card(ckpt)
    assert ModelCard.from_dict(json.loads(meta["model_card"])) == card == load_model_card(out.parent)
    assert card.weights_sha256 == meta["weights_sha256"]
    # a slice count never seen in export or parity runs through ONNX Runtime
    run = onnxruntime_function(out, result.input.name, result.output.name, threads=1)
    scale = np.linspace(0.05, 1.0, 7, dtype=np.float32)[:, None, None, None]
    y = run(np.random.default_rng(5).random((7, *result.input.dims[1:]), dtype=np.float32) * scale)
    assert y.shape[0] == 7 and np.all((y >= 0) & (y <= 1))
    return result


def test_every_registered_network_has_a_small_size():
    assert set(list_models()) <= set(SMALL_SIZE), "new network: add its smallest size to SMALL_SIZE"


@pytest.mark.parametrize("name", FAST)
def test_export_and_parity_fast_networks(tmp_path, name):
    result = check_export(make_checkpoint(tmp_path, name), tmp_path / "out" / "model.onnx")
    expected = ("CLASSIFIER_INPUT", "PROBABILITY") if name == "cnn6" else ("SEGMENTER_INPUT", "INFECTION_PROBABILITY")
    assert (result.input.name, result.output.name) == expected


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in SMALL_SIZE if n not in FAST])
def test_export_and_parity_large_networks(tmp_path, name):
    result = check_export(make_checkpoint(tmp_path, name), tmp_path / "out" / "model.onnx")
    if name.startswith("resnet50v2"):  # 2-logit nets get softmax[:, 1:2]
        assert result.output.dims == (-1, 1)


def test_export_two_logit_classifier_and_mask_channels(tmp_path):
    ckpt = make_checkpoint(tmp_path, "cnn6", num_outputs=2, in_channels=3)
    result = check_export(ckpt, tmp_path / "out" / "model.onnx")
    assert result.input.dims == (-1, 3, 32, 32) and result.output.dims == (-1, 1)


def test_parity_check_catches_a_tampered_export(tmp_path):
    from covidct.training.heads import probability_model
    from covidct.export.parity import torch_function
    from covidct.training.checkpoint import load_checkpoint

    ckpt = make_checkpoint(tmp_path, "cnn6")
    out = tmp_path / "out" / "model.onnx"
    result = export_checkpoint(ckpt, out)
    proto = onnx.load(str(out))
    weights = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))
    array = onnx.numpy_helper.to_array(weights) * 1.5
    weights.CopyFrom(onnx.numpy_helper.from_array(array.astype(np.float32), weights.name))
    tampered = tmp_path / "tampered.onnx"
    onnx.save(proto, str(tampered))
    network, model_config, _ = load_checkpoint(ckpt)
    with pytest.raises(ParityError, match=r"onnxruntime tampered\.onnx vs torch cnn6 \(input \[1, 1, 32, 32\]\)"):
        check_parity(
            torch_function(probability_model(network, model_config)),
            onnxruntime_function(tampered, result.input.name, result.output.name),
            (1, 32, 32), batch_sizes=(1, 3), tolerance=ParityTolerance(), seed=0,
            reference="torch cnn6", candidate="onnxruntime tampered.onnx",
        )


def test_legacy_torchscript_exporter(tmp_path):
    config = OnnxExportConfig(exporter="torchscript")
    check_export(make_checkpoint(tmp_path, "unet"), tmp_path / "out" / "model.onnx", config)


def test_exported_specs_reject_contradicting_config():
    from covidct.training.registry import resolve_config

    cfg = resolve_config("unet", input_size=32, in_channels=3)
    io = (TensorSpec("SEGMENTER_INPUT", "TYPE_FP32", (-1, 1, -1, -1)),
          TensorSpec("INFECTION_PROBABILITY", "TYPE_FP32", (-1, 1, -1, -1)))
    with pytest.raises(CheckpointError, match=r"SEGMENTER_INPUT dims \[-1, 3, 32, 32\].*fixes SEGMENTER_INPUT"):
        exported_specs(io, cfg)


def test_compare_outputs_reports_worst_element():
    ref = np.array([[0.1], [0.5], [0.9]], np.float32)
    assert compare_outputs(ref, ref + 5e-5, ParityTolerance(), what="x") == pytest.approx(5e-5, rel=1e-3)
    bad = ref.copy()
    bad[2, 0] = 0.9011
    with pytest.raises(ParityError, match=r"onnx vs torch: \|candidate - reference\| = 1\.1\d*e-03 at index \(2, 0\)"):
        compare_outputs(ref, bad, ParityTolerance(), what="onnx vs torch")
    with pytest.raises(ParityError, match=r"output shape \[2, 1\] differs from the reference \[3, 1\]"):
        compare_outputs(ref, ref[:2], ParityTolerance(), what="x")
    with pytest.raises(ParityError, match="candidate output holds NaN"):
        compare_outputs(ref, np.full_like(ref, np.nan), ParityTolerance(), what="x")


def test_check_parity_fails_for_a_drifting_candidate():
    def reference(x):
        return x.mean(axis=(1, 2, 3))[:, None]

    def drifting(x):
        return reference(x) + 1e-3 * np.arange(len(x))[:, None]

    ok = check_parity(reference, reference, (1, 8, 8), batch_sizes=(1, 3), tolerance=ParityTolerance(),
                      seed=0, reference="ref", candidate="same")
    assert ok.max_abs_error == 0.0
    # batch 1 passes (drift 0 at slice 0); batch 3 exposes it
    with pytest.raises(ParityError, match=r"drift vs ref \(input \[3, 1, 8, 8\]\).*at index \(2, 0\)"):
        check_parity(reference, drifting, (1, 8, 8), batch_sizes=(1, 3), tolerance=ParityTolerance(),
                     seed=0, reference="ref", candidate="drift")
    shapes = [x.shape for x in random_inputs((1, 8, 8), (1, 3), seed=0)]
    assert shapes == [(1, 1, 8, 8), (3, 1, 8, 8)]


def test_checkpoint_whose_config_does_not_match_the_weights(tmp_path):
    ckpt = make_checkpoint(tmp_path, "cnn6")
    cfg = json.loads((ckpt / "model_config.json").read_text())
    cfg["extra"]["hidden_units"] = 64
    (ckpt / "model_config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out" / "model.onnx"
    out.parent.mkdir()
    with pytest.raises(CheckpointError, match=r"weights\.pt: weights do not match network 'cnn6'.*wrong shape"):
        export_checkpoint(ckpt, out)
    assert list(out.parent.iterdir()) == []


def test_missing_and_corrupt_checkpoint_files(tmp_path):
    ckpt = make_checkpoint(tmp_path, "unet")
    out = tmp_path / "out" / "model.onnx"
    out.parent.mkdir()
    broken = tmp_path / "no_weights"
    shutil.copytree(ckpt, broken)
    (broken / "weights.pt").unlink()
    with pytest.raises(CheckpointError, match=r"no_weights: checkpoint lacks weights\.pt"):
        export_checkpoint(broken, out)
    (ckpt / "weights.pt").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match=r"weights\.pt: cannot read weights"):
        export_checkpoint(ckpt, out)
    with pytest.raises(CheckpointError, match="checkpoint folder not found"):
        export_checkpoint(tmp_path / "nowhere", out)
    assert list(out.parent.iterdir()) == []


def test_checkpoint_without_or_with_a_stale_model_card(tmp_path):
    ckpt = make_checkpoint(tmp_path, "cnn6")
    out = tmp_path / "out" / "model.onnx"
    out.parent.mkdir()
    card = (ckpt / CARD_FILENAME).read_text()
    (ckpt / CARD_FILENAME).unlink()
    with pytest.raises(CheckpointError, match=r"cnn6/model_card\.json: checkpoint has no model card; retrain it"):
        export_checkpoint(ckpt, out)
    stale = json.loads(card)
    stale["weights_sha256"] = "0" * 64
    (ckpt / CARD_FILENAME).write_text(json.dumps(stale))
    with pytest.raises(CheckpointError, match=r"model_card\.json: the card describes weights sha256 000000000000\.\.\. "
                                              r"but weights\.pt is [0-9a-f]{12}\.\.\.; retrain, or rewrite the card"):
        export_checkpoint(ckpt, out)
    other = {**json.loads(card), "network": "unet", "task": "segmentation"}
    (ckpt / CARD_FILENAME).write_text(json.dumps(other))
    with pytest.raises(CheckpointError, match=r"the card describes 'unet' \(segmentation\) but model_config\.json "
                                              r"is 'cnn6' \(classification\)"):
        export_checkpoint(ckpt, out)
    assert list(out.parent.iterdir()) == []


def test_export_config_rejects_bad_values():
    with pytest.raises(ExportError, match="opset must be in 17..20; got 11"):
        OnnxExportConfig(opset=11)
    with pytest.raises(ExportError, match="exporter must be one of"):
        OnnxExportConfig(exporter="jit")
    with pytest.raises(ExportError, match="parity_batch_sizes must be positive"):
        OnnxExportConfig(parity_batch_sizes=())
