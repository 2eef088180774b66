"""Probability heads appended to the trained networks before export and serving.

The registered networks return logits (see ``training/registry.py``); what the Triton
models serve are probabilities:

- classifier, 1 logit ``[B, 1]`` -> ``sigmoid`` -> ``[B, 1]`` P(COVID-19);
- classifier, 2 logits ``[B, 2]`` (softmax/CCE, class 1 = COVID-19) -> ``softmax[:, 1:2]``;
- segmenter, logits ``[B, 1, S, S]`` -> ``sigmoid`` -> ``[B, 1, S, S]`` P(infection).

The ONNX export and the torch FP16 runner both wrap the network in
:class:`ProbabilityModel`, so both serve the same function.
"""

from __future__ import annotations

import torch
from torch import nn

from covidct.errors import CheckpointError


class ProbabilityModel(nn.Module):
    """``network`` followed by the probability head chosen by ``task``/``num_outputs``.

    Input ``[B, C, S, S]`` float (NCHW); output float32-compatible probabilities in
    [0, 1]: ``[B, 1]`` (classification) or ``[B, 1, S, S]`` (segmentation).
    """

    def __init__(self, network: nn.Module, task: str, num_outputs: int) -> None:
        super().__init__()
        if task == "classification" and num_outputs not in (1, 2):
            raise CheckpointError(
                f"a classifier must have 1 (sigmoid) or 2 (softmax) outputs; got {num_outputs}"
            )
        if task == "segmentation" and num_outputs != 1:
            raise CheckpointError(f"a segmenter must have 1 output channel; got {num_outputs}")
        if task not in ("classification", "segmentation"):
            raise CheckpointError(f"unknown task {task!r}; expected classification or segmentation")
        self.network = network
        self.task = task
        self.softmax_pair = task == "classification" and num_outputs == 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.network(x)
        if self.softmax_pair:
            return torch.softmax(logits, dim=1)[:, 1:2]
        return torch.sigmoid(logits)


def probability_model(network: nn.Module, model_config) -> ProbabilityModel:
    """Wrap ``network`` using its :class:`covidct.training.registry.ModelConfig`; eval mode."""
    model = ProbabilityModel(network, model_config.task, model_config.num_outputs)
    return model.eval()
