"""The training loop: seeded shuffling and augmentation, Adam/Nadam, progress (a bar on a terminal),
per-epoch validation and checkpoints (the layout of :mod:`covidct.training.checkpoint`).

Batches are ``[B, C, S, S]`` float32 (NCHW) taken from a :class:`SliceDataset`; the
loss receives logits. One generator seeded from ``TrainConfig.seed`` drives the
shuffling and the augmentation, so a run is repeatable on one device.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from covidct.errors import ConfigError
from covidct.progress import progress as progress_bar
from covidct.preprocessing.config import PipelineConfig
from covidct.training.augment import augment_batch
from covidct.training.checkpoint import save_checkpoint
from covidct.training.config import TrainConfig
from covidct.training.datasets import SliceDataset
from covidct.training.losses import make_loss
from covidct.training.metrics import roc_auc, segmentation_metrics
from covidct.training.predict import predict_probabilities

HISTORY_FILENAME = "history.json"


@dataclass
class TrainState:
    """What a resumed run continues from: finished epochs, history, optimiser state."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    optimizer_state: dict[str, Any] | None = None


def make_optimizer(name: str, params, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """``adam`` or ``nadam`` (Keras' Nadam, paper 002) with learning rate ``lr``."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "nadam":
        return torch.optim.NAdam(params, lr=lr, weight_decay=weight_decay)
    raise ConfigError(f"unknown optimizer {name!r}; expected adam or nadam")


def default_loss(task: str, num_outputs: int) -> str:
    """bce (1 logit), cce (2 logits), focal_tversky (segmenters)."""
    if task == "segmentation":
        return "focal_tversky"
    return "cce" if num_outputs == 2 else "bce"


def epoch_lr(cfg: TrainConfig, epoch: int) -> float:
    """Learning rate of ``epoch`` (0-based): constant, or cosine from ``lr`` towards 0."""
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))
    return cfg.lr


def resolve_device(name: str) -> torch.device:
    """``cpu`` / ``cuda[:n]``; asking for CUDA without a GPU is a ConfigError."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but torch sees no CUDA GPU on this machine")
    return torch.device(name)


def validate(model: nn.Module, data: SliceDataset, loss_fn, batch_size: int, device: torch.device) -> dict[str, float]:
    """Validation loss and the task's metric (slice ROC AUC / pooled Dice at 0.5)."""
    model.eval()
    losses = []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            x = data.inputs[start : start + batch_size].to(device)
            y = data.targets()[start : start + batch_size].to(device)
            losses.append(float(loss_fn(model(x), y)) * x.shape[0])
    probs = predict_probabilities(model, data.inputs, batch_size=batch_size, device=device)
    out = {"val_loss": float(np.sum(losses) / len(data))}
    if model.model_config.task == "classification":
        out["val_auc"] = roc_auc(data.labels.numpy(), probs)
    else:
        out["val_dice"] = segmentation_metrics(probs >= 0.5, data.masks.numpy() >= 0.5)["dice"]
    return out


def train_model(
    model: nn.Module,
    train_data: SliceDataset,
    val_data: SliceDataset | None,
    cfg: TrainConfig,
    *,
    pipeline: PipelineConfig,
    out_dir: str | Path | None = None,
    state: TrainState | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train ``model`` for ``cfg.epochs`` (minus epochs already in ``state``).

    After every epoch the checkpoint in ``out_dir`` (if given) is rewritten: weights,
    model/pipeline/training configs, ``history.json`` and the optimiser state.
    Returns the history: one dict per epoch (``epoch``, ``loss``, ``val_loss``,
    ``val_auc`` or ``val_dice``, ``slices_per_s``).
    """
    import time

    state = state or TrainState()
    device = resolve_device(cfg.device)
    mcfg = model.model_config
    loss_fn = make_loss(cfg.loss or default_loss(mcfg.task, mcfg.num_outputs), mcfg.num_outputs)
    model.to(device)
    optimizer = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr, cfg.weight_decay)
    if state.optimizer_state is not None:
        optimizer.load_state_dict(state.optimizer_state)
    generator = torch.Generator().manual_seed(cfg.seed + 7919 * state.epoch)
    torch.manual_seed(cfg.seed + state.epoch)
    history = list(state.history)
    targets = train_data.targets()
    n = len(train_data)
    for epoch in range(state.epoch, cfg.epochs):
        for group in optimizer.param_groups:
            group["lr"] = epoch_lr(cfg, epoch)
        model.train()
        order = torch.randperm(n, generator=generator)
        starts = [s for s in range(0, n, cfg.batch_size) if min(cfg.batch_size, n - s) > 1]
        desc = f"epoch {epoch + 1}/{cfg.epochs}"
        bar = progress_bar(starts, desc=desc, unit="batch", leave=False, disable=not progress)
        total, seen, t0 = 0.0, 0, time.perf_counter()
        for start in bar:
            idx = order[start : start + cfg.batch_size]
            x, y = train_data.inputs[idx], targets[idx]
            x, masks = augment_batch(x, y if mcfg.task == "segmentation" else None, cfg.augment, generator)
            if masks is not None:
                y = masks
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"epoch {epoch + 1}: loss is {float(loss)} (diverged); lower the learning rate"
                )
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * x.shape[0]
            seen += x.shape[0]
            bar.set_postfix(loss=f"{total / max(seen, 1):.4f}")
        elapsed = time.perf_counter() - t0
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": total / max(seen, 1),
            "lr": epoch_lr(cfg, epoch),
            "slices_per_s": seen / elapsed if elapsed > 0 else float("nan"),
        }
        if val_data is not None and len(val_data):
            row.update(validate(model, val_data, loss_fn, max(cfg.batch_size, 32), device))
        history.append(row)
        if progress:
            print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        if out_dir is not None:
            write_checkpoint(out_dir, model, pipeline, cfg, history, optimizer)
    model.eval()
    return history


def write_checkpoint(
    out_dir: str | Path,
    model: nn.Module,
    pipeline: PipelineConfig,
    cfg: TrainConfig,
    history: list[dict[str, Any]],
    optimizer: torch.optim.Optimizer | None = None,
) -> Path:
    """Checkpoint folder + ``train_config.json`` + ``history.json`` beside the weights."""
    out = save_checkpoint(
        out_dir, model, pipeline, extra={"epoch": len(history), "seed": cfg.seed}, optimizer=optimizer
    )
    cfg.save(out)
    (out / HISTORY_FILENAME).write_text(json.dumps(history, indent=2) + "\n", encoding="utf-8")
    return out


def load_history(directory: str | Path) -> list[dict[str, Any]]:
    """``history.json`` of a checkpoint folder (empty list when absent)."""
    path = Path(directory) / HISTORY_FILENAME
    if not path.is_file():
        return []
    return json.loads(path.read_text(encoding="utf-8"))
