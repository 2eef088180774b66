"""Bytes moved per request (covidct.benchmarks.bytes_moved) on phantom series against the source
ensemble's real config.pbtxt: the step and client totals equal tensor sizes computed by
hand from the shapes, the full-resolution volume crosses one step boundary, every
ensemble step is reported, and a config naming a tensor the request lacks is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from covidct.benchmarks.bytes_moved import (
    CLIENT,
    bytes_moved,
    bytes_table,
    request_tensors,
    served_request_tensors,
    step_bytes,
    tensor_nbytes,
)
from covidct.benchmarks.common import parse_markdown_table, phantom_volume
from covidct.errors import ConfigError
from covidct.serving import source_repository
from covidct.serving import tensors as T
from covidct.export.pbtxt import read_config, set_parameter, write_config
from covidct.preprocessing.config import PipelineConfig

ENSEMBLE_CONFIG = source_repository() / T.ENSEMBLE / "config.pbtxt"
VERSIONS = ("classifier=cnn6:1:sha256:0123abcd4567", "segmenter=unet:1:sha256:89abcdef0123")
CARD = json.dumps({"classifier": {"name": "cnn6 \u00e9"}, "segmenter": {"name": "unet"}}, sort_keys=True)


@pytest.fixture(scope="module")
def clinical():
    """A 12-slice 512 x 512 phantom with the default settings (inputs 224 / 256 px, mask 128 px)."""
    volume = phantom_volume(12, 512, 3)
    config = PipelineConfig()
    tensors = request_tensors(ENSEMBLE_CONFIG, volume.hu, volume.spacing_mm, config,
                              model_versions=VERSIONS, model_card=CARD)
    return volume, config, tensors, bytes_moved(ENSEMBLE_CONFIG, tensors)


def _utf8(array: np.ndarray) -> int:
    return sum(len(v if isinstance(v, bytes) else str(v).encode("utf-8")) + 4 for v in array.reshape(-1))


def test_tensor_nbytes_numeric_and_bytes():
    assert tensor_nbytes(np.zeros((2, 3, 5), np.int16)) == 60
    assert tensor_nbytes(np.zeros((0, 1, 64, 64), np.float32)) == 0
    assert tensor_nbytes(np.array([b"abc", "\u00e9"], dtype=np.object_)) == (3 + 4) + (2 + 4)
    assert tensor_nbytes(np.array([], dtype=np.object_)) == 0


def test_every_step_appears_in_config_order(clinical):
    _, _, tensors, moved = clinical
    names = ["preprocess", "classifier", "segmenter", "vote"]
    assert [s.step for s in moved.steps] == names
    assert [s.step for s in step_bytes(ENSEMBLE_CONFIG, tensors)] == names
    assert moved.client.step == CLIENT
    assert {t.model_tensor for t in moved.client.inputs} == set(T.ENSEMBLE_INPUTS)
    assert {t.model_tensor for t in moved.client.outputs} == set(T.ENSEMBLE_OUTPUTS)


def test_sizes_equal_hand_computed_tensor_sizes(clinical):
    volume, config, tensors, moved = clinical
    n, h, w = volume.hu.shape
    k, lung = tensors[T.SELECTED_INDICES].size, tensors[T.LUNG_SLICES].size
    assert 0 < k <= lung <= n
    s_cls, s_seg = config.classifier_input.size, config.segmenter_input.size
    m = 512 // 4  # mask grid: 512 px block-averaged by 4 to the 128 px mask_size
    steps = {s.step: s for s in moved.steps}

    assert moved.volume_bytes == n * h * w * 2
    assert moved.client.bytes_in == n * h * w * 2 + 3 * 4 + n * 4  # HU, spacing, slice positions
    assert steps["preprocess"].bytes_in == moved.client.bytes_in
    assert steps["classifier"].bytes_in == k * 1 * s_cls * s_cls * 4
    assert steps["classifier"].bytes_out == k * 1 * 4
    assert steps["segmenter"].bytes_in == lung * 1 * s_seg * s_seg * 4
    assert steps["segmenter"].bytes_out == lung * 1 * s_seg * s_seg * 4
    preprocess_assessment = _utf8(tensors["preprocess_assessment"])
    assert preprocess_assessment > 100
    assert steps["preprocess"].bytes_out == (
        k * s_cls * s_cls * 4 + lung * s_seg * s_seg * 4 + k * 4 + lung * 4 + lung * m * m + 3 * 4
        + preprocess_assessment
    )
    assert steps["vote"].bytes_in == k * 4 + lung * s_seg * s_seg * 4 + lung * m * m + 3 * 4 + preprocess_assessment
    lung_mask = {t.model_tensor: t for t in steps["preprocess"].outputs}[T.LUNG_MASK]
    assert (lung_mask.shape, lung_mask.dtype, lung_mask.nbytes) == ((lung, m, m), "uint8", lung * m * m)
    versions = sum(len(v.encode("utf-8")) + 4 for v in VERSIONS)
    card = len(CARD.encode("utf-8")) + 4
    answer = _utf8(tensors[T.ASSESSMENT])
    vote_out = 4 + answer + 4 + 4 + k * 4 + lung * m * m + 4 + 4 + versions + card
    assert steps["vote"].bytes_out == vote_out
    # the answer: the vote's outputs plus what preprocess passes through to the client
    assert moved.client.bytes_out == vote_out + k * 4 + lung * 4 + lung * m * m + 3 * 4


def test_the_volume_crosses_one_step_boundary(clinical):
    _, _, _, moved = clinical
    assert moved.full_volume_crossings == ("preprocess in HU_VOLUME",)
    report = moved.to_dict()
    assert report["full_volume_crossings"] == ["preprocess in HU_VOLUME"]
    row = parse_markdown_table(bytes_table([(12, report)]))[0]
    assert row["full-volume crossings"] == "1 (preprocess in HU_VOLUME)"
    assert float(row["client in (MB)"]) == pytest.approx(moved.client.bytes_in / 1e6, rel=1e-3)
    assert float(row["segmenter out (MB)"]) == pytest.approx(moved.steps[2].bytes_out / 1e6, rel=1e-3)


def test_network_inputs_outgrow_small_slices():
    """On 128 x 128 slices the float32 224 / 256 px network inputs are larger than the int16
    volume: they count as full-volume crossings."""
    volume = phantom_volume(8, 128, 1)
    moved = bytes_moved(ENSEMBLE_CONFIG, request_tensors(ENSEMBLE_CONFIG, volume.hu, volume.spacing_mm,
                                                         PipelineConfig()))
    assert moved.full_volume_crossings[0] == "preprocess in HU_VOLUME"
    assert {"preprocess out segmenter_input", "segmenter in segmenter_input",
            "segmenter out infection_probability", "vote in infection_probability"} <= set(moved.full_volume_crossings)


def test_served_repository_settings_reach_the_answer(tmp_path):
    """Settings, model versions and cards are read from the served repository's files."""
    repo = tmp_path / "repo"
    for model in ("preprocess", "vote", T.ENSEMBLE):
        (repo / model / "1").mkdir(parents=True)
        config = read_config(source_repository() / model)
        if model == "vote":
            set_parameter(config, "model_versions", ",".join(VERSIONS))
        write_config(config, repo / model)
    small = PipelineConfig.from_dict({**PipelineConfig().to_dict(),
                                      "classifier_input": {"size": 64, "lung_crop": False, "mask_channels": True}})
    for model in ("preprocess", "vote"):
        small.save(repo / model / "1" / "pipeline_config.json")
    (repo / "vote" / "1" / "model_cards.json").write_text(CARD, encoding="utf-8")
    volume = phantom_volume(12, 512, 3)
    tensors = served_request_tensors(repo, volume.hu, volume.spacing_mm)
    assert tensors["classifier_input"].shape == (tensors[T.SELECTED_INDICES].size, 3, 64, 64)
    assert [v.decode() for v in tensors[T.MODEL_VERSIONS]] == list(VERSIONS)
    assert tensors[T.MODEL_CARD][0].decode("utf-8") == CARD


