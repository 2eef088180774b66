"""Losses of the papers, all taking logits (the networks never apply sigmoid/softmax).

- ``bce``: binary cross-entropy with logits (papers 000, 003). logits ``[B, 1]`` or
  ``[B, 1, H, W]``; target of the same number of elements, values in {0, 1}.
- ``cce``: categorical cross-entropy over softmax (paper 002). logits ``[B, K]``;
  target ``[B]`` class indices (or ``[B, 1]``).
- ``dice``: soft Dice loss ``1 - (2 sum(p g) + s) / (sum p + sum g + s)`` over the whole
  batch, p = sigmoid(logits); masks ``[B, 1, H, W]``.
- ``focal_tversky``: paper 003 (Abraham & Khan 2019), alpha 0.7, beta 0.3, gamma 1.3.
- ``bce_dice``: ``bce + dice`` (a common segmentation default).

Use :func:`make_loss` to get one by name.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.nn import functional as F

from covidct.errors import ConfigError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of ``sigmoid(logits)`` against {0, 1} ``target``."""
    return F.binary_cross_entropy_with_logits(logits, target.reshape(logits.shape).to(logits.dtype))


def cce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean categorical cross-entropy; logits ``[B, K]``, target class indices ``[B]``."""
    return F.cross_entropy(logits, target.reshape(-1).long())


def _tp_fp_fn(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
    p = torch.sigmoid(logits)
    g = target.reshape(logits.shape).to(logits.dtype)
    tp = (p * g).sum()
    fp = (p * (1 - g)).sum()
    fn = ((1 - p) * g).sum()
    return tp, fp, fn


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice loss over all pixels of the batch (``smooth`` avoids 0/0 on empty masks)."""
    tp, fp, fn = _tp_fp_fn(logits, target)
    return 1.0 - (2 * tp + smooth) / (2 * tp + fp + fn + smooth)


def focal_tversky_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 0.7,
    beta: float = 0.3,
    gamma: float = 1.3,
    smooth: float = 1.0,
    inverse_gamma: bool = False,
) -> torch.Tensor:
    """Focal Tversky loss of the foreground class.

    Tversky index ``TI = (TP + s) / (TP + alpha FN + beta FP + s)`` with soft counts from
    ``p = sigmoid(logits)``; alpha = 0.7 weighs false negatives (paper 003, eq. 1:
    alpha multiplies ``p_{i c-bar} g_{ic}``, predicted background on true lung).

    Exponent form: we use ``(1 - TI) ** gamma`` with gamma = 1.3, exactly as paper 003
    prints it (eq. 2), so that the loss the paper reports results for is the loss we
    train with. Abraham & Khan's original writes ``(1 - TI) ** (1 / gamma)`` (with
    gamma = 4/3, i.e. exponent 0.75 < 1, which *raises* the gradient for well-segmented,
    high-TI examples); ``inverse_gamma=True`` selects that form. With exponent 1.3 the
    loss is smaller and flatter near TI = 1, i.e. it concentrates on poorly segmented
    batches; both forms share their minimum at TI = 1.
    """
    tp, fp, fn = _tp_fp_fn(logits, target)
    ti = (tp + smooth) / (tp + alpha * fn + beta * fp + smooth)
    exponent = 1.0 / gamma if inverse_gamma else gamma
    return torch.clamp(1.0 - ti, min=0.0) ** exponent


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``bce + dice`` for segmentation."""
    return bce_loss(logits, target) + dice_loss(logits, target)


LOSSES: dict[str, LossFn] = {
    "bce": bce_loss,
    "cce": cce_loss,
    "dice": dice_loss,
    "focal_tversky": focal_tversky_loss,
    "bce_dice": bce_dice_loss,
}


def make_loss(name: str, num_outputs: int = 1) -> LossFn:
    """The loss called ``name``; checks it fits a network with ``num_outputs`` logits."""
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; expected one of {sorted(LOSSES)}")
    if name == "cce" and num_outputs < 2:
        raise ConfigError("loss 'cce' needs a network with num_outputs >= 2 (softmax); got 1")
    if name != "cce" and num_outputs != 1:
        raise ConfigError(f"loss {name!r} needs one logit per sample/pixel; the network has {num_outputs}")
    return LOSSES[name]
