"""Paper 002's classifiers: ResNet50V2 and ResNet50V2 with a concatenating FPN.

ResNet50V2 (He et al., "Identity mappings in deep residual networks"): pre-activation
bottleneck blocks ``BN-ReLU-conv1x1 -> BN-ReLU-conv3x3 -> BN-ReLU-conv1x1 (x4)``,
stages of [3, 4, 6, 3] blocks with widths 64/128/256/512 (outputs 256/512/1024/2048),
a 7x7 stride-2 stem and 3x3 max-pool; the first block of stages 2-4 has stride 2.
Stage outputs C2..C5 lie at strides 4, 8, 16, 32 of the input.

``resnet50v2_fpn`` (paper 002, Fig. 9 and Sec. 2.3): a feature pyramid whose top-down
merges concatenate instead of add: ``P5 = lateral(C5)``; for l = 4, 3, 2
``P_l = conv3x3(concat(upsample2x(P_{l+1}), lateral(C_l)))``; ``P6 = conv3x3 stride 2
(P5)``: five pyramid outputs. Each level gets its own classification head
``conv3x3 -> BN -> ReLU -> global average pool -> dropout -> dense(num_outputs)``; the
five heads' outputs ("the five classification results") are concatenated and given to
the final dense classifier. The paper's figure is not in the text we have; the head
width (``head_channels``) and the use of P6 follow the FPN paper it cites.

Input ``[B, C, S, S]`` float32 with S divisible by 64 (512 in the paper); output logits
``[B, num_outputs]`` (2 = softmax/CCE as in the paper).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from covidct.training.registry import ModelConfig, register_model

STAGE_BLOCKS = (3, 4, 6, 3)
STAGE_WIDTHS = (64, 128, 256, 512)
EXPANSION = 4


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck; the shortcut projection takes the pre-activated input."""

    def __init__(self, in_ch: int, width: int, stride: int) -> None:
        super().__init__()
        out_ch = width * EXPANSION
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1)
        self.shortcut = (
            nn.Conv2d(in_ch, out_ch, 1, stride=stride)
            if stride != 1 or in_ch != out_ch
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        short = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        return out + short


class ResNet50V2Backbone(nn.Module):
    """Stem + four stages; ``forward`` returns [C2, C3, C4, C5] (C5 post-activated)."""

    def __init__(self, in_channels: int = 1, width_scale: float = 1.0) -> None:
        super().__init__()
        stem = max(8, int(64 * width_scale))
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem, 7, stride=2, padding=3),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages = []
        ch = stem
        self.out_channels: list[int] = []
        for i, (blocks, width) in enumerate(zip(STAGE_BLOCKS, STAGE_WIDTHS)):
            width = max(4, int(width * width_scale))
            layers = []
            for b in range(blocks):
                stride = 2 if (b == 0 and i > 0) else 1
                layers.append(PreActBottleneck(ch, width, stride))
                ch = width * EXPANSION
            stages.append(nn.Sequential(*layers))
            self.out_channels.append(ch)
        self.stages = nn.ModuleList(stages)
        self.post_bn = nn.BatchNorm2d(ch)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        feats[-1] = F.relu(self.post_bn(feats[-1]))
        return feats


class ResNet50V2(nn.Module):
    """Plain ResNet50V2 classifier: backbone -> global average pool -> dense."""

    def __init__(self, in_channels: int, num_outputs: int, width_scale: float, dropout: float) -> None:
        super().__init__()
        self.backbone = ResNet50V2Backbone(in_channels, width_scale)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(self.backbone.out_channels[-1], num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, C, S, S]`` -> logits ``[B, num_outputs]``."""
        c5 = self.backbone(x)[-1]
        return self.fc(self.drop(torch.flatten(self.pool(c5), 1)))


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class LevelHead(nn.Module):
    """Classification head of one pyramid level: conv3x3-BN-ReLU, GAP, dropout, dense."""

    def __init__(self, in_ch: int, head_ch: int, num_outputs: int, dropout: float) -> None:
        super().__init__()
        self.conv = _conv_bn_relu(in_ch, head_ch)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(head_ch, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(torch.flatten(self.pool(self.conv(x)), 1)))


class ResNet50V2FPN(nn.Module):
    """ResNet50V2 + concatenating FPN (P2..P6) + five level heads + final classifier."""

    def __init__(
        self,
        in_channels: int,
        num_outputs: int,
        width_scale: float,
        pyramid_channels: int,
        head_channels: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.backbone = ResNet50V2Backbone(in_channels, width_scale)
        c2, c3, c4, c5 = self.backbone.out_channels
        p = pyramid_channels
        self.lateral = nn.ModuleList(nn.Conv2d(c, p, 1) for c in (c2, c3, c4, c5))
        # merge l consumes concat(upsampled P_{l+1}, lateral(C_l)): 2p channels
        self.merge = nn.ModuleList(_conv_bn_relu(2 * p, p) for _ in range(3))
        self.p6 = _conv_bn_relu(p, p, stride=2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.heads = nn.ModuleList(LevelHead(p, head_channels, num_outputs, dropout) for _ in range(5))
        self.classifier = nn.Linear(5 * num_outputs, num_outputs)

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x ``[B, C, S, S]`` -> [P2, P3, P4, P5, P6] at strides 4..64, ``pyramid_channels`` each."""
        c2, c3, c4, c5 = self.backbone(x)
        p5 = self.lateral[3](c5)
        p4 = self.merge[2](torch.cat([self.up(p5), self.lateral[2](c4)], dim=1))
        p3 = self.merge[1](torch.cat([self.up(p4), self.lateral[1](c3)], dim=1))
        p2 = self.merge[0](torch.cat([self.up(p3), self.lateral[0](c2)], dim=1))
        return [p2, p3, p4, p5, self.p6(p5)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, C, S, S]`` -> logits ``[B, num_outputs]``."""
        levels = [head(p) for head, p in zip(self.heads, self.pyramid(x))]
        return self.classifier(torch.cat(levels, dim=1))


@register_model(
    "resnet50v2",
    task="classification",
    input_size=512,
    in_channels=1,
    num_outputs=2,
    width_scale=1.0,
    dropout=0.0,
)
def resnet50v2(cfg: ModelConfig) -> nn.Module:
    """Plain ResNet50V2 (paper 002's baseline)."""
    e = cfg.extra
    return ResNet50V2(cfg.in_channels, cfg.num_outputs, float(e["width_scale"]), float(e["dropout"]))


@register_model(
    "resnet50v2_fpn",
    task="classification",
    input_size=512,
    in_channels=1,
    num_outputs=2,
    width_scale=1.0,
    pyramid_channels=256,
    head_channels=128,
    dropout=0.2,
)
def resnet50v2_fpn(cfg: ModelConfig) -> nn.Module:
    """Paper 002's ResNet50V2 with a concatenating feature pyramid and five level heads."""
    e = cfg.extra
    return ResNet50V2FPN(
        cfg.in_channels,
        cfg.num_outputs,
        float(e["width_scale"]),
        int(e["pyramid_channels"]),
        int(e["head_channels"]),
        float(e["dropout"]),
    )
