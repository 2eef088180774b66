"""Malformed requests get a clear error naming the tensor; concurrent good requests all
succeed with the same answers as sequential ones; the server stays ready throughout."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from covidct.client.submit import submit
from covidct.preprocessing.synthetic.phantom import make_phantom

from .conftest import ENSEMBLE, STEP_MODELS

pytestmark = pytest.mark.integration

GOOD_SPACING = np.array([8.0, 5.6, 5.6], dtype=np.float32)  # a 64-pixel phantom: 360 mm field of view


def tensor(name: str, array: np.ndarray, datatype: str, shape: list[int] | None = None):
    """An InferInput holding ``array``; ``shape`` overrides the declared shape (bad requests)."""
    inp = grpcclient.InferInput(name, list(array.shape), datatype)
    inp.set_data_from_numpy(array)
    if shape is not None:
        inp.set_shape(shape)
    return inp


def positions(num_slices: int) -> object:
    """``SLICE_POSITIONS_MM`` of ``num_slices`` contiguous slices at ``GOOD_SPACING``."""
    return tensor("SLICE_POSITIONS_MM", np.arange(num_slices, dtype=np.float32) * GOOD_SPACING[0], "FP32")


def good_hu(num_slices: int = 4, size: int = 64) -> np.ndarray:
    return make_phantom(num_slices, size=size, covid=False, seed=3).volume.hu


BAD_REQUESTS = {
    "wrong dtype": (
        lambda: [
            tensor("HU_VOLUME", good_hu().astype(np.float32), "FP32"),
            tensor("SPACING_MM", GOOD_SPACING, "FP32"), positions(4),
        ],
        r"input 'HU_VOLUME' data-type is 'FP32', but model 'covid_ct_pipeline' expects 'INT16'",
    ),
    "2-D volume": (
        lambda: [tensor("HU_VOLUME", good_hu()[0], "INT16"), tensor("SPACING_MM", GOOD_SPACING, "FP32"), positions(4)],
        r"unexpected shape for input 'HU_VOLUME'",
    ),
    "zero slices": (
        lambda: [
            tensor("HU_VOLUME", np.zeros((0, 64, 64), np.int16), "INT16"),
            tensor("SPACING_MM", GOOD_SPACING, "FP32"), positions(0),
        ],
        r"preprocess: HU_VOLUME: got int16 \[0, 64, 64\] with 0 slices; expected at least 1",
    ),
    "spacing of 2 values": (
        lambda: [tensor("HU_VOLUME", good_hu(), "INT16"), tensor("SPACING_MM", GOOD_SPACING[:2], "FP32"), positions(4)],
        r"unexpected shape for input 'SPACING_MM'",
    ),
    "declared shape larger than the data": (
        lambda: [
            tensor("HU_VOLUME", good_hu(2), "INT16", shape=[3, 64, 64]),
            tensor("SPACING_MM", GOOD_SPACING, "FP32"), positions(3),
        ],
        r"input byte size mismatch for input 'HU_VOLUME'",
    ),
    "NaN spacing": (
        lambda: [
            tensor("HU_VOLUME", good_hu(), "INT16"),
            tensor("SPACING_MM", np.array([2.0, np.nan, 0.5], np.float32), "FP32"), positions(4),
        ],
        r"preprocess: SPACING_MM: got \[2(\.0)?, nan, 0\.5\]; expected three finite spacings > 0 mm",
    ),
    "slice spacing no scanner produces": (
        lambda: [
            tensor("HU_VOLUME", good_hu(), "INT16"),
            tensor("SPACING_MM", np.array([1e9, 5.6, 5.6], np.float32), "FP32"), positions(4),
        ],
        r"preprocess: SPACING_MM: got \[1e\+09, 5\.6, 5\.6\]; expected z in \[0\.1, 60\] mm and y, x in "
        r"\[0\.1, 12\] mm",
    ),
    "pixel spacing no scanner produces": (
        lambda: [
            tensor("HU_VOLUME", good_hu(), "INT16"),
            tensor("SPACING_MM", np.array([8.0, 100.0, 100.0], np.float32), "FP32"), positions(4),
        ],
        r"SPACING_MM: got \[8, 100, 100\]; expected z in .* and y, x in \[0\.1, 12\] mm",
    ),
    "slices too small": (
        lambda: [
            tensor("HU_VOLUME", np.full((3, 8, 8), -1000, np.int16), "INT16"),
            tensor("SPACING_MM", GOOD_SPACING, "FP32"), positions(3),
        ],
        r"HU_VOLUME: got int16 \[3, 8, 8\], slices 8x8 pixels; expected H, W >= 32",
    ),
    "positions of another length": (
        lambda: [tensor("HU_VOLUME", good_hu(), "INT16"), tensor("SPACING_MM", GOOD_SPACING, "FP32"),
                 positions(5)],
        r"preprocess: SLICE_POSITIONS_MM: got float32 \[5\]; expected float32 \[4\] \(one position per slice "
        r"of HU_VOLUME\)",
    ),
    "positions not ascending": (
        lambda: [
            tensor("HU_VOLUME", good_hu(), "INT16"),
            tensor("SPACING_MM", GOOD_SPACING, "FP32"),
            tensor("SLICE_POSITIONS_MM", np.array([0.0, 8.0, 8.0, 16.0], np.float32), "FP32"),
        ],
        r"SLICE_POSITIONS_MM: slices 1 and 2 are at 8 and 8 mm; expected strictly ascending positions",
    ),
    "NaN position": (
        lambda: [
            tensor("HU_VOLUME", good_hu(), "INT16"),
            tensor("SPACING_MM", GOOD_SPACING, "FP32"),
            tensor("SLICE_POSITIONS_MM", np.array([0.0, np.nan, 16.0, 24.0], np.float32), "FP32"),
        ],
        r"SLICE_POSITIONS_MM: got non-finite positions; expected finite mm values",
    ),
    "no positions": (
        lambda: [tensor("HU_VOLUME", good_hu(), "INT16"), tensor("SPACING_MM", GOOD_SPACING, "FP32")],
        r"expected 3 inputs but got 2 inputs",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS), ids=list(BAD_REQUESTS))
def test_malformed_request_names_the_tensor(grpc_client, case):
    make_inputs, pattern = BAD_REQUESTS[case]
    with pytest.raises(InferenceServerException, match=pattern) as caught:
        grpc_client.infer(ENSEMBLE, make_inputs())
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert grpc_client.is_server_ready()


@pytest.mark.slow
def test_concurrent_requests_all_succeed_and_match_sequential(triton_server, grpc_client):
    volumes = [
        make_phantom(n, size=96, covid=i % 2 == 0, seed=40 + i).volume for i, n in enumerate((30, 45, 38, 52))
    ]
    sequential = [submit(v, triton_server.grpc_url) for v in volumes]
    with ThreadPoolExecutor(max_workers=len(volumes)) as pool:
        concurrent = list(pool.map(lambda v: submit(v, triton_server.grpc_url), volumes))
    for one, other in zip(sequential, concurrent):
        np.testing.assert_array_equal(one.selected_indices, other.selected_indices)
        np.testing.assert_allclose(one.slice_probabilities, other.slice_probabilities, atol=1e-6)
        assert one.verdict == other.verdict
        assert one.lung_volume_ml == pytest.approx(other.lung_volume_ml)
    assert grpc_client.is_server_ready()
    for model in (ENSEMBLE, *STEP_MODELS):
        assert grpc_client.is_model_ready(model), model
