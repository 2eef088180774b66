"""Batched inference: logits -> probabilities, as the exported heads do.

Classifiers: one logit -> ``sigmoid``; two logits -> ``softmax[:, 1]`` (COVID class).
Segmenters: ``sigmoid`` per pixel. Inputs float32 ``[N, C, S, S]`` (numpy or torch).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def logits_to_probability(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Classifier ``[B, 1|2]`` -> ``[B]``; segmenter ``[B, 1, S, S]`` -> same shape."""
    if task == "segmentation" or logits.shape[1] == 1:
        out = torch.sigmoid(logits)
        return out[:, 0] if task == "classification" else out
    return torch.softmax(logits, dim=1)[:, 1]


@torch.no_grad()
def predict_probabilities(
    model: nn.Module,
    inputs: np.ndarray | torch.Tensor,
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Probabilities of ``inputs`` ``[N, C, S, S]`` in eval mode: classifier float32 ``[N]``,
    segmenter float32 ``[N, 1, S, S]``."""
    task = model.model_config.task
    x = torch.as_tensor(inputs)
    was_training = model.training
    model.eval()
    outs = []
    for start in range(0, x.shape[0], batch_size):
        batch = x[start : start + batch_size].to(device, non_blocking=True)
        outs.append(logits_to_probability(model(batch), task).float().cpu())
    model.train(was_training)
    if not outs:
        shape = (0,) if task == "classification" else (0, 1, x.shape[-2], x.shape[-1])
        return np.zeros(shape, np.float32)
    return torch.cat(outs).numpy()
