"""The functions the Triton Python models call, and a reference chain without Triton.

Each step takes and returns plain numpy arrays under the tensor names of the ensemble
``covid_ct_pipeline`` (``docs/architecture.md``), with the contract's dtypes:

* :func:`lung_select_step`: ``HU_VOLUME`` int16 ``[N, H, W]`` ->
  ``SELECTED_INDICES`` int32 ``[K]``, ``SELECTED_HU`` int16 ``[K, H, W]``,
  ``DARK_COUNTS`` int32 ``[N]`` (paper 002's open-lung selection).
* :func:`preprocess_step`: ``SELECTED_HU``, ``SPACING_MM`` float32 ``[3]`` (z, y, x mm)
  -> ``CLASSIFIER_INPUT`` / ``SEGMENTER_INPUT`` float32 ``[K, C, S, S]``
  (:mod:`preprocessing.model_inputs`), ``LUNG_MASK`` uint8 ``[K, S, S]`` (paper 000's
  lung mask, nearest-resized to the segmenter size) and ``PIXEL_AREA_MM2`` float32
  ``[1]`` (area of one ``LUNG_MASK`` pixel).
* :func:`vote_step`: classifier ``PROBABILITY`` float32 ``[K, 1]``, segmenter
  ``INFECTION_PROBABILITY`` float32 ``[K, 1, S, S]`` and the above -> ``VERDICT`` int32
  ``[1]``, ``POSITIVE_FRACTION``, ``VOTE_THRESHOLD``, ``LESION_BURDEN_PCT``,
  ``LUNG_VOLUME_ML`` float32 ``[1]``, ``SLICE_PROBABILITIES`` float32 ``[K]``,
  ``SELECTED_INDICES`` int32 ``[K]``, ``MODEL_VERSIONS`` object (bytes) ``[M]``.
  Lesion burden: pixels with infection probability >= 0.5 inside ``LUNG_MASK`` over
  ``LUNG_MASK`` pixels (%); lung volume: ``LUNG_MASK`` pixels x ``PIXEL_AREA_MM2`` x
  z spacing (ml), over the selected slices only.

The segmenter input must not be lung-cropped (``segmenter_input.lung_crop``): the
lung mask and the pixel area must be in the frame of the whole slice for the volume and
burden to be one number per series; :func:`preprocess_step` raises ``ConfigError``.

:func:`run_pipeline_reference` chains the three steps with two callables in place of
the networks; the serving integration tests compare the server's outputs to it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from covidct.errors import ConfigError, TensorInputError
from preprocessing.config import PipelineConfig
from preprocessing.hu_window import window_normalize
from preprocessing.lung_masks import lung_and_infection_masks
from preprocessing.model_inputs import classifier_inputs, needs_masks, segmenter_inputs
from preprocessing.patient_vote import lesion_burden_percent, lung_volume_ml, patient_vote
from covidct.serving.request_validation import (
    check_tensor,
    validate_hu_volume,
    validate_probabilities,
    validate_slice_counts,
    validate_spacing,
)
from preprocessing.resize import resize_nearest
from preprocessing.slice_selection import select_open_lung_slices
from preprocessing.volume import CTVolume

#: Slices preprocessed together (see :func:`preprocess_step`).
PREPROCESS_CHUNK_SLICES = 8

#: A segmenter pixel is infected when its probability is at least this.
INFECTION_PROBABILITY_THRESHOLD = 0.5

Arrays = dict[str, np.ndarray]


def lung_select_step(hu_volume: np.ndarray, config: PipelineConfig) -> Arrays:
    """Open-lung selection of a request volume (see module docstring for the tensors)."""
    hu = validate_hu_volume(hu_volume, "HU_VOLUME", max_slices=config.reader.max_slices)
    selection = select_open_lung_slices(hu, config.selection)
    return {
        "SELECTED_INDICES": selection.indices.astype(np.int32, copy=False),
        "SELECTED_HU": np.ascontiguousarray(hu[selection.indices]),
        "DARK_COUNTS": selection.dark_counts.astype(np.int32, copy=False),
    }


def pixel_area_at(spacing_mm: np.ndarray, height: int, width: int, size: int) -> float:
    """Area (mm^2) of one pixel after resizing an ``H x W`` slice to ``size x size``."""
    return float(spacing_mm[1]) * height / size * float(spacing_mm[2]) * width / size


def preprocess_step(
    selected_hu: np.ndarray,
    spacing_mm: np.ndarray,
    config: PipelineConfig,
    *,
    chunk_slices: int = PREPROCESS_CHUNK_SLICES,
) -> Arrays:
    """Network inputs, lung mask and pixel area of the selected HU slices ``[K, H, W]``.

    Every operation is per slice, so the slices are processed ``chunk_slices`` at a time:
    the same numbers as one pass over ``[K, H, W]``, but each chunk's intermediates stay
    in cache (measured on one core, 205 slices of 512 x 512: 579 ms in one pass, 433 ms
    in chunks of 8).
    """
    if config.segmenter_input.lung_crop:
        raise ConfigError(
            "segmenter_input.lung_crop=True is not supported by the ensemble: LUNG_MASK and "
            "PIXEL_AREA_MM2 must cover whole slices; expected lung_crop=False for the segmenter"
        )
    if chunk_slices < 1:
        raise ConfigError(f"preprocess chunk_slices must be >= 1; got {chunk_slices}")
    hu = validate_hu_volume(selected_hu, "SELECTED_HU", max_slices=config.reader.max_slices)
    spacing = validate_spacing(spacing_mm, "SPACING_MM")
    chunks = [
        _prepare_slices(hu[start : start + chunk_slices], config)
        for start in range(0, hu.shape[0], chunk_slices)
    ]
    _, h, w = hu.shape
    size = int(config.segmenter_input.size)
    return {
        **{name: np.concatenate([chunk[name] for chunk in chunks]) for name in chunks[0]},
        "PIXEL_AREA_MM2": np.array([pixel_area_at(spacing, h, w, size)], dtype=np.float32),
    }


def _prepare_slices(hu: np.ndarray, config: PipelineConfig) -> Arrays:
    """Network inputs and lung mask of a few HU slices (the per-slice part of preprocess_step)."""
    # The lung mask is always needed (LUNG_MASK); compute both masks, and the windowed
    # slices, once for both networks.
    masks = lung_and_infection_masks(hu, config.masks)
    windowed = window_normalize(hu, config.window)
    size = int(config.segmenter_input.size)
    return {
        "CLASSIFIER_INPUT": classifier_inputs(
            hu, config, masks if needs_masks(config.classifier_input) else None, windowed
        ),
        "SEGMENTER_INPUT": segmenter_inputs(
            hu, config, masks if needs_masks(config.segmenter_input) else None, windowed
        ),
        "LUNG_MASK": resize_nearest(masks[0], (size, size)).astype(np.uint8),
    }


def vote_step(
    probability: np.ndarray,
    selected_indices: np.ndarray,
    lung_mask: np.ndarray,
    infection_probability: np.ndarray,
    pixel_area_mm2: np.ndarray,
    spacing_mm: np.ndarray,
    config: PipelineConfig,
    model_versions: Sequence[str] = (),
) -> Arrays:
    """Patient verdict, lesion burden and lung volume (see module docstring for the tensors)."""
    prob = check_tensor(probability, "PROBABILITY", np.float32, (None, 1))
    indices = check_tensor(selected_indices, "SELECTED_INDICES", np.int32, (None,))
    lung = check_tensor(lung_mask, "LUNG_MASK", np.uint8, (None, None, None))
    infection = check_tensor(infection_probability, "INFECTION_PROBABILITY", np.float32, (None, 1, None, None))
    area = check_tensor(pixel_area_mm2, "PIXEL_AREA_MM2", np.float32, (1,))
    spacing = validate_spacing(spacing_mm, "SPACING_MM")
    validate_slice_counts(
        {"PROBABILITY": prob, "SELECTED_INDICES": indices, "LUNG_MASK": lung, "INFECTION_PROBABILITY": infection}
    )
    if infection.shape[2:] != lung.shape[1:]:
        raise TensorInputError(
            f"INFECTION_PROBABILITY: got slices {list(infection.shape[2:])}; expected "
            f"{list(lung.shape[1:])} like LUNG_MASK (the segmenter size)"
        )
    if not (np.isfinite(area[0]) and area[0] > 0):
        raise TensorInputError(f"PIXEL_AREA_MM2: got {area.tolist()}; expected one finite area > 0 mm^2")
    validate_probabilities(prob, "PROBABILITY")
    validate_probabilities(infection, "INFECTION_PROBABILITY")
    vote = patient_vote(prob[:, 0], config.vote)
    lung_bool = lung != 0
    infected = infection[:, 0] >= INFECTION_PROBABILITY_THRESHOLD
    return {
        "VERDICT": np.array([1 if vote.positive else 0], dtype=np.int32),
        "POSITIVE_FRACTION": np.array([vote.positive_fraction], dtype=np.float32),
        "VOTE_THRESHOLD": np.array([vote.threshold], dtype=np.float32),
        "SLICE_PROBABILITIES": prob[:, 0].astype(np.float32),
        "SELECTED_INDICES": indices.astype(np.int32, copy=True),
        "LESION_BURDEN_PCT": np.array([lesion_burden_percent(infected, lung_bool)], dtype=np.float32),
        "LUNG_VOLUME_ML": np.array(
            [lung_volume_ml(lung_bool, float(area[0]), float(spacing[0]))], dtype=np.float32
        ),
        "MODEL_VERSIONS": np.array([str(v).encode("utf-8") for v in model_versions], dtype=np.object_),
    }


def run_pipeline_reference(
    volume: CTVolume,
    classify: Callable[[np.ndarray], np.ndarray],
    segment: Callable[[np.ndarray], np.ndarray],
    config: PipelineConfig,
    model_versions: Sequence[str] = (),
) -> Arrays:
    """The ensemble's outputs for ``volume`` computed in-process (no Triton).

    Args:
        volume: the series (int16 HU ``[N, H, W]``, spacing in mm).
        classify: ``CLASSIFIER_INPUT`` float32 ``[K, C, S, S]`` -> probabilities ``[K, 1]``.
        segment: ``SEGMENTER_INPUT`` float32 ``[K, C, S, S]`` -> infection probabilities
            ``[K, 1, S, S]``.
        config: the pipeline config shared with the models.
        model_versions: strings reported as ``MODEL_VERSIONS``.

    Returns:
        The ensemble outputs (``VERDICT`` ... ``MODEL_VERSIONS``), dtypes as served.
    """
    selected = lung_select_step(volume.hu, config)
    spacing = np.asarray(volume.spacing_mm, dtype=np.float32)
    prepared = preprocess_step(selected["SELECTED_HU"], spacing, config)
    probability = np.asarray(classify(prepared["CLASSIFIER_INPUT"]), dtype=np.float32)
    infection = np.asarray(segment(prepared["SEGMENTER_INPUT"]), dtype=np.float32)
    return vote_step(
        probability,
        selected["SELECTED_INDICES"],
        prepared["LUNG_MASK"],
        infection,
        prepared["PIXEL_AREA_MM2"],
        spacing,
        config,
        model_versions,
    )