def _config_with(tmp_path: Path, step: str, model_tensor: str, ensemble_tensor: str) -> Path:
    config = read_config(ENSEMBLE_CONFIG)
    for item in config.ensemble_scheduling.step:
        if item.model_name == step:
            item.input_map[model_tensor] = ensemble_tensor
    (tmp_path / T.ENSEMBLE).mkdir(exist_ok=True)
    return write_config(config, tmp_path / T.ENSEMBLE)


def test_a_tensor_the_request_lacks_is_refused(clinical, tmp_path):
    _, config, tensors, _ = clinical
    path = _config_with(tmp_path, "vote", T.ASSESSMENT, "no_such_tensor")
    with pytest.raises(ConfigError, match=r"step 'vote' input 'ASSESSMENT' is ensemble tensor 'no_such_tensor'"):
        bytes_moved(path, tensors)
    with pytest.raises(ConfigError, match=r"no_such_tensor.*request's tensors do not hold"):
        step_bytes(path, tensors)
    volume = phantom_volume(12, 128, 0)
    with pytest.raises(ConfigError, match=r"config.pbtxt: step 'vote' input 'ASSESSMENT'.*no_such_tensor"):
        request_tensors(path, volume.hu, volume.spacing_mm, config)


def test_a_model_config_is_not_an_ensemble():
    with pytest.raises(ConfigError, match=r"model 'classifier' is not an ensemble"):
        step_bytes(source_repository() / "classifier" / "config.pbtxt", {})
