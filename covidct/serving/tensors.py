"""The tensor names of the ``covid_ct_pipeline`` ensemble, defined once.

The step functions (:mod:`covidct.serving.steps`), the client, the benchmarks and the
tests take the names from here; ``tests/unit/test_model_contract.py`` ties them to every
``config.pbtxt`` of the source model repository, so a renamed tensor fails a unit test.

Axis order: volumes ``[N, H, W]`` (slices sorted by position, inferior -> superior), network
inputs ``[B, C, S, S]``; masks ``[L, m, m]`` on the 3-D lung mask's reduced grid, one
plane per lung-bearing slice (``LUNG_SLICES``). Units: HU, mm, ml, percent.
"""

from __future__ import annotations

ENSEMBLE = "covid_ct_pipeline"
"""The model a client calls: one request = one patient series."""

# -- the three inputs a client sends (nothing else leaves the workstation)
HU_VOLUME = "HU_VOLUME"
"""INT16 ``[N, H, W]``: the series in HU."""
SPACING_MM = "SPACING_MM"
"""FP32 ``[3]``: voxel spacing ``(z, y, x)`` in mm."""
SLICE_POSITIONS_MM = "SLICE_POSITIONS_MM"
"""FP32 ``[N]``: each slice's position along the scan axis in mm relative to the first
(0 first, strictly ascending): where slices are missing, the gap shows here."""

# -- between the steps
CLASSIFIER_INPUT = "CLASSIFIER_INPUT"
"""FP32 ``[K, C, S, S]``: network input of the selected slices."""
SEGMENTER_INPUT = "SEGMENTER_INPUT"
"""FP32 ``[L, C, S, S]``: network input of the lung-bearing slices."""
PROBABILITY = "PROBABILITY"
"""FP32 ``[K, 1]``: P(COVID-19) per selected slice (classifier output)."""
INFECTION_PROBABILITY = "INFECTION_PROBABILITY"
"""FP32 ``[L, 1, S, S]``: per-pixel infection probability (segmenter output)."""

# -- the answer
VERDICT = "VERDICT"
"""INT32 ``[1]``: 1 positive, 0 negative, -1 not assessable (see ``ASSESSMENT``)."""
ASSESSMENT = "ASSESSMENT"
"""BYTES ``[1]``: JSON ``{"assessable", "reasons": [{"code", "message"}], "measurements"}``."""
POSITIVE_FRACTION = "POSITIVE_FRACTION"
"""FP32 ``[1]``: share of the selected slices whose probability passed the slice threshold."""
VOTE_THRESHOLD = "VOTE_THRESHOLD"
"""FP32 ``[1]``: share needed for a positive answer."""
SLICE_PROBABILITIES = "SLICE_PROBABILITIES"
"""FP32 ``[K]``: P(COVID-19) per selected slice."""
SELECTED_INDICES = "SELECTED_INDICES"
"""INT32 ``[K]``: the slices the classifier saw (indices into ``HU_VOLUME``)."""
LUNG_SLICES = "LUNG_SLICES"
"""INT32 ``[L]``: the slices holding lung (indices into ``HU_VOLUME``)."""
LUNG_MASK = "LUNG_MASK"
"""UINT8 ``[L, m, m]``: 0 outside the lungs, 1 right lung, 2 left lung."""
INFECTION_MASK = "INFECTION_MASK"
"""UINT8 ``[L, m, m]``: 1 where the segmenter marks infection inside the lungs."""
MASK_SPACING_MM = "MASK_SPACING_MM"
"""FP32 ``[3]``: spacing ``(z, y, x)`` mm of the mask grid."""
LESION_BURDEN_PCT = "LESION_BURDEN_PCT"
"""FP32 ``[1]``: infected share of the whole lung volume (percent)."""
LUNG_VOLUME_ML = "LUNG_VOLUME_ML"
"""FP32 ``[1]``: volume of both lungs over every lung-bearing slice (ml)."""
MODEL_VERSIONS = "MODEL_VERSIONS"
"""BYTES ``[M]``: ``"classifier=cnn6:1:sha256:..."`` per served network."""
MODEL_CARD = "MODEL_CARD"
"""BYTES ``[1]``: JSON ``{"classifier": card, "segmenter": card}`` (see covidct.training.model_card)."""

ENSEMBLE_INPUTS = (HU_VOLUME, SPACING_MM, SLICE_POSITIONS_MM)
ENSEMBLE_OUTPUTS = (
    VERDICT,
    ASSESSMENT,
    POSITIVE_FRACTION,
    VOTE_THRESHOLD,
    SLICE_PROBABILITIES,
    SELECTED_INDICES,
    LUNG_SLICES,
    LUNG_MASK,
    INFECTION_MASK,
    MASK_SPACING_MM,
    LESION_BURDEN_PCT,
    LUNG_VOLUME_ML,
    MODEL_VERSIONS,
    MODEL_CARD,
)
"""Everything the ensemble answers, in the order of its ``config.pbtxt``."""

VERDICT_POSITIVE = 1
VERDICT_NEGATIVE = 0
VERDICT_NOT_ASSESSABLE = -1
VERDICT_NAMES = {VERDICT_POSITIVE: "positive", VERDICT_NEGATIVE: "negative", VERDICT_NOT_ASSESSABLE: "not_assessable"}
"""``VERDICT`` value -> the answer's name in reports."""
