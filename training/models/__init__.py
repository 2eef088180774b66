"""The papers' networks in plain torch; importing this package registers them all.

Families (one file each): ``cnn6`` (paper 000), ``resnet_v2`` (paper 002:
``resnet50v2``, ``resnet50v2_fpn``), ``efficientnet`` (paper 003: ``efficientnet_b4``),
``attention_unet`` (paper 003), ``unet`` and ``fcn8s`` (paper 004); the shipped networks
trained on real chest CT: ``efficientnet_lite`` (``efficientnet_lite0``, ImageNet-initialised)
and ``unet_lite`` (``unet_lite0``: a U-Net over the same encoder).
"""

from covidct.training.models import (
    attention_unet,
    cnn6,
    efficientnet,
    efficientnet_lite,
    fcn8s,
    resnet_v2,
    unet,
    unet_lite,
)

__all__ = ["attention_unet", "cnn6", "efficientnet", "efficientnet_lite", "fcn8s", "resnet_v2", "unet", "unet_lite"]
