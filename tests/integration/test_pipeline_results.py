"""The served ensemble gives the right verdicts and the same numbers as the in-process
reference chain (``run_pipeline_reference``) on the same ONNX files through ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest

from covidct.client.submit import submit
from covidct.preprocessing.synthetic.phantom import make_phantom
from covidct.serving.steps import run_pipeline_reference

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SLICE_SIZE = 128  # pixels; small keeps the test fast, selection and masks scale with it


@pytest.mark.parametrize(("covid", "num_slices", "seed"), [(True, 60, 11), (False, 50, 12)])
def test_verdict_and_numbers_match_reference(
    triton_server, onnx_networks, served_pipeline_config, covid, num_slices, seed
):
    volume = make_phantom(num_slices, size=SLICE_SIZE, covid=covid, seed=seed).volume
    served = submit(volume, triton_server.grpc_url)
    reference = run_pipeline_reference(
        volume, onnx_networks["classifier"], onnx_networks["segmenter"], served_pipeline_config
    )

    assert served.verdict_code == int(reference["VERDICT"][0])
    np.testing.assert_array_equal(served.selected_indices, reference["SELECTED_INDICES"])
    assert 0 < len(served.selected_indices) < num_slices
    np.testing.assert_array_equal(served.lung_slices, reference["LUNG_SLICES"])
    np.testing.assert_array_equal(served.lung_mask, reference["LUNG_MASK"])
    # same ONNX files, other thread settings: a probability at the threshold may round apart
    assert np.mean(served.infection_mask != reference["INFECTION_MASK"]) <= 1e-4
    np.testing.assert_allclose(served.slice_probabilities, reference["SLICE_PROBABILITIES"], rtol=0, atol=1e-5)
    assert served.positive_fraction == pytest.approx(float(reference["POSITIVE_FRACTION"][0]), abs=1e-6)
    assert served.vote_threshold == pytest.approx(served_pipeline_config.vote.positive_fraction, abs=1e-6)
    assert served.lesion_burden_pct == pytest.approx(float(reference["LESION_BURDEN_PCT"][0]), abs=1e-3)
    assert served.lung_volume_ml == pytest.approx(float(reference["LUNG_VOLUME_ML"][0]), rel=1e-5)
    assert served.lung_volume_ml > 0
    assert any(v.startswith("classifier=") for v in served.model_versions)
    assert any(v.startswith("segmenter=") for v in served.model_versions)
    assert served.verdict == ("positive" if covid else "negative")
