"""The functions the Triton Python models call, and a reference chain without Triton.

Each step takes and returns arrays under the tensor names of :mod:`covidct.serving.tensors`:
numpy arrays, or torch tensors on the model instance's device. The per-slice numerics are
torch operations (:mod:`covidct.preprocessing.devices`), so one implementation runs on CPU tensors
(``KIND_CPU`` instances) and CUDA tensors (``KIND_GPU`` instances, which receive and return
the large tensors by DLPack, so they stay on the GPU between steps); numpy in gives numpy
out. The component analyses of the 3-D mask run on a host copy of its reduced grid
(:mod:`covidct.preprocessing.lung_segmentation` says why).

* :func:`preprocess_step`: ``HU_VOLUME`` int16 ``[N, H, W]`` + ``SPACING_MM`` +
  ``SLICE_POSITIONS_MM`` -> the 3-D lung mask of the whole series
  (:func:`covidct.preprocessing.lung_segmentation.segment_lungs`, reduced in-plane grid), the
  plausibility assessment (:func:`covidct.preprocessing.assessment.assess`, gaps between the
  positions included), the lung selection (slices the classifier
  sees, :mod:`covidct.preprocessing.slice_selection`) and the network inputs
  (:mod:`covidct.preprocessing.model_inputs`): ``CLASSIFIER_INPUT`` of the selected slices,
  ``SEGMENTER_INPUT`` of every lung-bearing slice. The full-resolution volume enters here
  and goes no further.
* :func:`vote_step`: classifier ``PROBABILITY`` ``[K, 1]``, segmenter
  ``INFECTION_PROBABILITY`` ``[L, 1, S, S]``, ``LUNG_MASK`` ``[L, m, m]`` ->
  the answer (``VERDICT``: positive, negative or not assessable with the assessment's
  reasons), the whole-lung volume (ml) and lesion burden (%), ``INFECTION_MASK`` on the
  mask grid, the model versions and cards.

:func:`run_pipeline_reference` chains the steps with two callables in place of the
networks; the serving integration tests compare the server's outputs to it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import numpy as np
import torch

from covidct.errors import ConfigError, NoOpenLungError, TensorInputError
from covidct.serving import tensors as T
from covidct.serving.request_validation import (
    check_tensor,
    validate_hu_volume,
    validate_positions,
    validate_probabilities,
    validate_slice_counts,
    validate_spacing,
)
from covidct.preprocessing.assessment import Assessment, Reason, assess
from covidct.preprocessing.config import ModelInputConfig, PipelineConfig
from covidct.preprocessing.devices import ArrayLike, as_tensor, like, to_numpy
from covidct.preprocessing.hu_window import window_normalize
from covidct.preprocessing.lung_masks import lung_and_infection_masks
from covidct.preprocessing.lung_segmentation import segment_lungs
from covidct.preprocessing.model_inputs import classifier_inputs, needs_masks, segmenter_inputs
from covidct.preprocessing.patient_vote import lesion_burden_percent, lung_volume_ml, patient_vote
from covidct.preprocessing.slice_resize import resize_nearest
from covidct.preprocessing.slice_selection import select_by_lung_area, select_open_lung_slices
from covidct.preprocessing.volume import CTVolume

#: Slices turned into network inputs together (intermediates stay in cache).
PREPROCESS_CHUNK_SLICES = 8

Arrays = dict[str, np.ndarray]


def _empty_input(input_config: ModelInputConfig, device: torch.device) -> torch.Tensor:
    size = int(input_config.size)
    return torch.zeros((0, input_config.channels, size, size), dtype=torch.float32, device=device)


def selected_slices(hu: ArrayLike, lung_area_mm2: np.ndarray, config: PipelineConfig) -> np.ndarray:
    """Indices (int32, ascending) of the slices the classifier sees.

    ``config.selection.rule``: ``"lung_area"`` (slices with enough lung in the 3-D mask) or
    ``"paper002"`` (paper 002's open-lung rule on the HU slices, on a host copy). No lung
    -> no slice.
    """
    try:
        if config.selection.rule == "paper002":
            return select_open_lung_slices(to_numpy(hu), config.selection).indices.astype(np.int32)
        return np.asarray(select_by_lung_area(lung_area_mm2, config.selection), dtype=np.int32)
    except NoOpenLungError:  # no lung at all: the assessment says so; the classifier sees nothing
        return np.zeros(0, np.int32)


def network_inputs_of(
    hu: ArrayLike, selected: np.ndarray, lung_slices: np.ndarray, config: PipelineConfig, chunk_slices: int
) -> tuple[ArrayLike, ArrayLike]:
    """``(CLASSIFIER_INPUT [K, C, S, S], SEGMENTER_INPUT [L, C, S, S])`` on ``hu``'s device.

    Every slice in either set is windowed once, ``chunk_slices`` at a time; the paper-000
    masks (mask channels, lung crop) are computed only for the slices of the network(s)
    that take them.
    """
    values = as_tensor(hu)
    wanted = np.union1d(selected, lung_slices).astype(np.int64)
    in_selected = np.isin(wanted, selected)
    in_lung = np.isin(wanted, lung_slices)
    mask_cls, mask_seg = needs_masks(config.classifier_input), needs_masks(config.segmenter_input)
    mask_rows = (in_selected & mask_cls) | (in_lung & mask_seg)
    classifier_parts = [_empty_input(config.classifier_input, values.device)]
    segmenter_parts = [_empty_input(config.segmenter_input, values.device)]
    for start in range(0, wanted.size, chunk_slices):
        part = slice(start, start + chunk_slices)
        chunk = values.index_select(0, torch.from_numpy(wanted[part]).to(values.device))
        windowed = window_normalize(chunk, config.window)
        need = mask_rows[part]
        masks = lung_and_infection_masks(_take(chunk, need), config.masks) if need.any() else None
        for keep, takes_masks, build, parts in (
            (in_selected[part], mask_cls, classifier_inputs, classifier_parts),
            (in_lung[part], mask_seg, segmenter_inputs, segmenter_parts),
        ):
            if keep.any():
                # The masks hold the ``need`` rows of the chunk; a network that takes masks keeps a subset.
                sub_masks = (_take(masks[0], keep[need]), _take(masks[1], keep[need])) if takes_masks else None
                parts.append(build(_take(chunk, keep), config, sub_masks, _take(windowed, keep)))
    return like(torch.cat(classifier_parts), hu), like(torch.cat(segmenter_parts), hu)


def _take(tensor: torch.Tensor, keep: np.ndarray) -> torch.Tensor:
    """The slices of ``tensor`` where the host bool selector ``keep`` is True (no copy when all are)."""
    if keep.all():
        return tensor
    return tensor.index_select(0, torch.from_numpy(np.flatnonzero(keep)).to(tensor.device))


def assessment_json(assessment: Assessment) -> bytes:
    """The ``ASSESSMENT`` tensor's JSON text (UTF-8)."""
    document = {
        "assessable": bool(assessment.assessable),
        "reasons": [{"code": r.code, "message": r.message} for r in assessment.reasons],
        "warnings": [{"code": w.code, "message": w.message} for w in assessment.warnings],
        "measurements": {k: float(v) for k, v in sorted(assessment.measurements.items())},
    }
    return json.dumps(document, sort_keys=True).encode("utf-8")


def preprocess_step(
    hu_volume: ArrayLike,
    spacing_mm: ArrayLike,
    config: PipelineConfig,
    slice_positions_mm: ArrayLike | None = None,
    *,
    device: torch.device | str | None = None,
    chunk_slices: int = PREPROCESS_CHUNK_SLICES,
) -> Arrays:
    """3-D lung mask, assessment, lung selection and network inputs of one series.

    ``device``: where the per-slice numerics run (``None``: where ``hu_volume`` is; numpy
    on the CPU). The network inputs are numpy for numpy input, else tensors on ``device``;
    the lung mask, indices and assessment are host arrays.
    """
    if config.segmenter_input.lung_crop:
        raise ConfigError(
            "segmenter_input.lung_crop=True is not supported by the ensemble: the infection "
            "mask must cover whole slices; expected lung_crop=False for the segmenter"
        )
    if chunk_slices < 1:
        raise ConfigError(f"preprocess chunk_slices must be >= 1; got {chunk_slices}")
    reader = config.reader
    checked = validate_hu_volume(
        hu_volume, T.HU_VOLUME, max_slices=reader.max_slices, max_size=reader.matrix_size_px[1]
    )
    spacing = validate_spacing(to_numpy(spacing_mm), T.SPACING_MM, reader)
    n = int(checked.shape[0])
    if slice_positions_mm is None:  # in-process callers with a contiguous volume
        slice_positions_mm = np.arange(n, dtype=np.float32) * np.float32(spacing[0])
    positions = validate_positions(to_numpy(slice_positions_mm), n)
    spacing_tuple = tuple(float(s) for s in spacing)
    hu = as_tensor(checked, device)
    segmentation = segment_lungs(hu, spacing_tuple, config.lung_segmentation)
    assessment = assess(segmentation, hu, spacing_tuple, config.assessment, positions_mm=positions)
    lung_slices = np.asarray(segmentation.lung_slices, dtype=np.int32)
    selected = selected_slices(hu, segmentation.lung_area_mm2, config)
    classifier_input, segmenter_input = network_inputs_of(hu, selected, lung_slices, config, chunk_slices)
    return {
        T.CLASSIFIER_INPUT: like(as_tensor(classifier_input), hu_volume),
        T.SEGMENTER_INPUT: like(as_tensor(segmenter_input), hu_volume),
        T.SELECTED_INDICES: selected,
        T.LUNG_SLICES: lung_slices,
        T.LUNG_MASK: np.ascontiguousarray(segmentation.labels[lung_slices], dtype=np.uint8),
        T.MASK_SPACING_MM: np.asarray(segmentation.spacing_mm, dtype=np.float32),
        T.ASSESSMENT: np.array([assessment_json(assessment)], dtype=np.object_),
    }


def _read_assessment(tensor: np.ndarray) -> dict:
    values = np.asarray(tensor, dtype=np.object_).reshape(-1)
    if values.size != 1:
        raise TensorInputError(f"{T.ASSESSMENT}: got {values.size} elements; expected one JSON document")
    raw = values[0]
    try:
        document = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else str(raw))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TensorInputError(f"{T.ASSESSMENT}: not UTF-8 JSON ({exc})") from exc
    if not isinstance(document, dict) or not isinstance(document.get("reasons"), list):
        raise TensorInputError(f"{T.ASSESSMENT}: expected a JSON object with a 'reasons' list")
    return document


