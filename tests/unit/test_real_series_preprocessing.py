"""Selection and lung masks on the real COVID-CT-MD series (skipped without COVIDCT_DATA_DIR).

Slice labels come from labels.csv: ``slice_rank`` is the index in the volume sorted by
position, ``infected`` the radiologists' slice-level label.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from covidct.preprocessing.lung_masks import lung_mask
from covidct.preprocessing.patient_vote import lung_volume_ml
from covidct.preprocessing.io.series_reader import read_series
from covidct.preprocessing.slice_selection import select_open_lung_slices
from covidct.preprocessing.volume import CTVolume

pytestmark = [pytest.mark.real_data, pytest.mark.slow]  # reading the 3 series takes ~13 s

SERIES = ("P002", "cap002", "normal002")


@pytest.fixture(scope="module")
def volumes(real_data_dir: Path) -> dict[str, CTVolume]:
    return {name: read_series(real_data_dir / name) for name in SERIES}


@pytest.fixture(scope="module")
def labels(real_data_dir: Path) -> dict[str, dict[int, str]]:
    out: dict[str, dict[int, str]] = {name: {} for name in SERIES}
    with open(real_data_dir / "labels.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            out[row["patient"]][int(row["slice_rank"])] = row["infected"]
    return out


def _infected(labels: dict[str, dict[int, str]], name: str) -> list[int]:
    return sorted(rank for rank, flag in labels[name].items() if flag == "1")


@pytest.mark.parametrize("name", SERIES)
def test_selection_discards_both_closed_lung_ends(volumes: dict[str, CTVolume], name: str) -> None:
    volume = volumes[name]
    result = select_open_lung_slices(volume.hu)
    n = volume.num_slices
    assert result.dark_counts.shape == (n,)
    assert 0 not in result.indices and n - 1 not in result.indices
    assert 0 < result.indices.size < n


def test_selection_keeps_every_infected_slice_of_cap002(volumes, labels) -> None:
    infected = _infected(labels, "cap002")
    assert len(infected) == 15
    selected = set(select_open_lung_slices(volumes["cap002"].hu).indices.tolist())
    assert [i for i in infected if i not in selected] == []


def test_selection_keeps_most_infected_slices_of_p002(volumes, labels) -> None:
    infected = _infected(labels, "P002")
    assert len(infected) == 68
    selected = set(select_open_lung_slices(volumes["P002"].hu).indices.tolist())
    kept = sum(i in selected for i in infected)
    assert kept >= 0.85 * len(infected), f"kept {kept} of {len(infected)} infected slices"


@pytest.mark.parametrize("name", SERIES)
def test_lung_volume_of_the_whole_series_is_physiological(volumes: dict[str, CTVolume], name: str) -> None:
    volume = volumes[name]
    lung = lung_mask(volume.hu)
    z, y, x = volume.spacing_mm
    litres = lung_volume_ml(lung, y * x, z) / 1000.0
    assert 2.0 <= litres <= 8.0, f"{name}: {litres:.2f} l"
    # The mask is lung-like: it lies in the middle of the slices, never at the border.
    assert not lung[:, :, :5].any() and not lung[:, :5, :].any()
