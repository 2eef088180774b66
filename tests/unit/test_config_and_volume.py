"""The versioned pipeline config and the CTVolume type."""

from __future__ import annotations

import json

import numpy as np
import pytest

from covidct.errors import ConfigError, VolumeError, dicom_tag
from covidct.preprocessing.config import (
    PIPELINE_CONFIG_FILENAME,
    ModelInputConfig,
    PipelineConfig,
    SelectionConfig,
    VoteConfig,
)
from covidct.preprocessing.reader_config import ReaderConfig
from covidct.preprocessing.volume import CTVolume, make_series_key


def test_pipeline_config_json_round_trip_is_exact(tmp_path):
    cfg = PipelineConfig(
        vote=VoteConfig(positive_fraction=0.10),
        selection=SelectionConfig(region_x=(100, 400)),
        classifier_input=ModelInputConfig(size=96, mask_channels=True),
    )
    path = cfg.save(tmp_path)
    assert path.name == PIPELINE_CONFIG_FILENAME
    loaded = PipelineConfig.load(tmp_path)
    assert loaded == cfg
    assert loaded.selection.region_x == (100, 400)
    assert loaded.classifier_input.channels == 3


def test_pipeline_config_rejects_unknown_keys(tmp_path):
    data = PipelineConfig().to_dict()
    data["vote"]["positve_fraction"] = 0.3
    with pytest.raises(ConfigError, match=r"unknown VoteConfig keys \['positve_fraction'\]"):
        PipelineConfig.from_dict(data, source="x.json")


def test_pipeline_config_rejects_other_versions(tmp_path):
    (tmp_path / PIPELINE_CONFIG_FILENAME).write_text(json.dumps({"version": 99}))
    with pytest.raises(ConfigError, match="version 99 is not supported; expected 1"):
        PipelineConfig.load(tmp_path)


def test_pipeline_config_missing_and_corrupt_files(tmp_path):
    with pytest.raises(ConfigError, match="pipeline config not found"):
        PipelineConfig.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        PipelineConfig.load(bad)


def _volume(**overrides):
    kwargs = dict(
        hu=np.zeros((3, 8, 8), np.int16),
        spacing_mm=(2.0, 0.7, 0.7),
        positions_mm=np.array([0.0, 2.0, 4.0]),
        series_key=make_series_key("1.2.3"),
        source_format="array",
    )
    kwargs.update(overrides)
    return CTVolume(**kwargs)


def test_ctvolume_accepts_valid_and_reports_voxel_volume():
    vol = _volume()
    assert vol.num_slices == 3
    assert vol.voxel_volume_ml == pytest.approx(2.0 * 0.7 * 0.7 / 1000.0)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"hu": np.zeros((3, 8, 8), np.float32)}, r"int16 \[N, H, W\]; got float32"),
        ({"hu": np.zeros((8, 8), np.int16)}, r"int16 \[N, H, W\]; got int16 \(8, 8\)"),
        ({"spacing_mm": (2.0, float("nan"), 0.7)}, "three finite positive mm values"),
        ({"spacing_mm": (0.0, 0.7, 0.7)}, "three finite positive mm values"),
        ({"positions_mm": np.zeros(2)}, r"one value per slice \(3\)"),
        ({"source_format": "png"}, "source_format must be one of"),
        ({"source_names": ("a",)}, r"must name every slice \(3\); got 1"),
    ],
)
def test_ctvolume_rejects_bad_fields(overrides, message):
    with pytest.raises(VolumeError, match=message):
        _volume(**overrides)


def test_series_key_is_stable_and_not_the_uid():
    uid = "1.2.840.113619.2.55.3.604688119"
    key = make_series_key(uid)
    assert key == make_series_key(uid)
    assert key != make_series_key(uid + "1")
    assert uid not in key and len(key) == 16


def test_dicom_tag_format():
    assert dicom_tag(0x7FE0, 0x0010) == "(7FE0,0010)"
    assert dicom_tag(0x28, 0x1052) == "(0028,1052)"


def test_reader_config_names_its_pixel_decoder() -> None:
    assert ReaderConfig().decoder == "auto"
    assert ReaderConfig(decoder="gdcm").decoder == "gdcm"
    with pytest.raises(ConfigError, match=r"ReaderConfig.decoder='jpeg'; expected one of \['auto', 'nvimgcodec'"):
        ReaderConfig(decoder="jpeg")