def whole_lung_figures(
    lung_mask: ArrayLike, infected: ArrayLike, mask_spacing_mm: np.ndarray
) -> tuple[float, float]:
    """``(lung volume ml, lesion burden %)`` of the lung-bearing slices' masks ``[L, m, m]``
    on the mask grid of spacing ``(z, y, x)`` mm."""
    z, y, x = (float(s) for s in mask_spacing_mm)
    return lung_volume_ml(lung_mask, y * x, z), lesion_burden_percent(infected, lung_mask)


def vote_step(
    probability: ArrayLike,
    infection_probability: ArrayLike,
    lung_mask: ArrayLike,
    mask_spacing_mm: ArrayLike,
    assessment: np.ndarray,
    config: PipelineConfig,
    model_versions: Sequence[str] = (),
    model_card: str = "{}",
    *,
    device: torch.device | str | None = None,
) -> Arrays:
    """The answer, whole-lung volume and burden, infection mask (see module docstring).

    ``device``: where the reductions run (``None``: where ``infection_probability`` is).
    ``SLICE_PROBABILITIES`` and ``INFECTION_MASK`` are numpy for numpy input, else tensors
    on ``device``.
    """
    prob = check_tensor(probability, T.PROBABILITY, np.float32, (None, 1))
    infection = check_tensor(infection_probability, T.INFECTION_PROBABILITY, np.float32, (None, 1, None, None))
    lung = check_tensor(lung_mask, T.LUNG_MASK, np.uint8, (None, None, None))
    spacing = check_tensor(to_numpy(mask_spacing_mm), T.MASK_SPACING_MM, np.float32, (3,))
    if not (np.all(np.isfinite(spacing)) and np.all(spacing > 0)):
        raise TensorInputError(f"{T.MASK_SPACING_MM}: got {spacing.tolist()}; expected three finite spacings > 0 mm")
    if infection.shape[0] != lung.shape[0]:
        validate_slice_counts({T.INFECTION_PROBABILITY: infection, T.LUNG_MASK: lung})
    validate_probabilities(prob, T.PROBABILITY)
    validate_probabilities(infection, T.INFECTION_PROBABILITY)
    document = _read_assessment(assessment)
    infection_t = as_tensor(infection, device)
    where = infection_t.device
    lung_t, prob_t = as_tensor(lung, where), as_tensor(prob, where)[:, 0]
    m_h, m_w = lung_t.shape[1:]
    if infection_t.shape[0]:
        infected = resize_nearest(infection_t[:, 0] >= config.vote.infection_threshold, (m_h, m_w))
    else:
        infected = torch.zeros(lung_t.shape, dtype=torch.bool, device=where)
    volume_ml, burden = whole_lung_figures(lung_t, infected, spacing)
    n_selected = prob_t.shape[0]
    if n_selected == 0 and not document["reasons"]:
        reason = Reason("too_few_lung_slices", "No slice holds enough lung for the classifier; expected at least one.")
        document["reasons"].append({"code": reason.code, "message": reason.message})
    document["assessable"] = not document["reasons"]
    if n_selected:
        vote = patient_vote(prob_t, config.vote)
        positive_fraction, positive = vote.positive_fraction, vote.positive
    else:
        positive_fraction, positive = 0.0, False
    if not document["assessable"]:
        verdict = T.VERDICT_NOT_ASSESSABLE
    else:
        verdict = T.VERDICT_POSITIVE if positive else T.VERDICT_NEGATIVE
    return {
        T.VERDICT: np.array([verdict], dtype=np.int32),
        T.ASSESSMENT: np.array([json.dumps(document, sort_keys=True).encode("utf-8")], dtype=np.object_),
        T.POSITIVE_FRACTION: np.array([positive_fraction], dtype=np.float32),
        T.VOTE_THRESHOLD: np.array([config.vote.positive_fraction], dtype=np.float32),
        T.SLICE_PROBABILITIES: like(prob_t.to(torch.float32), infection_probability),
        T.INFECTION_MASK: like((infected & (lung_t != 0)).to(torch.uint8), infection_probability),
        T.LESION_BURDEN_PCT: np.array([burden], dtype=np.float32),
        T.LUNG_VOLUME_ML: np.array([volume_ml], dtype=np.float32),
        T.MODEL_VERSIONS: np.array([str(v).encode("utf-8") for v in model_versions], dtype=np.object_),
        T.MODEL_CARD: np.array([model_card.encode("utf-8")], dtype=np.object_),
    }


