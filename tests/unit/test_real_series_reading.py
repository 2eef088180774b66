"""The three real COVID-CT-MD series (JPEG Lossless): order, spacing, HU, zip input."""

from __future__ import annotations

import csv
import zipfile
from collections import defaultdict
from pathlib import PurePosixPath

import numpy as np
import pytest

from covidct.preprocessing.io.series_reader import read_dicom_series, read_series

pytestmark = pytest.mark.real_data
SERIES = ("P002", "cap002", "normal002")


@pytest.fixture(scope="module")
def labels(real_data_dir):
    rows = defaultdict(list)
    with open(real_data_dir / "labels.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            rows[row["patient"]].append(row)
    return {p: sorted(r, key=lambda row: int(row["slice_rank"])) for p, r in rows.items()}


@pytest.fixture(scope="module")
def volumes(real_data_dir):
    return {name: read_dicom_series(real_data_dir / name) for name in SERIES}


@pytest.mark.parametrize("name", SERIES)
def test_real_series_sorted_like_labels(volumes, labels, name):
    volume, report = volumes[name]
    rows = labels[name]
    assert volume.num_slices == len(rows)
    assert [PurePosixPath(n).name for n in volume.source_names] == [r["sop_file"] for r in rows]
    np.testing.assert_allclose(
        volume.positions_mm, [float(r["slice_location"]) for r in rows], atol=0.01
    )
    assert report.skipped == ()
    assert report.position_tag == "(0020,0032)"


@pytest.mark.parametrize("name", SERIES)
def test_real_series_geometry_and_hu(volumes, name):
    volume, _ = volumes[name]
    assert volume.hu.dtype == np.int16 and volume.hu.shape[1:] == (512, 512)
    assert volume.spacing_mm[0] == pytest.approx(2.0, abs=0.05)
    assert 0.4 < volume.spacing_mm[1] == volume.spacing_mm[2] < 1.0
    assert int(volume.hu.min()) == -1024  # stored 0 + intercept -1024 outside the FOV
    assert 1000 < int(volume.hu.max()) < 4000  # bone
    body = volume.hu[volume.num_slices // 2]
    lung_air = np.count_nonzero((body > -1000) & (body < -700))
    assert lung_air > 0.03 * body.size  # a chest slice holds aerated lung
    assert volume.source_format == "dicom"
    assert len(volume.series_key) == 16


def test_zip_of_a_real_series_reads_the_same(volumes, real_data_dir, tmp_path):
    archive = tmp_path / "P002.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted((real_data_dir / "P002").iterdir()):
            zf.write(path, f"P002/{path.name}")
    volume = read_series(archive)
    folder_volume, _ = volumes["P002"]
    np.testing.assert_array_equal(volume.hu, folder_volume.hu)
    assert volume.source_names == tuple(f"P002/{n}" for n in folder_volume.source_names)
    assert volume.source_format == "dicom-zip"
    assert volume.series_key == folder_volume.series_key
