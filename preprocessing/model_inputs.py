"""The ONE place that turns HU slices into network input.

Training, evaluation, the Triton ``preprocess`` model and the benchmarks all call
:func:`classifier_inputs` / :func:`segmenter_inputs`, so a model always sees at serving
time exactly what it saw in training. For HU slices ``[K, H, W]`` and a
:class:`~preprocessing.config.ModelInputConfig` (``size`` S, ``lung_crop``,
``mask_channels``):

1. window: ``PipelineConfig.window`` maps HU to float32 [0, 1]
   (:func:`preprocessing.hu_window.window_normalize`);
2. if ``lung_crop``: paper 003's crop to the lung box shrunk by ``crop.margin_px``
   (:mod:`preprocessing.lung_crop`), cropped and resized to S x S in one bilinear
   interpolation; slices without lung are resized whole;
3. otherwise: bilinear resize to S x S (:mod:`preprocessing.resize`, half-pixel centres);
4. if ``mask_channels``: paper 000's lung mask and infection-candidate mask
   (:mod:`preprocessing.lung_masks`, computed at full resolution) cropped with the same
   boxes and resized nearest, stacked as channels 1 and 2 (0.0 / 1.0).

Output: float32 ``[K, C, S, S]`` (NCHW), ``C = 1`` (image) or ``3`` (image, lung,
infection). Masks are computed only when step 2 or 4 needs them; callers that already
have them, or the windowed slices of step 1 (the ``preprocess`` step computes both once
for both networks), pass ``masks=(lung, infection)`` and ``windowed=``.
"""

from __future__ import annotations

import numpy as np

from covidct.errors import VolumeError
from preprocessing.config import ModelInputConfig, PipelineConfig
from preprocessing.hu_window import window_normalize
from preprocessing.lung_crop import crop_resize, lung_boxes
from preprocessing.lung_masks import lung_and_infection_masks
from preprocessing.resize import resize_bilinear, resize_nearest

Masks = tuple[np.ndarray, np.ndarray]


def needs_masks(input_config: ModelInputConfig) -> bool:
    """Whether building this input needs the lung (and infection) masks."""
    return bool(input_config.lung_crop or input_config.mask_channels)


def _check_slices(hu: np.ndarray) -> np.ndarray:
    array = np.asarray(hu)
    if array.ndim != 3 or 0 in array.shape:
        raise VolumeError(f"model inputs: hu must be a non-empty [K, H, W] stack; got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise VolumeError(f"model inputs: hu has dtype {array.dtype}; expected int16 (or float) HU")
    return array


def _check_masks(masks: Masks, shape: tuple[int, ...]) -> Masks:
    lung, infection = (np.asarray(m, dtype=bool) for m in masks)
    if lung.shape != shape or infection.shape != shape:
        raise VolumeError(
            f"model inputs: masks have shapes {lung.shape}, {infection.shape}; expected {shape} like hu"
        )
    return lung, infection


def network_inputs(
    hu: np.ndarray,
    config: PipelineConfig,
    input_config: ModelInputConfig,
    masks: Masks | None = None,
    windowed: np.ndarray | None = None,
) -> np.ndarray:
    """HU slices ``[K, H, W]`` -> float32 ``[K, C, S, S]`` for one network (see module docstring).

    Args:
        hu: HU slices (int16 from the readers).
        config: the pipeline config (window, masks, crop settings).
        input_config: the network's input settings (size, lung_crop, mask_channels).
        masks: optional precomputed ``(lung, infection)`` bool ``[K, H, W]``.
        windowed: optional ``window_normalize(hu, config.window)``, float32 ``[K, H, W]``.
    """
    array = _check_slices(hu)
    size = int(input_config.size)
    if size < 1:
        raise VolumeError(f"model inputs: input size {size}; expected a positive number of pixels")
    if needs_masks(input_config):
        lung, infection = (
            lung_and_infection_masks(array, config.masks)
            if masks is None
            else _check_masks(masks, array.shape)
        )
    if windowed is None:
        images = window_normalize(array, config.window)
    elif np.shape(windowed) != array.shape:
        raise VolumeError(
            f"model inputs: windowed slices have shape {np.shape(windowed)}; expected {array.shape} like hu"
        )
    else:
        images = windowed
    k = array.shape[0]
    out = np.empty((k, input_config.channels, size, size), dtype=np.float32)
    if input_config.lung_crop:
        boxes = lung_boxes(lung, config.crop.margin_px)
        out[:, 0] = crop_resize(images, boxes, (size, size), "bilinear")
        if input_config.mask_channels:
            out[:, 1] = crop_resize(lung, boxes, (size, size), "nearest")
            out[:, 2] = crop_resize(infection, boxes, (size, size), "nearest")
    else:
        out[:, 0] = resize_bilinear(images, (size, size))
        if input_config.mask_channels:
            out[:, 1] = resize_nearest(lung, (size, size))
            out[:, 2] = resize_nearest(infection, (size, size))
    return out


def classifier_inputs(
    hu: np.ndarray,
    config: PipelineConfig,
    masks: Masks | None = None,
    windowed: np.ndarray | None = None,
) -> np.ndarray:
    """Classifier input float32 ``[K, C, S, S]`` of HU slices ``[K, H, W]`` (``config.classifier_input``)."""
    return network_inputs(hu, config, config.classifier_input, masks, windowed)


def segmenter_inputs(
    hu: np.ndarray,
    config: PipelineConfig,
    masks: Masks | None = None,
    windowed: np.ndarray | None = None,
) -> np.ndarray:
    """Segmenter input float32 ``[K, C, S, S]`` of HU slices ``[K, H, W]`` (``config.segmenter_input``)."""
    return network_inputs(hu, config, config.segmenter_input, masks, windowed)
