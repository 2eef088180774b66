"""The ONE place that turns HU slices into network input.

Training, evaluation, the Triton ``preprocess`` model and the benchmarks all call
:func:`classifier_inputs` / :func:`segmenter_inputs`, so a model always sees at serving
time exactly what it saw in training. For HU slices ``[K, H, W]`` and a
:class:`~covidct.preprocessing.config.ModelInputConfig` (``size`` S, ``lung_crop``,
``mask_channels``):

1. window: ``PipelineConfig.window`` maps HU to float32 [0, 1]
   (:func:`covidct.preprocessing.hu_window.window_normalize`);
2. if ``lung_crop``: paper 003's crop to the lung box shrunk by ``crop.margin_px``
   (:mod:`covidct.preprocessing.lung_crop`), cropped and resized to S x S in one bilinear
   interpolation; slices without lung are resized whole;
3. otherwise: bilinear resize to S x S (:mod:`covidct.preprocessing.slice_resize`, half-pixel centres);
4. if ``mask_channels``: paper 000's lung mask and infection-candidate mask
   (:mod:`covidct.preprocessing.lung_masks`, computed at full resolution) cropped with the same
   boxes and resized nearest, stacked as channels 1 and 2 (0.0 / 1.0).

Everything runs with torch on the device of ``hu`` (numpy in, numpy out; a CUDA tensor
stays on the GPU). Output: float32 ``[K, C, S, S]`` (NCHW), ``C = 1`` (image) or ``3`` (image, lung,
infection). Masks are computed only when step 2 or 4 needs them; callers that already
have them, or the windowed slices of step 1 (the ``preprocess`` step computes both once
for both networks), pass ``masks=(lung, infection)`` and ``windowed=``.
"""

from __future__ import annotations

import torch

from covidct.errors import VolumeError
from covidct.preprocessing.config import ModelInputConfig, PipelineConfig
from covidct.preprocessing.devices import ArrayLike, as_tensor, dtype_name, like
from covidct.preprocessing.hu_window import window_normalize
from covidct.preprocessing.lung_crop import crop_resize, lung_boxes
from covidct.preprocessing.lung_masks import lung_and_infection_masks
from covidct.preprocessing.slice_resize import resize_bilinear, resize_nearest

Masks = tuple[ArrayLike, ArrayLike]


def needs_masks(input_config: ModelInputConfig) -> bool:
    """Whether building this input needs the lung (and infection) masks."""
    return bool(input_config.lung_crop or input_config.mask_channels)


def _check_slices(hu: ArrayLike) -> torch.Tensor:
    values = as_tensor(hu, what="model inputs: hu")
    if values.ndim != 3 or 0 in values.shape:
        raise VolumeError(f"model inputs: hu must be a non-empty [K, H, W] stack; got shape {tuple(values.shape)}")
    if values.dtype == torch.bool or values.is_complex():
        raise VolumeError(f"model inputs: hu has dtype {dtype_name(values)}; expected int16 (or float) HU")
    return values


def _as_bool(mask: torch.Tensor) -> torch.Tensor:
    return mask if mask.dtype == torch.bool else mask != 0


def _check_masks(masks: Masks, like_hu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lung, infection = (_as_bool(as_tensor(m, like_hu.device)) for m in masks)
    shape = tuple(like_hu.shape)
    if tuple(lung.shape) != shape or tuple(infection.shape) != shape:
        raise VolumeError(
            f"model inputs: masks have shapes {tuple(lung.shape)}, {tuple(infection.shape)}; "
            f"expected {shape} like hu"
        )
    return lung, infection


def network_inputs(
    hu: ArrayLike,
    config: PipelineConfig,
    input_config: ModelInputConfig,
    masks: Masks | None = None,
    windowed: ArrayLike | None = None,
) -> ArrayLike:
    """HU slices ``[K, H, W]`` -> float32 ``[K, C, S, S]`` for one network (see module docstring).

    Args:
        hu: HU slices (int16 from the readers): numpy, or a tensor on the device to compute on.
        config: the pipeline config (window, masks, crop settings).
        input_config: the network's input settings (size, lung_crop, mask_channels).
        masks: optional precomputed ``(lung, infection)`` bool ``[K, H, W]``.
        windowed: optional ``window_normalize(hu, config.window)``, float32 ``[K, H, W]``.

    Returns:
        numpy for numpy ``hu``, else a tensor on ``hu``'s device.
    """
    array = _check_slices(hu)
    size = int(input_config.size)
    if size < 1:
        raise VolumeError(f"model inputs: input size {size}; expected a positive number of pixels")
    if needs_masks(input_config):
        lung, infection = _check_masks(
            lung_and_infection_masks(array, config.masks) if masks is None else masks, array
        )
    if windowed is None:
        images = window_normalize(array, config.window)
    elif tuple(windowed.shape) != tuple(array.shape):
        raise VolumeError(
            f"model inputs: windowed slices have shape {tuple(windowed.shape)}; expected {tuple(array.shape)} like hu"
        )
    else:
        images = as_tensor(windowed, array.device)
    k = array.shape[0]
    out = torch.empty((k, input_config.channels, size, size), dtype=torch.float32, device=array.device)
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
    return like(out, hu)


def classifier_inputs(
    hu: ArrayLike,
    config: PipelineConfig,
    masks: Masks | None = None,
    windowed: ArrayLike | None = None,
) -> ArrayLike:
    """Classifier input float32 ``[K, C, S, S]`` of HU slices ``[K, H, W]`` (``config.classifier_input``)."""
    return network_inputs(hu, config, config.classifier_input, masks, windowed)


def segmenter_inputs(
    hu: ArrayLike,
    config: PipelineConfig,
    masks: Masks | None = None,
    windowed: ArrayLike | None = None,
) -> ArrayLike:
    """Segmenter input float32 ``[K, C, S, S]`` of HU slices ``[K, H, W]`` (``config.segmenter_input``)."""
    return network_inputs(hu, config, config.segmenter_input, masks, windowed)
