"""Variable slice counts (35 .. 406 and above 1,000) and a real JPEG Lossless series
complete through the served ensemble with consistent outputs."""

from __future__ import annotations

import numpy as np
import pytest

from covidct.client.submit import PipelineResult, submit
from covidct.preprocessing.synthetic.phantom import make_phantom

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def check_consistent(result: PipelineResult, num_slices: int) -> None:
    k = len(result.selected_indices)
    assert 1 <= k <= num_slices
    assert result.slice_probabilities.shape == (k,)
    assert np.all(np.diff(result.selected_indices) > 0)
    assert result.selected_indices[0] >= 0 and result.selected_indices[-1] < num_slices
    assert np.all((result.slice_probabilities >= 0) & (result.slice_probabilities <= 1))
    assert 0.0 <= result.positive_fraction <= 1.0
    assert result.verdict == ("positive" if result.positive_fraction >= result.vote_threshold else "negative")
    assert 0.0 <= result.lesion_burden_pct <= 100.0
    assert 3000 <= result.lung_volume_ml <= 7500  # whole lungs of an adult chest
    assert len(result.lung_slices) >= k


@pytest.mark.parametrize(
    ("num_slices", "size"),
    [(35, 128), (150, 128), (406, 128), (1100, 64)],
    ids=["35x128", "150x128", "406x128", "1100x64"],
)
def test_slice_counts_complete(triton_server, num_slices, size):
    volume = make_phantom(num_slices, size=size, covid=True, seed=num_slices).volume
    result = submit(volume, triton_server.grpc_url)
    check_consistent(result, num_slices)


@pytest.mark.real_data
def test_real_jpeg_lossless_series_completes(triton_server, real_data_dir):
    from covidct.preprocessing.io.series_reader import read_series

    volume = read_series(real_data_dir / "P002")
    assert volume.source_format == "dicom"
    result = submit(volume, triton_server.grpc_url)
    check_consistent(result, volume.hu.shape[0])
