"""Triton's Prometheus endpoint counts the ensemble's and every step's requests."""

from __future__ import annotations

import re
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from covidct.client.submit import submit
from covidct.preprocessing.synthetic.phantom import make_phantom

from .conftest import ENSEMBLE, STEP_MODELS

pytestmark = pytest.mark.integration

SAMPLE = re.compile(r"^(nv_inference_\w+)\{([^}]*)\} (\S+)$", re.M)
MODEL_LABEL = re.compile(r'model="([^"]+)"')


def counters(metrics_url: str) -> dict[tuple[str, str], float]:
    """``(metric, model) -> value`` of Triton's per-model inference metrics, summed over
    the other labels (``version``, the failure ``reason``)."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:  # noqa: S310 - the server's http URL
        text = response.read().decode("utf-8")
    totals: dict[tuple[str, str], float] = {}
    for metric, labels, value in SAMPLE.findall(text):
        model = MODEL_LABEL.search(labels)
        if model:
            key = (metric, model.group(1))
            totals[key] = totals.get(key, 0.0) + float(value)
    return totals


def delta(after: dict, before: dict, metric: str, model: str) -> float:
    return after.get((metric, model), 0.0) - before.get((metric, model), 0.0)


def settled_counters(metrics_url: str, before: dict, metric: str, model: str, wait_s: float = 10.0) -> dict:
    """Counters once ``metric`` of ``model`` has moved past ``before`` (Triton records a
    request's statistics just after its response went out), or after ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        now = counters(metrics_url)
        if delta(now, before, metric, model) > 0 or time.monotonic() > deadline:
            return now
        time.sleep(0.1)


def test_metrics_count_ensemble_and_step_requests(triton_server, grpc_client):
    start = counters(triton_server.metrics_url)
    submit(make_phantom(30, size=64, covid=True, seed=5).volume, triton_server.grpc_url)
    after_good = settled_counters(triton_server.metrics_url, start, "nv_inference_request_success", ENSEMBLE)
    for model in (ENSEMBLE, *STEP_MODELS):
        assert ("nv_inference_request_success", model) in after_good, model
        assert delta(after_good, start, "nv_inference_request_success", model) == 1, model
        assert delta(after_good, start, "nv_inference_request_duration_us", model) > 0, model

    bad = grpcclient.InferInput("HU_VOLUME", [0, 64, 64], "INT16")
    bad.set_data_from_numpy(np.zeros((0, 64, 64), np.int16))
    spacing = grpcclient.InferInput("SPACING_MM", [3], "FP32")
    spacing.set_data_from_numpy(np.ones(3, np.float32))
    positions = grpcclient.InferInput("SLICE_POSITIONS_MM", [0], "FP32")
    positions.set_data_from_numpy(np.zeros(0, np.float32))
    with pytest.raises(InferenceServerException, match="HU_VOLUME"):
        grpc_client.infer(ENSEMBLE, [bad, spacing, positions])
    after_bad = settled_counters(triton_server.metrics_url, after_good, "nv_inference_request_failure", ENSEMBLE)
    # Triton 2.51 counts a failed ensemble request once more per failing step (>= 1), and a
    # Python-backend error response as the step's success (triton-inference-server/server#8521)
    assert delta(after_bad, after_good, "nv_inference_request_failure", ENSEMBLE) >= 1
    assert delta(after_bad, after_good, "nv_inference_request_success", ENSEMBLE) == 0
    # the bad request stopped at preprocess: no later step saw it
    for model in ("classifier", "segmenter", "vote"):
        assert delta(after_bad, after_good, "nv_inference_request_success", model) == 0, model
