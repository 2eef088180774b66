"""Paper 003's lung segmenter: U-Net with attention gates (Oktay/Schlemper et al.).

A U-Net with ``depth`` max-pool levels (paper 003: five) whose skip connections pass
through additive attention gates before concatenation: with the up-sampled decoder
feature ``g`` and the encoder skip ``x`` (same size),
``alpha = sigmoid(psi(ReLU(W_g g + W_x x)))`` (1x1 convolutions, ``psi`` to one
channel) and the decoder receives ``alpha * x``. Trained with the focal Tversky loss.

Input ``[B, C, S, S]`` float32 with S divisible by ``2**depth``; output logits
``[B, 1, S, S]`` (sigmoid for the lung probability).
"""

from __future__ import annotations

import torch
from torch import nn

from covidct.training.models.unet import DoubleConv
from covidct.training.registry import ModelConfig, register_model


class AttentionGate(nn.Module):
    """Additive attention gate: weights the skip ``x`` by a map computed from ``g`` and ``x``."""

    def __init__(self, g_ch: int, x_ch: int, inter_ch: int) -> None:
        super().__init__()
        self.w_g = nn.Sequential(nn.Conv2d(g_ch, inter_ch, 1), nn.BatchNorm2d(inter_ch))
        self.w_x = nn.Sequential(nn.Conv2d(x_ch, inter_ch, 1), nn.BatchNorm2d(inter_ch))
        self.psi = nn.Sequential(nn.Conv2d(inter_ch, 1, 1), nn.BatchNorm2d(1), nn.Sigmoid())
        self.relu = nn.ReLU(inplace=True)

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        alpha = self.psi(self.relu(self.w_g(g) + self.w_x(x)))
        return x * alpha


class AttentionUNet(nn.Module):
    """U-Net whose skips are gated by :class:`AttentionGate`."""

    def __init__(self, in_channels: int, out_channels: int, base_channels: int, depth: int) -> None:
        super().__init__()
        widths = [base_channels * 2**i for i in range(depth)]
        self.down = nn.ModuleList()
        ch = in_channels
        for w in widths:
            self.down.append(DoubleConv(ch, w))
            ch = w
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(ch, ch * 2)
        ch *= 2
        self.upconv = nn.ModuleList()
        self.gates = nn.ModuleList()
        self.up = nn.ModuleList()
        for w in reversed(widths):
            self.upconv.append(nn.ConvTranspose2d(ch, w, 2, stride=2))
            self.gates.append(AttentionGate(w, w, max(1, w // 2)))
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
        for upconv, gate, block, skip in zip(self.upconv, self.gates, self.up, reversed(skips)):
            g = upconv(x)
            x = block(torch.cat([g, gate(g, skip)], dim=1))
        return self.out(x)


@register_model(
    "attention_unet",
    task="segmentation",
    input_size=256,
    in_channels=1,
    num_outputs=1,
    base_channels=16,
    depth=5,
)
def attention_unet(cfg: ModelConfig) -> nn.Module:
    """Paper 003's Attention U-Net (lung segmenter, five pooling levels)."""
    e = cfg.extra
    return AttentionUNet(cfg.in_channels, cfg.num_outputs, int(e["base_channels"]), int(e["depth"]))
