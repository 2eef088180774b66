"""Paper 004's FCN-8s infection segmenter (Long et al. 2015), plain torch.

VGG16 layout: five blocks of (2, 2, 3, 3, 3) conv3x3-ReLU (BN added for training from
scratch) each followed by 2x2 max-pool, channels ``base_channels * (1, 2, 4, 8, 8)``;
"fc6"/"fc7" as convolutions (``fc_channels``, kernel ``fc_kernel`` then 1x1, dropout);
score layers (1x1 conv to one logit channel) on pool3, pool4 and fc7; fusion
``up2(score_fc7) + score_pool4``, ``up2(.) + score_pool3``, then ``up8`` to the input
size, all by learned transposed convolutions with exact factors (no cropping).

Defaults: ``base_channels=32, fc_channels=1024, fc_kernel=3`` (half-width VGG16, ~9 M
parameters, trainable on CPU); ``base_channels=64, fc_channels=4096, fc_kernel=7``
gives the original sizes (~134 M parameters).

Input ``[B, C, S, S]`` float32 with S divisible by 32; output logits ``[B, 1, S, S]``.
"""

from __future__ import annotations

import torch
from torch import nn

from covidct.training.registry import ModelConfig, register_model

VGG16_BLOCKS = (2, 2, 3, 3, 3)
VGG16_WIDTHS = (1, 2, 4, 8, 8)


def _vgg_block(in_ch: int, out_ch: int, convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [
            nn.Conv2d(in_ch if i == 0 else out_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        ]
    layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class FCN8s(nn.Module):
    """VGG16-style encoder, convolutional fc6/fc7, three-scale score fusion."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        base_channels: int,
        fc_channels: int,
        fc_kernel: int,
        dropout: float,
    ) -> None:
        super().__init__()
        widths = [base_channels * m for m in VGG16_WIDTHS]
        blocks = []
        ch = in_channels
        for convs, w in zip(VGG16_BLOCKS, widths):
            blocks.append(_vgg_block(ch, w, convs))
            ch = w
        self.block1_3 = nn.Sequential(*blocks[:3])
        self.block4 = blocks[3]
        self.block5 = blocks[4]
        self.fc = nn.Sequential(
            nn.Conv2d(ch, fc_channels, fc_kernel, padding=fc_kernel // 2),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
            nn.Conv2d(fc_channels, fc_channels, 1),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
        )
        self.score_fc = nn.Conv2d(fc_channels, out_channels, 1)
        self.score_pool4 = nn.Conv2d(widths[3], out_channels, 1)
        self.score_pool3 = nn.Conv2d(widths[2], out_channels, 1)
        self.up2_a = nn.ConvTranspose2d(out_channels, out_channels, 4, stride=2, padding=1, bias=False)
        self.up2_b = nn.ConvTranspose2d(out_channels, out_channels, 4, stride=2, padding=1, bias=False)
        self.up8 = nn.ConvTranspose2d(out_channels, out_channels, 16, stride=8, padding=4, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, C, S, S]`` -> logits ``[B, 1, S, S]``."""
        pool3 = self.block1_3(x)
        pool4 = self.block4(pool3)
        score = self.score_fc(self.fc(self.block5(pool4)))
        score = self.up2_a(score) + self.score_pool4(pool4)
        score = self.up2_b(score) + self.score_pool3(pool3)
        return self.up8(score)


@register_model(
    "fcn8s",
    task="segmentation",
    input_size=256,
    in_channels=1,
    num_outputs=1,
    base_channels=32,
    fc_channels=1024,
    fc_kernel=3,
    dropout=0.5,
)
def fcn8s(cfg: ModelConfig) -> nn.Module:
    """Paper 004's FCN-8s (infection segmenter)."""
    e = cfg.extra
    return FCN8s(
        cfg.in_channels,
        cfg.num_outputs,
        int(e["base_channels"]),
        int(e["fc_channels"]),
        int(e["fc_kernel"]),
        float(e["dropout"]),
    )
