"""Checkpoints: the folder layout of docs/architecture.md ("Checkpoints").

``<dir>/weights.pt`` (state dict), ``<dir>/model_config.json``
(:class:`covidct.training.registry.ModelConfig`), ``<dir>/pipeline_config.json``
(:class:`covidct.preprocessing.config.PipelineConfig`), ``<dir>/model_card.json``
(:class:`covidct.training.model_card.ModelCard`: training data, evaluation, intended use, the
SHA-256 of ``weights.pt``), and optionally ``<dir>/extra.json`` (training state such as
the epoch; the optimiser state goes to ``optimizer.pt``).

:func:`load_checkpoint` does not need the card (older checkpoints load); the exporter
does (:func:`covidct.training.model_card.load_model_card`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from covidct.errors import CheckpointError, ConfigError
from covidct.preprocessing.config import PipelineConfig
from covidct.training.model_card import ModelCard, file_sha256, load_model_card, unrecorded_card, write_model_card
from covidct.training.registry import MODEL_CONFIG_FILENAME, ModelConfig, create_model_from_config

WEIGHTS_FILENAME = "weights.pt"
EXTRA_FILENAME = "extra.json"
OPTIMIZER_FILENAME = "optimizer.pt"


def check_pipeline_matches(model_cfg: ModelConfig, pipeline: PipelineConfig, source: str) -> None:
    """Raise CheckpointError when the pipeline's input size/channels do not fit the network."""
    inp = pipeline.classifier_input if model_cfg.task == "classification" else pipeline.segmenter_input
    which = "classifier_input" if model_cfg.task == "classification" else "segmenter_input"
    if inp.size != model_cfg.input_size or inp.channels != model_cfg.in_channels:
        raise CheckpointError(
            f"{source}: pipeline {which} is {inp.size}x{inp.size} with {inp.channels} channel(s) "
            f"but network {model_cfg.name!r} expects {model_cfg.input_size}x{model_cfg.input_size} "
            f"with {model_cfg.in_channels}"
        )


def save_checkpoint(
    directory: str | Path,
    model: nn.Module,
    pipeline_config: PipelineConfig,
    extra: dict[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    card: ModelCard | None = None,
) -> Path:
    """Write ``model`` (which must carry ``.model_config``), its pipeline config and its
    model card (``weights_sha256`` set to the written weights).

    ``card`` None keeps the folder's existing card of the same network (a training run
    rewriting its checkpoint every epoch), else writes a card saying that no training
    data were recorded (``demo`` true). Returns the checkpoint folder (created if needed).
    """
    cfg = getattr(model, "model_config", None)
    if not isinstance(cfg, ModelConfig):
        raise CheckpointError("model has no .model_config; build it with covidct.training.registry.create_model")
    out = Path(directory)
    check_pipeline_matches(cfg, pipeline_config, str(out))
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, out / WEIGHTS_FILENAME)
    cfg.save(out / MODEL_CONFIG_FILENAME)
    pipeline_config.save(out)
    if extra is not None:
        (out / EXTRA_FILENAME).write_text(json.dumps(extra, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if optimizer is not None:
        torch.save(optimizer.state_dict(), out / OPTIMIZER_FILENAME)
    if card is None:
        card = _existing_card(out, cfg) or unrecorded_card(cfg, pipeline_config)
    write_model_card(card.with_weights(file_sha256(out / WEIGHTS_FILENAME)), out)
    return out


def _existing_card(directory: Path, cfg: ModelConfig) -> ModelCard | None:
    """The folder's card when it describes the same network, else None."""
    try:
        card = load_model_card(directory)
    except CheckpointError:
        return None
    return card if (card.network, card.task) == (cfg.name, cfg.task) else None


def load_checkpoint(
    directory: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelConfig, PipelineConfig]:
    """Read a checkpoint folder -> (model in eval mode, ModelConfig, PipelineConfig).

    Raises CheckpointError when a file is missing or corrupt, or when the weights do not
    match the network that ``model_config.json`` describes (missing/unexpected keys or
    shapes).
    """
    path = Path(directory)
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint folder not found")
    for name in (WEIGHTS_FILENAME, MODEL_CONFIG_FILENAME, "pipeline_config.json"):
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: checkpoint lacks {name}")
    try:
        model_cfg = ModelConfig.load(path)
        pipeline = PipelineConfig.load(path)
    except CheckpointError:
        raise
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    check_pipeline_matches(model_cfg, pipeline, str(path))
    try:
        # the saved weights replace any initialisation: never load ImageNet weights here (the
        # serving machine need not have them), yet the model keeps the config it was saved with
        build_cfg = model_cfg
        if model_cfg.extra.get("imagenet_init"):
            build_cfg = dataclasses.replace(model_cfg, extra={**model_cfg.extra, "imagenet_init": False})
        model = create_model_from_config(build_cfg)
        model.model_config = model_cfg
    except ConfigError as exc:
        raise CheckpointError(f"{path / MODEL_CONFIG_FILENAME}: {exc}") from exc
    try:
        state = torch.load(path / WEIGHTS_FILENAME, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt files
        raise CheckpointError(f"{path / WEIGHTS_FILENAME}: cannot read weights ({exc})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path / WEIGHTS_FILENAME}: expected a state dict, got {type(state).__name__}")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape)
    )
    if missing or unexpected or wrong:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {missing[0]!r})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]!r})")
        if wrong:
            k = wrong[0]
            detail.append(
                f"{len(wrong)} with wrong shape (e.g. {k!r}: file {tuple(state[k].shape)}, "
                f"network {tuple(expected[k].shape)})"
            )
        raise CheckpointError(
            f"{path / WEIGHTS_FILENAME}: weights do not match network {model_cfg.name!r} "
            f"of model_config.json: " + "; ".join(detail)
        )
    model.load_state_dict(state)
    model.to(map_location)
    model.eval()
    return model, model_cfg, pipeline


def load_training_state(directory: str | Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``(extra.json contents or {}, optimizer state dict or None)`` of a checkpoint."""
    path = Path(directory)
    extra: dict[str, Any] = {}
    if (path / EXTRA_FILENAME).is_file():
        try:
            extra = json.loads((path / EXTRA_FILENAME).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path / EXTRA_FILENAME}: not valid JSON ({exc.msg})") from exc
    opt = None
    if (path / OPTIMIZER_FILENAME).is_file():
        try:
            opt = torch.load(path / OPTIMIZER_FILENAME, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"{path / OPTIMIZER_FILENAME}: cannot read ({exc})") from exc
    return extra, opt
