"""The served ensemble knows what it is looking at: volumes that are not a plausible adult
chest CT are answered "not assessable" with their reasons, server-side, through the real
ensemble; real chest series and the phantoms are still assessed, with whole-lung figures.

The answer is read straight from the response tensors (``VERDICT``, ``ASSESSMENT``), so
these tests hold whatever the client makes of them.
"""

from __future__ import annotations

import json

import pytest
import tritonclient.grpc as grpcclient

from covidct.client.submit import build_inputs
from covidct.serving import tensors as T
from covidct.preprocessing.synthetic.case_transforms import flip_anterior_posterior, rotate_in_plane
from covidct.preprocessing.synthetic.phantom import make_phantom
from covidct.preprocessing.synthetic.trust_cases import crop_cases, trust_cases
from covidct.preprocessing.volume import CTVolume


@pytest.fixture(scope="module")
def grpc_client(shipped_grpc_client):
    """These tests run against the shipped networks trained on real chest CT."""
    return shipped_grpc_client


pytestmark = [pytest.mark.integration, pytest.mark.slow]

CASES = {case.name: case for case in trust_cases(size=128, num_slices=60, seed=0)}
REAL_SERIES = ("P002", "cap002", "normal002")


def answer(client: grpcclient.InferenceServerClient, volume: CTVolume) -> dict:
    """``VERDICT`` name, reason codes and the whole-lung figures of one request."""
    result = client.infer(T.ENSEMBLE, build_inputs(volume))
    assessment = json.loads(result.as_numpy(T.ASSESSMENT)[0])
    lung_mask = result.as_numpy(T.LUNG_MASK)
    lung_slices = result.as_numpy(T.LUNG_SLICES)
    assert lung_mask.shape[0] == lung_slices.shape[0] == result.as_numpy(T.INFECTION_MASK).shape[0]
    return {
        "verdict": T.VERDICT_NAMES[int(result.as_numpy(T.VERDICT)[0])],
        "reasons": {reason["code"] for reason in assessment["reasons"]},
        "messages": [reason["message"] for reason in assessment["reasons"]],
        "lung_volume_ml": float(result.as_numpy(T.LUNG_VOLUME_ML)[0]),
        "selected": result.as_numpy(T.SELECTED_INDICES),
        "lung_slices": lung_slices,
    }


@pytest.mark.parametrize("name", sorted(CASES))
def test_implausible_volume_is_not_assessable_with_its_reason(grpc_client, name):
    case = CASES[name]
    got = answer(grpc_client, case.volume)
    assert got["verdict"] == "not_assessable", (name, got["reasons"])
    assert got["reasons"] & case.expected_reasons, (name, got["reasons"], sorted(case.expected_reasons))
    assert all(message.strip() for message in got["messages"])
    assert grpc_client.is_server_ready()


@pytest.mark.parametrize(
    ("num_slices", "size", "covid", "seed"), [(40, 64, True, 1), (60, 128, False, 2), (90, 96, True, 3)]
)
def test_phantoms_are_assessed_with_whole_lung_figures(grpc_client, num_slices, size, covid, seed):
    got = answer(grpc_client, make_phantom(num_slices, size=size, covid=covid, seed=seed).volume)
    assert got["verdict"] in ("positive", "negative"), got["reasons"]
    assert not got["reasons"]
    assert 3000 <= got["lung_volume_ml"] <= 7500
    assert set(got["selected"].tolist()) <= set(got["lung_slices"].tolist())
    assert len(got["selected"]) < len(got["lung_slices"]) <= num_slices


@pytest.mark.real_data
@pytest.mark.parametrize("series", REAL_SERIES)
def test_real_series_assessed_and_its_crops_and_turns_refused(grpc_client, real_data_dir, series):
    from covidct.preprocessing.io.series_reader import read_series

    volume = read_series(real_data_dir / series)
    whole = answer(grpc_client, volume)
    assert whole["verdict"] in ("positive", "negative"), whole["reasons"]
    assert 3000 <= whole["lung_volume_ml"] <= 7500
    for case in crop_cases(volume):
        got = answer(grpc_client, case.volume)
        assert got["verdict"] == "not_assessable", (series, case.name)
        assert got["reasons"] & case.expected_reasons, (series, case.name, got["reasons"])
    for turned in (rotate_in_plane(volume, 1), flip_anterior_posterior(volume)):
        got = answer(grpc_client, turned)
        assert got["verdict"] == "not_assessable" and "orientation" in got["reasons"], (series, got["reasons"])
