"""Paper 003's classifier: EfficientNet-B4 (Tan & Le 2019), plain torch.

MBConv blocks (inverted bottleneck: 1x1 expansion, depthwise kxk, squeeze-excitation
with ratio 0.25 of the block input, 1x1 projection; identity shortcut with stochastic
depth when shapes match), SiLU activations, BN. The B0 stage table below is scaled by
the B4 multipliers: width 1.4 (channels rounded to multiples of 8), depth 1.8
(repeats rounded up). Head: conv1x1 to ``round(1280 * width)`` = 1792 channels,
global average pool, dropout 0.4, dense(num_outputs).

Input ``[B, C, S, S]`` float32 (B4's native S is 380; any S works); output logits
``[B, num_outputs]`` (1 = sigmoid/BCE, paper 003).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from covidct.training.registry import ModelConfig, register_model

# (expand ratio, kernel, stride, out channels, repeats) of EfficientNet-B0
B0_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)


def round_channels(channels: float, width: float, divisor: int = 8) -> int:
    """Scale ``channels`` by ``width`` and round to a multiple of ``divisor`` (>= 90%)."""
    scaled = channels * width
    out = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if out < 0.9 * scaled:
        out += divisor
    return int(out)


def residual_with_drop_path(x: torch.Tensor, out: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """``x + out``; while training, each sample's ``out`` is dropped with probability ``rate``
    (stochastic depth) and the kept ones scaled by ``1 / (1 - rate)``."""
    if training and rate > 0.0:
        keep = 1.0 - rate
        mask = torch.rand(out.shape[0], 1, 1, 1, device=out.device, dtype=out.dtype) < keep
        out = out * mask.to(out.dtype) / keep
    return x + out


class SqueezeExcite(nn.Module):
    """Channel attention: GAP -> 1x1 reduce -> SiLU -> 1x1 expand -> sigmoid -> scale."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.act = nn.SiLU(inplace=True)
        self.expand = nn.Conv2d(reduced, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


class MBConv(nn.Module):
    """Mobile inverted bottleneck with squeeze-excitation."""

    def __init__(
        self, in_ch: int, out_ch: int, expand: int, kernel: int, stride: int, drop_path: float
    ) -> None:
        super().__init__()
        mid = in_ch * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(in_ch, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.SiLU(inplace=True)]
        layers += [
            nn.Conv2d(mid, mid, kernel, stride=stride, padding=kernel // 2, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
            nn.SiLU(inplace=True),
            SqueezeExcite(mid, max(1, int(in_ch * 0.25))),
            nn.Conv2d(mid, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and in_ch == out_ch
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return residual_with_drop_path(x, out, self.drop_path, self.training) if self.residual else out


class EfficientNet(nn.Module):
    """EfficientNet scaled by ``width``/``depth`` from the B0 table."""

    def __init__(
        self,
        in_channels: int,
        num_outputs: int,
        width: float,
        depth: float,
        dropout: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        stem = round_channels(32, width)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(stem),
            nn.SiLU(inplace=True),
        )
        total = sum(math.ceil(depth * s[4]) for s in B0_STAGES)
        blocks: list[nn.Module] = []
        ch = stem
        index = 0
        for expand, kernel, stride, out, repeats in B0_STAGES:
            out_ch = round_channels(out, width)
            for r in range(math.ceil(depth * repeats)):
                rate = drop_path * index / total
                blocks.append(MBConv(ch, out_ch, expand, kernel, stride if r == 0 else 1, rate))
                ch = out_ch
                index += 1
        self.blocks = nn.Sequential(*blocks)
        head = round_channels(1280, width)
        self.head = nn.Sequential(
            nn.Conv2d(ch, head, 1, bias=False), nn.BatchNorm2d(head), nn.SiLU(inplace=True)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(head, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, C, S, S]`` -> logits ``[B, num_outputs]``."""
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(self.drop(torch.flatten(self.pool(x), 1)))


@register_model(
    "efficientnet_b4",
    task="classification",
    input_size=380,
    in_channels=1,
    num_outputs=1,
    width=1.4,
    depth=1.8,
    dropout=0.4,
    drop_path=0.2,
)
def efficientnet_b4(cfg: ModelConfig) -> nn.Module:
    """EfficientNet-B4 (width 1.4, depth 1.8), paper 003's classifier."""
    e = cfg.extra
    return EfficientNet(
        cfg.in_channels,
        cfg.num_outputs,
        float(e["width"]),
        float(e["depth"]),
        float(e["dropout"]),
        float(e["drop_path"]),
    )