def slice_positions(volume: CTVolume) -> np.ndarray:
    """``SLICE_POSITIONS_MM`` of ``volume``: float32 ``[N]``, mm relative to the first slice."""
    positions = np.asarray(volume.positions_mm, dtype=np.float64)
    return (positions - positions[0]).astype(np.float32)


def run_pipeline_reference(
    volume: CTVolume,
    classify: Callable[[np.ndarray], np.ndarray],
    segment: Callable[[np.ndarray], np.ndarray],
    config: PipelineConfig,
    model_versions: Sequence[str] = (),
    model_card: str = "{}",
) -> Arrays:
    """The ensemble's outputs for ``volume`` computed in-process (no Triton).

    Args:
        volume: the series (int16 HU ``[N, H, W]``, spacing in mm).
        classify: ``CLASSIFIER_INPUT`` float32 ``[K, C, S, S]`` -> probabilities ``[K, 1]``.
        segment: ``SEGMENTER_INPUT`` float32 ``[L, C, S, S]`` -> infection probabilities
            ``[L, 1, S, S]``.
        config: the pipeline config shared with the models.
        model_versions, model_card: reported as ``MODEL_VERSIONS`` / ``MODEL_CARD``.

    Returns:
        Every output of :data:`covidct.serving.tensors.ENSEMBLE_OUTPUTS`, dtypes as served.
    """
    spacing = np.asarray(volume.spacing_mm, dtype=np.float32)
    prepared = preprocess_step(volume.hu, spacing, config, slice_positions(volume))

    def run(network: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, tail: tuple[int, ...]) -> np.ndarray:
        if inputs.shape[0] == 0:
            return np.zeros((0, *tail), np.float32)
        return np.asarray(network(inputs), dtype=np.float32)

    seg_size = int(config.segmenter_input.size)
    answer = vote_step(
        run(classify, prepared[T.CLASSIFIER_INPUT], (1,)),
        run(segment, prepared[T.SEGMENTER_INPUT], (1, seg_size, seg_size)),
        prepared[T.LUNG_MASK],
        prepared[T.MASK_SPACING_MM],
        prepared[T.ASSESSMENT],
        config,
        model_versions,
        model_card,
    )
    passed = (T.SELECTED_INDICES, T.LUNG_SLICES, T.LUNG_MASK, T.MASK_SPACING_MM)
    outputs = {**answer, **{name: prepared[name] for name in passed}}
    return {name: outputs[name] if outputs[name].dtype == np.object_ else to_numpy(outputs[name])
            for name in T.ENSEMBLE_OUTPUTS}
