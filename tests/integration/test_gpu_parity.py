"""The GPU parity check on its CPU path (``--device cpu --quick``): a real Triton server
with KIND_CPU instances (ONNX Runtime FP32) against the in-process torch FP32 reference.
It passes on the served weights and names the tensor when the reference runs other weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from covidct.benchmarks.gpu_parity import parse_args, run
from covidct.errors import ParityError

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def quick_parity(tmp_path_factory) -> tuple[Path, dict]:
    """One quick parity run: random-weight networks exported into the folder, served, compared."""
    folder = tmp_path_factory.mktemp("gpu_parity")
    report = run(parse_args(["--out", str(folder / "ok"), "--device", "cpu", "--quick",
                             "--repository-out", str(folder)]))
    return folder, report


def test_served_outputs_match_the_reference_on_the_cpu_path(quick_parity):
    folder, report = quick_parity
    assert report["passed"] and report["atol"] == pytest.approx(1e-4)
    series = {r["slices"]: r for r in report["series"]}
    assert set(series) == {24, 12}
    assert series[24]["verdict"] in (0, 1) and series[24]["selected"] > 0  # assessable: the vote ran
    assert series[12]["verdict"] == -1  # too few lung slices: not assessable, networks still ran
    assert all(r["mismatches"] == [] and r["max_abs_probability_difference"] <= 1e-4 for r in series.values())
    assert json.loads((folder / "ok" / "gpu_parity.json").read_text())["passed"] is True
    assert "Result: PASS." in (folder / "ok" / "gpu_parity.md").read_text()


def test_reference_with_perturbed_weights_fails_naming_the_tensor(quick_parity):
    import torch

    from covidct.training.checkpoint import load_checkpoint, save_checkpoint

    folder, _ = quick_parity
    network, _, pipeline = load_checkpoint(folder / "checkpoints" / "classifier")
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.mul_(1.1)  # moves the random network's probabilities by ~0.01, 100x the tolerance
    perturbed = save_checkpoint(folder / "perturbed_classifier", network, pipeline)
    cfg = parse_args(["--out", str(folder / "bad"), "--device", "cpu", "--quick",
                      "--model-repository", str(folder / "model_repository"),
                      "--reference-checkpoints", str(perturbed), str(folder / "checkpoints" / "segmenter")])
    expected = r"24-slice series: SLICE_PROBABILITIES: max \|difference\| .*expected <= 0\.0001"
    with pytest.raises(ParityError, match=expected):
        run(cfg)
    report = json.loads((folder / "bad" / "gpu_parity.json").read_text())
    assert report["passed"] is False and report["reference_weights"] == "the given checkpoints"
