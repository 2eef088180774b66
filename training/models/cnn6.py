"""Paper 000's six-block CNN classifier (``cnn6``).

Six blocks of ``conv 3x3 stride 1 -> batch norm -> ReLU -> max-pool 2x2 -> dropout``
(filters 16, 16, 32, 32, 64, 64: the paper's 16/32/64 in pairs), flatten, two dense
layers. Input ``[B, C, S, S]`` float32 (C = 1 windowed HU, or 3 with the lung and
infection masks as extra channels); output one logit ``[B, 1]`` (sigmoid is applied
in the loss or by the exported probability head), or ``[B, 2]`` with num_outputs=2.

The flattened size follows from ``input_size`` (six poolings: ``S // 64`` per side,
at least 1 since the pooling uses ``ceil_mode``), so the network has fixed spatial
size and exports to ONNX with only the batch axis dynamic.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from covidct.training.registry import ModelConfig, register_model


class ConvBlock(nn.Sequential):
    """conv 3x3 (stride 1, same padding) -> BN -> ReLU -> max-pool 2 -> dropout."""

    def __init__(self, in_ch: int, out_ch: int, dropout: float) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Dropout(dropout),
        )


class CNN6(nn.Module):
    """Six conv blocks + flatten + dense(hidden) + dense(num_outputs)."""

    def __init__(
        self,
        input_size: int = 224,
        in_channels: int = 1,
        num_outputs: int = 1,
        filters: tuple[int, ...] = (16, 16, 32, 32, 64, 64),
        hidden_units: int = 128,
        dropout: float = 0.4,
    ) -> None:
        super().__init__()
        blocks = []
        ch = in_channels
        side = input_size
        for f in filters:
            blocks.append(ConvBlock(ch, f, dropout))
            ch = f
            side = math.ceil(side / 2)
        self.features = nn.Sequential(*blocks)
        self.flatten = nn.Flatten(1)
        self.fc1 = nn.Linear(ch * side * side, hidden_units)
        self.act = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden_units, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: float32 ``[B, C, S, S]`` -> logits ``[B, num_outputs]``."""
        x = self.flatten(self.features(x))
        return self.fc2(self.drop(self.act(self.fc1(x))))


@register_model(
    "cnn6",
    task="classification",
    input_size=224,
    in_channels=1,
    num_outputs=1,
    filters=[16, 16, 32, 32, 64, 64],
    hidden_units=128,
    dropout=0.4,
)
def cnn6(cfg: ModelConfig) -> nn.Module:
    """Paper 000's CNN; ``in_channels=3`` stacks the lung and infection masks."""
    return CNN6(
        input_size=cfg.input_size,
        in_channels=cfg.in_channels,
        num_outputs=cfg.num_outputs,
        filters=tuple(cfg.extra["filters"]),
        hidden_units=int(cfg.extra["hidden_units"]),
        dropout=float(cfg.extra["dropout"]),
    )
