"""Paper 004's light U-Net for infected-area segmentation (``unet``).

Encoder: ``depth`` levels of two ``conv3x3 -> BN -> ReLU`` followed by 2x2 max-pool,
channels ``base_channels * 2**level``; bottleneck: two conv-BN-ReLU with dropout (as
the paper describes); decoder: 2x2 transposed convolution, concatenation with the
skip connection, two conv-BN-ReLU; final 1x1 conv to one logit channel.
With the defaults (base 16, depth 3) the network has about 0.47 M float32 parameters
(under 2 MB, the paper's "< 3 MB").

Input ``[B, C, S, S]`` float32 with S divisible by ``2**depth``; output logits
``[B, 1, S, S]`` (sigmoid for the infection probability).
"""

from __future__ import annotations

import torch
from torch import nn

from covidct.training.registry import ModelConfig, register_model


class DoubleConv(nn.Sequential):
    """Two ``conv3x3 -> BN -> ReLU`` (same padding)."""

    def __init__(self, in_ch: int, out_ch: int, dropout: float = 0.0) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        layers += [
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        ]
        super().__init__(*layers)


class UNet(nn.Module):
    """Symmetric U-Net with concatenating skip connections."""

    def __init__(
        self, in_channels: int, out_channels: int, base_channels: int, depth: int, dropout: float
    ) -> None:
        super().__init__()
        widths = [base_channels * 2**i for i in range(depth)]
        self.down = nn.ModuleList()
        ch = in_channels
        for w in widths:
            self.down.append(DoubleConv(ch, w))
            ch = w
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(ch, ch * 2, dropout)
        ch *= 2
        self.upconv = nn.ModuleList()
        self.up = nn.ModuleList()
        for w in reversed(widths):
            self.upconv.append(nn.ConvTranspose2d(ch, w, 2, stride=2))
            self.up.append(DoubleConv(2 * w, w))
            ch = w
        self.out = nn.Conv2d(ch, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, C, S, S]`` -> logits ``[B, 1, S, S]``."""
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for upconv, block, skip in zip(self.upconv, self.up, reversed(skips)):
            x = block(torch.cat([upconv(x), skip], dim=1))
        return self.out(x)


@register_model(
    "unet",
    task="segmentation",
    input_size=256,
    in_channels=1,
    num_outputs=1,
    base_channels=16,
    depth=3,
    dropout=0.2,
)
def unet(cfg: ModelConfig) -> nn.Module:
    """Paper 004's light U-Net (infection segmenter)."""
    e = cfg.extra
    return UNet(cfg.in_channels, cfg.num_outputs, int(e["base_channels"]), int(e["depth"]), float(e["dropout"]))
